//! JetStream-style streams and consumers through the real `sluice` binary and the Rust client
//! (`sluice-client`): work-queue redelivery (the must-show), retention modes, nak with
//! delay, term, max_deliver into a dead-letter stream, max_ack_pending, dedup windows, memory
//! vs file storage across a restart, pub/sub with queue groups, request-reply.

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_client::{
    AckPolicy, Client, ConsumerConfig, Error, FetchOptions, MessagesOptions, Publish,
    PublishOptions, PurgeRequest, Retention, Storage, StreamConfig,
};
use sluice_tests::{Broker, TestDir};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn stream(name: &str, subjects: &[&str], retention: Retention) -> StreamConfig {
    StreamConfig {
        name: name.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        retention,
        ..StreamConfig::default()
    }
}

fn pull(name: &str, ack_wait_ms: u64) -> ConsumerConfig {
    ConsumerConfig {
        durable_name: name.into(),
        ack_policy: AckPolicy::Explicit,
        ack_wait_ms,
        ..ConsumerConfig::default()
    }
}

fn batch(n: u32, wait_ms: u64) -> FetchOptions {
    FetchOptions {
        batch: n,
        expires: Duration::from_millis(wait_ms),
        ..FetchOptions::default()
    }
}

fn with_id(id: String) -> PublishOptions {
    PublishOptions {
        msg_id: Some(id),
        ..PublishOptions::default()
    }
}

/// Fetches until `n` messages arrived (or a fetch comes back empty).
async fn fetch_n(c: &Client, s: &str, con: &str, n: usize) -> Vec<sluice_client::Message> {
    let mut out = Vec::new();
    while out.len() < n {
        let got = c
            .fetch(s, con, batch((n - out.len()).min(100) as u32, 2000))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        out.extend(got);
    }
    out
}

#[test]
fn workqueue_redelivers_unacked_after_ack_wait() {
    let dir = TestDir::new("native-wq");
    let broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("ORDERS", &["orders.*"], Retention::WorkQueue))
            .await
            .unwrap();
        // 1,000 publishes; 10 of them repeat an earlier message id and are dropped.
        let mut dups = 0;
        for i in 0..1000u32 {
            let id = if i % 100 == 99 { i - 50 } else { i };
            let ack = c
                .publish_ack(
                    &format!("orders.{}", i % 7),
                    format!("order {i}").as_bytes(),
                    with_id(id.to_string()),
                )
                .await
                .unwrap();
            if ack.duplicate {
                dups += 1;
                assert_eq!(
                    ack.seq,
                    (i - 50 + 1 - (i - 50) / 100) as u64,
                    "original sequence"
                );
            }
        }
        assert_eq!(dups, 10);
        let info = c.stream_info("ORDERS", "").await.unwrap();
        assert_eq!(info.state.messages, 990);

        c.add_consumer("ORDERS", pull("workers", 1000))
            .await
            .unwrap();
        let first = fetch_n(&c, "ORDERS", "workers", 500).await;
        assert_eq!(first.len(), 500);
        for m in &first {
            m.ack_sync().await.unwrap();
        }
        let unacked = fetch_n(&c, "ORDERS", "workers", 10).await;
        assert_eq!(unacked.len(), 10);
        let unacked_seqs: BTreeSet<u64> = unacked
            .iter()
            .map(|m| m.meta.as_ref().unwrap().stream_seq)
            .collect();
        // After ack_wait they come back, before anything new.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let again = fetch_n(&c, "ORDERS", "workers", 10).await;
        let again_seqs: BTreeSet<u64> = again
            .iter()
            .map(|m| m.meta.as_ref().unwrap().stream_seq)
            .collect();
        assert_eq!(again_seqs, unacked_seqs);
        assert!(again
            .iter()
            .all(|m| m.meta.as_ref().unwrap().deliveries == 2));
        let ci = c.consumer_info("ORDERS", "workers").await.unwrap();
        assert_eq!(ci.num_redelivered, 10);
        assert_eq!(ci.num_ack_pending, 10);
        assert_eq!(ci.num_pending, 480);
        // The stream counts only what is not acknowledged.
        let info = c.stream_info("ORDERS", "").await.unwrap();
        assert_eq!(info.state.messages, 490);
    });
}

#[test]
fn nak_delay_term_max_deliver_and_dead_letters() {
    let dir = TestDir::new("native-dlq");
    let broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("JOBS", &["jobs.>"], Retention::WorkQueue))
            .await
            .unwrap();
        c.add_stream(stream("JOBS_DLQ", &["dlq.jobs"], Retention::Limits))
            .await
            .unwrap();
        let mut cfg = pull("w", 500);
        cfg.max_deliver = 2;
        cfg.dead_letter_stream = "JOBS_DLQ".into();
        c.add_consumer("JOBS", cfg).await.unwrap();
        for i in 0..3 {
            c.publish_ack(&format!("jobs.{i}"), b"x", Default::default())
                .await
                .unwrap();
        }
        let got = fetch_n(&c, "JOBS", "w", 3).await;
        assert_eq!(got.len(), 3);
        // 1: nak with delay → back after the delay, not before.
        got[0]
            .nak_with_delay(Duration::from_millis(300))
            .await
            .unwrap();
        // 2: term → never again, and gone from the work queue.
        got[1].term().await.unwrap();
        // 3: never acked → redelivered after ack_wait, then dead after max_deliver.
        let none = c
            .fetch(
                "JOBS",
                "w",
                FetchOptions {
                    batch: 3,
                    no_wait: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(none.is_empty());
        tokio::time::sleep(Duration::from_millis(350)).await;
        let back = c.fetch("JOBS", "w", batch(3, 1000)).await.unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].subject, "jobs.0");
        assert_eq!(back[0].meta.as_ref().unwrap().deliveries, 2);
        back[0].ack_sync().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let third = c.fetch("JOBS", "w", batch(3, 1000)).await.unwrap();
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].subject, "jobs.2");
        assert_eq!(third[0].meta.as_ref().unwrap().deliveries, 2);
        // Not acked again: at the next deadline it reaches max_deliver and is dead-lettered.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let none = c
            .fetch(
                "JOBS",
                "w",
                FetchOptions {
                    batch: 3,
                    expires: Duration::from_millis(300),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(none.is_empty());
        let dead = c.get_msg("JOBS_DLQ", 1).await.unwrap();
        assert_eq!(dead.subject, "jobs.2");
        let h = |k: &str| {
            dead.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(h("Sluice-Dead-Letter-Stream").as_deref(), Some("JOBS"));
        assert_eq!(h("Sluice-Dead-Letter-Consumer").as_deref(), Some("w"));
        assert_eq!(h("Sluice-Dead-Letter-Sequence").as_deref(), Some("3"));
        assert_eq!(h("Sluice-Dead-Letter-Deliveries").as_deref(), Some("2"));
        let info = c.stream_info("JOBS", "").await.unwrap();
        assert_eq!(
            info.state.messages, 0,
            "acked, terminated and dead-lettered are all gone"
        );
        let ci = c.consumer_info("JOBS", "w").await.unwrap();
        assert_eq!((ci.num_ack_pending, ci.num_pending), (0, 0));
    });
}

#[test]
fn max_ack_pending_stalls_and_resumes() {
    let dir = TestDir::new("native-map");
    let broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("EV", &["ev.>"], Retention::Limits))
            .await
            .unwrap();
        let mut cfg = pull("slow", 30_000);
        cfg.max_ack_pending = 5;
        c.add_consumer("EV", cfg).await.unwrap();
        for i in 0..20 {
            c.publish_ack("ev.a", format!("{i}").as_bytes(), Default::default())
                .await
                .unwrap();
        }
        let got = c.fetch("EV", "slow", batch(20, 500)).await.unwrap();
        assert_eq!(got.len(), 5, "at most max_ack_pending outstanding");
        let stalled = c.fetch("EV", "slow", batch(20, 300)).await.unwrap();
        assert!(stalled.is_empty());
        got[0].ack_sync().await.unwrap();
        got[1].ack_sync().await.unwrap();
        let more = c.fetch("EV", "slow", batch(20, 500)).await.unwrap();
        assert_eq!(more.len(), 2);
        assert_eq!(more[0].meta.as_ref().unwrap().stream_seq, 6);
        // Limits retention: acks do not remove messages.
        assert_eq!(c.stream_info("EV", "").await.unwrap().state.messages, 20);
    });
}

#[test]
fn interest_retention_keeps_messages_while_consumers_need_them() {
    let dir = TestDir::new("native-interest");
    let broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("IN", &["in.*"], Retention::Interest))
            .await
            .unwrap();
        // No consumer: not kept.
        c.publish_ack("in.x", b"lost", Default::default())
            .await
            .unwrap();
        assert_eq!(c.stream_info("IN", "").await.unwrap().state.messages, 0);
        c.add_consumer("IN", pull("a", 30_000)).await.unwrap();
        c.add_consumer("IN", pull("b", 30_000)).await.unwrap();
        for i in 0..4 {
            c.publish_ack("in.x", format!("{i}").as_bytes(), Default::default())
                .await
                .unwrap();
        }
        assert_eq!(c.stream_info("IN", "").await.unwrap().state.messages, 4);
        for m in fetch_n(&c, "IN", "a", 4).await {
            m.ack_sync().await.unwrap();
        }
        assert_eq!(
            c.stream_info("IN", "").await.unwrap().state.messages,
            4,
            "b still needs them"
        );
        let b = fetch_n(&c, "IN", "b", 4).await;
        b[0].ack_sync().await.unwrap();
        b[1].ack_sync().await.unwrap();
        assert_eq!(c.stream_info("IN", "").await.unwrap().state.messages, 2);
        c.delete_consumer("IN", "b").await.unwrap();
        assert_eq!(c.stream_info("IN", "").await.unwrap().state.messages, 0);
    });
}

#[test]
fn dedup_window_limits_purge_and_get() {
    let dir = TestDir::new("native-dedup");
    let broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        let mut cfg = stream("D", &["d.>"], Retention::Limits);
        cfg.duplicate_window_ms = 500;
        cfg.max_msgs_per_subject = 3;
        c.add_stream(cfg).await.unwrap();
        let a = c
            .publish_ack("d.1", b"a", with_id("m1".into()))
            .await
            .unwrap();
        let b = c
            .publish_ack("d.1", b"b", with_id("m1".into()))
            .await
            .unwrap();
        assert_eq!(
            (a.seq, a.duplicate, b.seq, b.duplicate),
            (1, false, 1, true)
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        let again = c
            .publish_ack("d.1", b"c", with_id("m1".into()))
            .await
            .unwrap();
        assert_eq!(
            (again.seq, again.duplicate),
            (2, false),
            "after the window it is new"
        );
        for i in 0..5 {
            c.publish_ack("d.2", format!("{i}").as_bytes(), Default::default())
                .await
                .unwrap();
        }
        let info = c.stream_info("D", ">").await.unwrap();
        assert_eq!(info.state.messages, 5, "max_msgs_per_subject kept 3 of d.2");
        assert_eq!(
            info.state.subjects,
            vec![("d.1".to_string(), 2), ("d.2".to_string(), 3)]
        );
        let last = c.get_last_msg("D", "d.2").await.unwrap();
        assert_eq!((last.seq, last.data.as_slice()), (7, &b"4"[..]));
        let wrong = c
            .publish_ack(
                "d.3",
                b"x",
                PublishOptions {
                    expected_last_seq: Some(3),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(wrong.status(), Some(412));
        let n = c
            .purge_stream(
                "D",
                PurgeRequest {
                    filter: "d.2".into(),
                    keep: 1,
                    seq: 0,
                },
            )
            .await
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(c.get_msg("D", 5).await.unwrap_err().status(), Some(404));
        assert_eq!(c.stream_info("D", "").await.unwrap().state.messages, 3);
        // Bad input gets clear errors.
        let e = c
            .add_stream(stream("X", &["d.*"], Retention::Limits))
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(400), "{e}");
        let e = c
            .add_stream(stream("bad.name", &["z"], Retention::Limits))
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(400));
        let e = c.stream_info("NOPE", "").await.unwrap_err();
        assert_eq!(e.status(), Some(404));
        let e = c
            .publish_ack("nobody.home", b"x", Default::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NoResponders(_)), "{e}");
    });
}

#[test]
fn file_streams_survive_restart_memory_streams_do_not() {
    let dir = TestDir::new("native-restart");
    let mut broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("F", &["f.*"], Retention::WorkQueue))
            .await
            .unwrap();
        let mut mem = stream("M", &["m.*"], Retention::Limits);
        mem.storage = Storage::Memory;
        c.add_stream(mem).await.unwrap();
        c.add_consumer("F", pull("w", 30_000)).await.unwrap();
        for i in 0..100 {
            c.publish_ack("f.x", format!("{i}").as_bytes(), with_id(format!("id{i}")))
                .await
                .unwrap();
            c.publish_ack("m.x", b"m", Default::default())
                .await
                .unwrap();
        }
        for m in fetch_n(&c, "F", "w", 30).await {
            m.ack_sync().await.unwrap();
        }
    });
    assert_eq!(broker.stop(), Some(0));
    broker.restart();
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        let f = c.stream_info("F", "").await.unwrap();
        assert_eq!(
            (f.state.messages, f.state.first_seq, f.state.last_seq),
            (70, 31, 100)
        );
        let m = c.stream_info("M", "").await.unwrap();
        assert_eq!(
            m.state.messages, 0,
            "memory storage does not survive a restart"
        );
        // Dedup state and consumer position survived too.
        let dup = c
            .publish_ack("f.x", b"again", with_id("id99".into()))
            .await
            .unwrap();
        assert!(dup.duplicate);
        let ci = c.consumer_info("F", "w").await.unwrap();
        assert_eq!((ci.num_pending, ci.delivered.stream_seq), (70, 30));
        let next = c.fetch("F", "w", batch(1, 1000)).await.unwrap();
        assert_eq!(next[0].meta.as_ref().unwrap().stream_seq, 31);
        assert_eq!(next[0].data, &b"30"[..]);
    });
}

/// A purge of a stream's front is one step in the stream's bookkeeping (and one saved
/// range), not one removal per message: what must still hold is the stream's state, its
/// consumers' pending counts and acks, reads of what is left (file and memory storage) and,
/// for a file stream, all of that again after a restart replays the saved deletes.
#[test]
fn a_large_purge_keeps_consumers_exact_and_survives_restart() {
    let dir = TestDir::new("native-big-purge");
    let mut broker = Broker::start(&dir.0, &[]);
    let purge = |filter: &str, keep: u64| PurgeRequest {
        filter: filter.into(),
        keep,
        seq: 0,
    };
    let times = rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("P", &["p.*"], Retention::Limits))
            .await
            .unwrap();
        let mut mem = stream("PM", &["pm.*"], Retention::Limits);
        mem.storage = Storage::Memory;
        c.add_stream(mem).await.unwrap();
        c.add_consumer("P", pull("all", 60_000)).await.unwrap();
        let mut only_b = pull("b", 60_000);
        only_b.filter_subjects = vec!["p.b".into()];
        c.add_consumer("P", only_b).await.unwrap();
        // Seq n is on p.a when odd, p.b when even.
        for i in 0..3000u32 {
            let ab = if i % 2 == 0 { "a" } else { "b" };
            let body = format!("{i}");
            c.publish_ack(&format!("p.{ab}"), body.as_bytes(), Default::default())
                .await
                .unwrap();
            c.publish_ack(&format!("pm.{ab}"), body.as_bytes(), Default::default())
                .await
                .unwrap();
        }
        // 500 handed out, the first 100 of them acked: 400 left awaiting acks.
        let got = fetch_n(&c, "P", "all", 500).await;
        assert_eq!(got.len(), 500);
        for m in &got[..100] {
            m.ack_sync().await.unwrap();
        }
        let ci = c.consumer_info("P", "all").await.unwrap();
        assert_eq!((ci.num_pending, ci.num_ack_pending), (2500, 400));

        assert_eq!(c.purge_stream("P", purge("", 1000)).await.unwrap(), 2000);
        assert_eq!(c.purge_stream("PM", purge("", 1000)).await.unwrap(), 2000);
        for name in ["P", "PM"] {
            let st = c.stream_info(name, "").await.unwrap().state;
            assert_eq!(
                (st.messages, st.first_seq, st.last_seq, st.num_deleted),
                (1000, 2001, 3000, 0),
                "{name}"
            );
            assert_eq!(c.get_msg(name, 2000).await.unwrap_err().status(), Some(404));
            assert_eq!(c.get_msg(name, 2001).await.unwrap().data, &b"2000"[..]);
        }
        // The acks awaited below the purge are gone with their messages.
        let ci = c.consumer_info("P", "all").await.unwrap();
        assert_eq!((ci.num_pending, ci.num_ack_pending), (1000, 0));
        let ci = c.consumer_info("P", "b").await.unwrap();
        assert_eq!(ci.num_pending, 500);

        // A purge of one subject removes interior messages, one by one.
        assert_eq!(c.purge_stream("P", purge("p.a", 0)).await.unwrap(), 500);
        let st = c.stream_info("P", "").await.unwrap().state;
        assert_eq!(
            (st.messages, st.first_seq, st.last_seq, st.num_deleted),
            (500, 2002, 3000, 499)
        );
        let ci = c.consumer_info("P", "all").await.unwrap();
        assert_eq!(ci.num_pending, 500);
        // A message's time is the stream's, wherever it is read from.
        let got = c.get_msg("P", 2002).await.unwrap();
        assert_eq!(got.timestamp_ms, st.first_ts_ms);
        (st.first_ts_ms, st.last_ts_ms)
    });
    assert_eq!(broker.stop(), Some(0));
    broker.restart();
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        let st = c.stream_info("P", "").await.unwrap().state;
        assert_eq!(
            (st.messages, st.first_seq, st.last_seq, st.num_deleted),
            (500, 2002, 3000, 499)
        );
        // Times come back from the log as the stream counted them before the restart.
        assert_eq!((st.first_ts_ms, st.last_ts_ms), times);
        let ci = c.consumer_info("P", "all").await.unwrap();
        assert_eq!((ci.num_pending, ci.num_ack_pending), (500, 0));
        assert_eq!(c.consumer_info("P", "b").await.unwrap().num_pending, 500);
        let next = fetch_n(&c, "P", "all", 3).await;
        let seqs: Vec<u64> = next
            .iter()
            .map(|m| m.meta.as_ref().unwrap().stream_seq)
            .collect();
        assert_eq!(seqs, vec![2002, 2004, 2006]);
        assert_eq!(next[0].data, &b"2001"[..]);
        let ack = c
            .publish_ack("p.a", b"after", Default::default())
            .await
            .unwrap();
        assert_eq!(ack.seq, 3001);
    });
}

/// A backlog larger than the log's in-memory tail, read back after a restart (so from the
/// disk) in big fetches: every message once, in order, byte for byte — across the parts a
/// fetch reads concurrently and the file regions those reads end inside of — and filtered
/// consumers get exactly their subjects' messages: one whose messages interleave with others
/// (its reads run through the gaps) and one whose messages are far apart (a read each); a
/// consumer read with many pulls outstanding (their reads overlap) gets all, in order.
#[test]
fn a_backlog_is_read_back_from_disk_whole_and_in_order() {
    let dir = TestDir::new("native-backlog");
    let mut broker = Broker::start(&dir.0, &[]);
    // Sizes vary so that batch boundaries fall anywhere in the reads.
    let body = |i: usize| -> Vec<u8> {
        let len = 200 + (i * 7919) % 3000;
        (0..len).map(|k| (i * 31 + k) as u8).collect()
    };
    let count = 6_000; // ~10 MB
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("B", &["b.*"], Retention::Limits))
            .await
            .unwrap();
        let bodies: Vec<Vec<u8>> = (0..count).map(body).collect();
        for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
            let msgs: Vec<Publish<'_>> = chunk
                .iter()
                .map(|&i| Publish {
                    subject: backlog_subject(i),
                    data: &bodies[i],
                    opts: PublishOptions::default(),
                })
                .collect();
            for a in c.publish_batch(&msgs).await.unwrap() {
                a.unwrap();
            }
        }
    });
    assert_eq!(broker.stop(), Some(0));
    broker.restart();
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        let mut all = pull("all", 30_000);
        all.ack_policy = AckPolicy::None;
        c.add_consumer("B", all).await.unwrap();
        let mut only = pull("one", 30_000);
        only.ack_policy = AckPolicy::None;
        only.filter_subjects = vec!["b.1".into()];
        c.add_consumer("B", only).await.unwrap();
        let mut rare = pull("rare", 30_000);
        rare.ack_policy = AckPolicy::None;
        rare.filter_subjects = vec!["b.rare".into()];
        c.add_consumer("B", rare).await.unwrap();
        let mut piped = pull("piped", 30_000);
        piped.ack_policy = AckPolicy::None;
        c.add_consumer("B", piped).await.unwrap();
        let mut next = 0;
        while next < count {
            let got = c
                .fetch(
                    "B",
                    "all",
                    FetchOptions {
                        batch: 1000,
                        max_bytes: 4 << 20,
                        ..batch(1000, 2000)
                    },
                )
                .await
                .unwrap();
            assert!(!got.is_empty(), "fetch came back empty at message {next}");
            for m in got {
                assert_eq!(m.meta.as_ref().unwrap().stream_seq, next as u64 + 1);
                assert_eq!(m.data, &body(next)[..], "message {next}");
                next += 1;
            }
        }
        for (consumer, subject) in [("one", "b.1"), ("rare", "b.rare")] {
            let expected: Vec<usize> = (0..count)
                .filter(|&i| backlog_subject(i) == subject)
                .collect();
            let mut seen = Vec::new();
            while seen.len() < expected.len() {
                let got = c.fetch("B", consumer, batch(700, 2000)).await.unwrap();
                assert!(
                    !got.is_empty(),
                    "{consumer}: filtered fetch came back empty"
                );
                for m in got {
                    let seq = m.meta.as_ref().unwrap().stream_seq as usize;
                    assert_eq!(m.subject, subject);
                    assert_eq!(m.data, &body(seq - 1)[..], "message {}", seq - 1);
                    seen.push(seq - 1);
                }
            }
            assert_eq!(seen, expected, "{consumer}");
            // Nothing more for it.
            let more = c
                .fetch(
                    "B",
                    consumer,
                    FetchOptions {
                        no_wait: true,
                        ..batch(10, 100)
                    },
                )
                .await
                .unwrap();
            assert!(more.is_empty(), "{consumer}: {} more", more.len());
        }
        // Eight pulls outstanding, each reading its ~170 KB from the device while the ones
        // after it take theirs: every message still comes whole and in order.
        let opts = MessagesOptions {
            batch: 100,
            max_bytes: 256 << 10,
            pulls: 8,
            expires: Duration::from_secs(5),
        };
        let mut msgs = c.messages("B", "piped", opts).unwrap();
        for i in 0..count {
            let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
                .await
                .unwrap_or_else(|_| panic!("piped: message {i} did not come"))
                .unwrap()
                .unwrap();
            assert_eq!(m.meta.as_ref().unwrap().stream_seq, i as u64 + 1, "piped");
            assert_eq!(m.data, &body(i)[..], "piped: message {i}");
        }
    });
}

/// The subject of message `i` of the backlog test: three interleaved, and every 50th (~90 KB
/// apart) a subject of its own.
fn backlog_subject(i: usize) -> &'static str {
    if i % 50 == 7 {
        "b.rare"
    } else {
        ["b.0", "b.1", "b.2"][i % 3]
    }
}

/// `Client::messages`, a pull consumer read as a stream: its pull requests stay outstanding
/// (the consumer's `num_waiting` shows them), a backlog comes through whole and in order across
/// many pulls, a message published later reaches a waiting pull, what went to the pulls of a
/// dropped stream comes back after ack_wait, a pull the server refuses ends the stream with the
/// server's error at once, even while the pulls before it wait, and so does the server's death.
#[test]
fn messages_keeps_pulls_outstanding_and_delivers_in_order() {
    let dir = TestDir::new("native-messages");
    let mut broker = Broker::start(&dir.0, &[]);
    let within = |d: u64| Duration::from_secs(d);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("M", &["m.*"], Retention::Limits))
            .await
            .unwrap();
        let count = 3_000u64;
        let bodies: Vec<String> = (0..count).map(|i| format!("msg-{i}")).collect();
        let subjects = ["m.0", "m.1", "m.2"];
        for chunk in (0..count as usize).collect::<Vec<_>>().chunks(500) {
            let msgs: Vec<Publish<'_>> = chunk
                .iter()
                .map(|&i| Publish {
                    subject: subjects[i % 3],
                    data: bodies[i].as_bytes(),
                    opts: PublishOptions::default(),
                })
                .collect();
            for a in c.publish_batch(&msgs).await.unwrap() {
                a.unwrap();
            }
        }
        c.add_consumer("M", pull("w", 2_000)).await.unwrap();
        let opts = MessagesOptions {
            batch: 64,
            pulls: 4,
            expires: Duration::from_secs(1),
            ..MessagesOptions::default()
        };
        let mut msgs = c.messages("M", "w", opts.clone()).unwrap();
        for i in 0..count {
            let m = tokio::time::timeout(within(10), msgs.next())
                .await
                .unwrap_or_else(|_| panic!("message {i} did not come"))
                .unwrap()
                .unwrap();
            assert_eq!(m.meta.as_ref().unwrap().stream_seq, i + 1);
            assert_eq!(m.data, bodies[i as usize].as_bytes());
            m.ack().await.unwrap();
        }
        // Caught up: a message published now goes to a pull already waiting at the server.
        let waiting =
            |c: Client| async move { c.consumer_info("M", "w").await.unwrap().num_waiting };
        let next = tokio::spawn(async move {
            let m = msgs.next().await;
            (msgs, m)
        });
        let deadline = tokio::time::Instant::now() + within(5);
        while waiting(c.clone()).await != 4 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "4 pulls never waited"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.publish_ack("m.1", b"late", Default::default())
            .await
            .unwrap();
        let (msgs, m) = tokio::time::timeout(within(5), next)
            .await
            .unwrap()
            .unwrap();
        let m = m.unwrap().unwrap();
        assert_eq!(
            (m.data.as_ref(), m.meta.as_ref().unwrap().stream_seq),
            (&b"late"[..], count + 1)
        );
        m.ack_sync().await.unwrap();
        let ci = c.consumer_info("M", "w").await.unwrap();
        assert_eq!(
            (ci.num_ack_pending, ci.ack_floor.stream_seq),
            (0, count + 1)
        );

        // Dropped with its pulls outstanding: a message one of them receives is not lost, it
        // is redelivered after ack_wait (2 s) once those pulls expired (1 s).
        drop(msgs);
        c.publish_ack("m.2", b"orphan", Default::default())
            .await
            .unwrap();
        let mut again = c.messages("M", "w", opts.clone()).unwrap();
        let m = tokio::time::timeout(within(10), again.next())
            .await
            .expect("the orphaned message was not redelivered")
            .unwrap()
            .unwrap();
        let meta = m.meta.as_ref().unwrap();
        assert_eq!(
            (m.data.as_ref(), meta.stream_seq),
            (&b"orphan"[..], count + 2)
        );
        assert_eq!(meta.deliveries, 2, "it went to an abandoned pull first");
        m.ack_sync().await.unwrap();
        drop(again);

        // More pulls than the consumer's max_waiting: the third is refused (409). The first
        // two wait for a subject nobody publishes to, yet the error comes out at once.
        let mut few = pull("few", 30_000);
        few.max_waiting = 2;
        few.filter_subjects = vec!["m.none".into()];
        c.add_consumer("M", few).await.unwrap();
        let mut refused = c
            .messages(
                "M",
                "few",
                MessagesOptions {
                    pulls: 3,
                    expires: Duration::from_secs(30),
                    ..MessagesOptions::default()
                },
            )
            .unwrap();
        let e = tokio::time::timeout(within(5), refused.next())
            .await
            .expect("the refusal did not come out while earlier pulls waited")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.status(), Some(409), "{e}");
        assert!(
            refused.next().await.is_none(),
            "the stream ends after its error"
        );

        // An unknown consumer: the server's 404, then the end.
        let mut gone = c
            .messages("M", "nobody", MessagesOptions::default())
            .unwrap();
        let e = tokio::time::timeout(within(5), gone.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(e.status(), Some(404), "{e}");
        assert!(gone.next().await.is_none());
        assert!(c
            .messages(
                "M",
                "w",
                MessagesOptions {
                    pulls: 0,
                    ..MessagesOptions::default()
                }
            )
            .is_err());

        // The server goes away while the pulls wait: the connection's end, then the end.
        let mut waiting = c.messages("M", "w", opts.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        broker.kill9();
        let e = tokio::time::timeout(within(5), waiting.next())
            .await
            .expect("a dead server left next() waiting")
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, Error::Closed), "{e}");
        assert!(waiting.next().await.is_none());
    });
}

/// A consumer's waiting pulls are served oldest first, as JetStream's are: a pull that arrives
/// while older ones wait queues behind them. Otherwise the newest pull could take a message
/// while the oldest kept waiting, and `messages()`, which hands out from its oldest pull, would
/// hold that message until the oldest pull expired. With max_ack_pending 1 every ack frees
/// room for one message just as a new pull arrives, so each ack makes the pulls race.
#[test]
fn waiting_pulls_are_served_oldest_first() {
    let dir = TestDir::new("native-pull-order");
    let broker = Broker::start(&dir.0, &[]);
    let within = |d: u64| Duration::from_secs(d);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("Q", &["q.*"], Retention::Limits))
            .await
            .unwrap();
        for name in ["stream", "raw"] {
            let mut cfg = pull(name, 60_000);
            cfg.max_ack_pending = 1;
            c.add_consumer("Q", cfg).await.unwrap();
        }
        let count = 20u64;
        for i in 0..count {
            c.publish_ack("q.a", format!("{i}").as_bytes(), Default::default())
                .await
                .unwrap();
        }

        // messages(): its answered pull is replaced right after the ack that lets the next
        // message go, and the pull it waits on is the older one.
        let opts = MessagesOptions {
            batch: 1,
            pulls: 2,
            expires: within(30),
            ..MessagesOptions::default()
        };
        let mut msgs = c.messages("Q", "stream", opts).unwrap();
        for want in 1..=count {
            let m = tokio::time::timeout(within(10), msgs.next())
                .await
                .unwrap_or_else(|_| panic!("message {want} was held by a pull"))
                .unwrap()
                .unwrap();
            assert_eq!(m.meta.as_ref().unwrap().stream_seq, want);
            m.ack().await.unwrap();
        }
        drop(msgs);

        // Plain pulls: the older one (waiting, since #1 is unacked) gets #2, though the newer
        // one arrives together with the ack that frees room for it.
        let first = c.fetch("Q", "raw", batch(1, 1_000)).await.unwrap();
        assert_eq!(first[0].meta.as_ref().unwrap().stream_seq, 1);
        let older = tokio::spawn({
            let c = c.clone();
            async move { c.fetch("Q", "raw", batch(1, 20_000)).await }
        });
        let deadline = tokio::time::Instant::now() + within(5);
        while c.consumer_info("Q", "raw").await.unwrap().num_waiting != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the pull never waited"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The ack and the newer pull go out in one write.
        first[0].ack().await.unwrap();
        let newer = tokio::time::timeout(within(10), c.fetch("Q", "raw", batch(1, 20_000)));
        let older = async {
            let got = tokio::time::timeout(within(10), older)
                .await
                .expect("the older pull was passed over")
                .unwrap()
                .unwrap();
            got[0].ack().await.unwrap();
            got[0].meta.as_ref().unwrap().stream_seq
        };
        let (older, newer) = tokio::join!(older, newer);
        let newer = newer.expect("the newer pull was not served next").unwrap();
        assert_eq!((older, newer[0].meta.as_ref().unwrap().stream_seq), (2, 3));

        // The oldest pull expires empty: the one behind it takes its place and gets the next
        // message at once, long before its own expiry.
        let mut late = pull("late", 60_000);
        late.filter_subjects = vec!["q.late".into()];
        c.add_consumer("Q", late).await.unwrap();
        let waiting = |n: u64| {
            let c = c.clone();
            async move {
                let deadline = tokio::time::Instant::now() + within(5);
                while c.consumer_info("Q", "late").await.unwrap().num_waiting != n {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{n} pulls never waited"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let short = tokio::spawn({
            let c = c.clone();
            async move { c.fetch("Q", "late", batch(1, 300)).await }
        });
        waiting(1).await;
        let long = tokio::spawn({
            let c = c.clone();
            async move { c.fetch("Q", "late", batch(1, 30_000)).await }
        });
        waiting(2).await;
        assert!(short.await.unwrap().unwrap().is_empty());
        waiting(1).await;
        c.publish_ack("q.late", b"late", Default::default())
            .await
            .unwrap();
        let got = tokio::time::timeout(within(5), long)
            .await
            .expect("the pull behind an expired one was not served")
            .unwrap()
            .unwrap();
        assert_eq!(got[0].data, &b"late"[..]);
    });
}

/// Large answers (pull fetches of about a megabyte, written to the socket as they are) and
/// small ones (publish acks, coalesced into shared writes) interleaved on one connection: every
/// answer arrives whole, once, and matches its request.
#[test]
fn large_fetches_and_small_acks_interleave_on_one_connection() {
    let dir = TestDir::new("native-large-small");
    let broker = Broker::start(&dir.0, &[]);
    let body = |i: usize| -> Vec<u8> { (0..2000).map(|k| (i * 13 + k) as u8).collect() };
    let backlog = 3000; // ~6 MB, read back in fetches of 500 (~1 MB each)
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("BIG", &["big.*"], Retention::Limits))
            .await
            .unwrap();
        c.add_stream(stream("SMALL", &["small.*"], Retention::Limits))
            .await
            .unwrap();
        let bodies: Vec<Vec<u8>> = (0..backlog).map(body).collect();
        for chunk in bodies.chunks(500) {
            let msgs: Vec<Publish<'_>> = chunk
                .iter()
                .map(|data| Publish {
                    subject: "big.x",
                    data,
                    opts: PublishOptions::default(),
                })
                .collect();
            for a in c.publish_batch(&msgs).await.unwrap() {
                a.unwrap();
            }
        }
        let mut all = pull("all", 30_000);
        all.ack_policy = AckPolicy::None;
        c.add_consumer("BIG", all).await.unwrap();

        let reads = async {
            // Three pull requests outstanding at a time, as a draining consumer keeps them.
            let fetch = || {
                c.fetch(
                    "BIG",
                    "all",
                    FetchOptions {
                        batch: 500,
                        max_bytes: 4 << 20,
                        ..batch(500, 2000)
                    },
                )
            };
            let mut got = Vec::new();
            while got.len() < backlog {
                let (a, b, d) = futures::join!(fetch(), fetch(), fetch());
                for r in [a, b, d] {
                    got.extend(r.expect("fetch answered"));
                }
            }
            got
        };
        let small: Vec<Vec<u8>> = (0..3000).map(|i| format!("s-{i}").into_bytes()).collect();
        let acks = futures::future::join_all(
            small
                .iter()
                .map(|data| c.publish_ack("small.y", data, PublishOptions::default())),
        );
        // A lost or mangled answer leaves its request waiting: fail instead of hanging.
        let (got, acks) = tokio::time::timeout(Duration::from_secs(60), async {
            futures::join!(reads, acks)
        })
        .await
        .expect("every fetch and publish answered within 60 s");

        let mut seqs: Vec<u64> = got
            .iter()
            .map(|m| m.meta.as_ref().unwrap().stream_seq)
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=backlog as u64).collect::<Vec<_>>());
        for m in &got {
            let seq = m.meta.as_ref().unwrap().stream_seq as usize;
            assert_eq!(m.data, &bodies[seq - 1][..], "message {seq}");
        }
        let acked: Vec<u64> = acks
            .into_iter()
            .map(|a| {
                let a = a.expect("publish acknowledged");
                assert_eq!(a.stream, "SMALL");
                a.seq
            })
            .collect();
        assert_eq!(acked, (1..=3000).collect::<Vec<u64>>());
    });
}

#[test]
fn pub_sub_queue_groups_and_request_reply() {
    let dir = TestDir::new("native-pubsub");
    let broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        // Several connections, so that they land on both shards.
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(Client::connect(&broker.native).await.unwrap());
        }
        let mut all = clients[0].subscribe("greet.>").await.unwrap();
        let mut star = clients[1].subscribe("greet.*").await.unwrap();
        let mut q1 = clients[2]
            .queue_subscribe("greet.*", "workers")
            .await
            .unwrap();
        let mut q2 = clients[3]
            .queue_subscribe("greet.*", "workers")
            .await
            .unwrap();
        let p = Client::connect(&broker.native).await.unwrap();
        for i in 0..100 {
            p.publish(&format!("greet.{i}"), format!("{i}").as_bytes())
                .unwrap();
        }
        p.publish("greet.deep.er", b"deep").unwrap();
        p.ping().await.unwrap();
        let mut got_all = Vec::new();
        for _ in 0..101 {
            got_all.push(
                tokio::time::timeout(Duration::from_secs(5), all.next())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(got_all[0].subject, "greet.0");
        assert_eq!(got_all[100].subject, "greet.deep.er");
        let mut n_star = 0;
        while n_star < 100 {
            let m = tokio::time::timeout(Duration::from_secs(5), star.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(m.data, n_star.to_string().as_bytes(), "in publish order");
            n_star += 1;
        }
        // The queue group shares the 100 messages: each exactly once.
        let mut seen = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.len() < 100 && tokio::time::Instant::now() < deadline {
            tokio::select! {
                Some(m) = q1.next() => assert!(seen.insert(m.subject)),
                Some(m) = q2.next() => assert!(seen.insert(m.subject)),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        assert_eq!(seen.len(), 100);
        // Request-reply.
        let responder = clients[2].clone();
        let mut svc = responder.subscribe("svc.echo").await.unwrap();
        tokio::spawn(async move {
            while let Some(m) = svc.next().await {
                let mut data = b"echo: ".to_vec();
                data.extend_from_slice(&m.data);
                responder.publish(&m.reply, &data).unwrap();
            }
        });
        let r = p
            .request("svc.echo", b"hi", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(r.data, &b"echo: hi"[..]);
        let e = p
            .request("svc.nobody", b"hi", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NoResponders(_)), "{e}");
        let mut silent = clients[3].subscribe("svc.silent").await.unwrap();
        let e = p
            .request("svc.silent", b"hi", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Timeout), "{e}");
        assert!(silent.next().await.is_some());
    });
}

#[test]
fn push_consumers_with_deliver_groups_and_flow_control() {
    let dir = TestDir::new("native-push");
    let broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("P", &["p.>"], Retention::Limits)).await.unwrap();
        // Two members of a deliver group on separate connections share the messages.
        let a = Client::connect(&broker.native).await.unwrap();
        let b = Client::connect(&broker.native).await.unwrap();
        let mut sa = a.queue_subscribe("deliver.p", "grp").await.unwrap();
        let mut sb = b.queue_subscribe("deliver.p", "grp").await.unwrap();
        let cfg = ConsumerConfig {
            durable_name: "pusher".into(),
            deliver_subject: "deliver.p".into(),
            deliver_group: "grp".into(),
            ack_policy: AckPolicy::Explicit,
            flow_control: true,
            idle_heartbeat_ms: 200,
            max_ack_pending: -1,
            ..ConsumerConfig::default()
        };
        c.add_consumer("P", cfg).await.unwrap();
        // 2 MiB in 2,000 messages: flow control has to be answered (by the library) 8 times.
        let body = vec![7u8; 1000];
        for i in 0..2000 {
            c.publish_ack(&format!("p.{}", i % 10), &body, Default::default()).await.unwrap();
        }
        let mut seqs = BTreeSet::new();
        let (mut na, mut nb) = (0, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while seqs.len() < 2000 && tokio::time::Instant::now() < deadline {
            tokio::select! {
                Some(m) = sa.next() => { na += 1; seqs.insert(m.meta.as_ref().unwrap().stream_seq); m.ack().await.unwrap(); }
                Some(m) = sb.next() => { nb += 1; seqs.insert(m.meta.as_ref().unwrap().stream_seq); m.ack().await.unwrap(); }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        assert_eq!(seqs.len(), 2000);
        assert_eq!(na + nb, 2000, "each message to one member");
        assert!(na > 0 && nb > 0, "both members got messages ({na}, {nb})");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ci = c.consumer_info("P", "pusher").await.unwrap();
        assert_eq!((ci.num_pending, ci.num_ack_pending), (0, 0));
    });
}

#[test]
fn filtered_consumer_over_100k_subjects() {
    let dir = TestDir::new("native-subjects");
    let broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("MANY", &["dev.>"], Retention::Limits))
            .await
            .unwrap();
        // 100,000 subjects, published pipelined; a final acknowledged publish orders after all.
        for i in 0..100_000u32 {
            c.publish(&format!("dev.{i}.temp"), &i.to_be_bytes())
                .unwrap();
            if i % 10_000 == 0 {
                c.ping().await.unwrap();
            }
        }
        for k in 0..10u32 {
            c.publish("dev.4242.temp", &(1_000_000 + k).to_be_bytes())
                .unwrap();
        }
        let last = c
            .publish_ack("dev.last.temp", b"end", Default::default())
            .await
            .unwrap();
        assert_eq!(last.seq, 100_011);
        let info = c.stream_info("MANY", "").await.unwrap();
        assert_eq!(
            (info.state.messages, info.state.num_subjects),
            (100_011, 100_001)
        );
        let mut cfg = pull("one", 30_000);
        cfg.filter_subjects = vec!["dev.4242.temp".into()];
        let ci = c.add_consumer("MANY", cfg).await.unwrap();
        assert_eq!(ci.num_pending, 11);
        let got = fetch_n(&c, "MANY", "one", 11).await;
        assert_eq!(got.len(), 11);
        assert!(got.iter().all(|m| m.subject == "dev.4242.temp"));
        assert_eq!(got[0].data, &4242u32.to_be_bytes()[..]);
        assert_eq!(got[10].data, &1_000_009u32.to_be_bytes()[..]);
        assert_eq!(got[10].meta.as_ref().unwrap().pending, 0);
        // A wildcard filter matching 10 subjects.
        let mut cfg = pull("ten", 30_000);
        cfg.filter_subjects = (0..10).map(|i| format!("dev.1234{i}.*")).collect();
        let ci = c.add_consumer("MANY", cfg).await.unwrap();
        assert_eq!(ci.num_pending, 10);
        let got = fetch_n(&c, "MANY", "ten", 10).await;
        let subjects: Vec<&str> = got.iter().map(|m| m.subject.as_str()).collect();
        assert_eq!(subjects[0], "dev.12340.temp");
        assert_eq!(subjects[9], "dev.12349.temp");
        let info = c.stream_info("MANY", "dev.4242.*").await.unwrap();
        assert_eq!(info.state.subjects, vec![("dev.4242.temp".to_string(), 11)]);
    });
}

#[test]
fn ack_none_ack_all_backoff_and_max_waiting() {
    let dir = TestDir::new("native-ackpol");
    let broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("A", &["a.*"], Retention::Limits))
            .await
            .unwrap();
        for i in 0..10 {
            c.publish_ack("a.x", format!("{i}").as_bytes(), Default::default())
                .await
                .unwrap();
        }
        // ack none: nothing is ever pending acknowledgement.
        let mut none = pull("none", 1000);
        none.ack_policy = AckPolicy::None;
        c.add_consumer("A", none).await.unwrap();
        assert_eq!(fetch_n(&c, "A", "none", 10).await.len(), 10);
        let ci = c.consumer_info("A", "none").await.unwrap();
        assert_eq!(
            (ci.num_ack_pending, ci.num_pending, ci.ack_floor.stream_seq),
            (0, 0, 10)
        );
        // ack all: acknowledging 7 acknowledges 1..=7.
        let mut all = pull("all", 30_000);
        all.ack_policy = AckPolicy::All;
        c.add_consumer("A", all).await.unwrap();
        let got = fetch_n(&c, "A", "all", 10).await;
        got[6].ack_sync().await.unwrap();
        let ci = c.consumer_info("A", "all").await.unwrap();
        assert_eq!((ci.num_ack_pending, ci.ack_floor.stream_seq), (3, 7));
        // backoff: redelivery after 1 s, then after 3 s (not after ack_wait's 30 s).
        c.publish_ack("a.b", b"retry me", Default::default())
            .await
            .unwrap();
        let mut b = pull("backoff", 30_000);
        b.backoff_ms = vec![1000, 3000];
        b.max_deliver = 5;
        b.filter_subjects = vec!["a.b".into()];
        c.add_consumer("A", b).await.unwrap();
        let deliveries =
            |m: &[sluice_client::Message]| m.first().map(|m| m.meta.as_ref().unwrap().deliveries);
        assert_eq!(
            deliveries(&c.fetch("A", "backoff", batch(1, 1000)).await.unwrap()),
            Some(1)
        );
        assert_eq!(
            deliveries(&c.fetch("A", "backoff", batch(1, 300)).await.unwrap()),
            None
        );
        assert_eq!(
            deliveries(&c.fetch("A", "backoff", batch(1, 3000)).await.unwrap()),
            Some(2)
        );
        assert_eq!(
            deliveries(&c.fetch("A", "backoff", batch(1, 1000)).await.unwrap()),
            None
        );
        assert_eq!(
            deliveries(&c.fetch("A", "backoff", batch(1, 5000)).await.unwrap()),
            Some(3)
        );
        // max_waiting: a second parked pull request is refused.
        let mut w = pull("waiter", 30_000);
        w.max_waiting = 1;
        w.filter_subjects = vec!["a.none".into()];
        c.add_consumer("A", w).await.unwrap();
        let c2 = c.clone();
        let parked = tokio::spawn(async move { c2.fetch("A", "waiter", batch(1, 1500)).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let e = c.fetch("A", "waiter", batch(1, 500)).await.unwrap_err();
        assert_eq!(e.status(), Some(409), "{e}");
        assert!(parked.await.unwrap().unwrap().is_empty());
    });
}

#[test]
fn bad_frames_get_an_error_and_the_server_stays_up() {
    use std::io::{Read, Write};
    let dir = TestDir::new("native-bad");
    let broker = Broker::start(&dir.0, &[]);
    let read_frame = |s: &mut std::net::TcpStream| {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut rest).unwrap();
        (
            rest[0],
            u16::from_be_bytes([rest[1 + 1], rest[3]]),
            String::from_utf8_lossy(&rest[8..]).into_owned(),
        )
    };
    // Not HELLO first.
    let mut s = std::net::TcpStream::connect(&broker.native).unwrap();
    s.write_all(&[0, 0, 0, 8, 8, 0, 0, 0, 0, 0, 0, 1]).unwrap();
    let (op, status, msg) = read_frame(&mut s);
    assert_eq!((op, status), (66, 400));
    assert!(msg.contains("HELLO"), "{msg}");
    use sluice_core::batch::{BatchBuilder, Compression};
    use sluice_core::native::{self, Header, Hello, Pub};
    let frame = |op: u8, flags: u8, corr: u32, body: &[u8]| {
        let mut f = Vec::new();
        let h = Header {
            op,
            flags,
            status: 0,
            corr,
        };
        native::encode_frame(&mut f, h, body);
        f
    };
    // A HELLO for versions the server does not speak.
    let mut s = std::net::TcpStream::connect(&broker.native).unwrap();
    let body = native::to_body(&Hello {
        version_min: 9,
        version_max: 12,
        client: "future".into(),
    });
    s.write_all(&frame(native::op::HELLO, 0, 1, &body)).unwrap();
    let (op, status, _) = read_frame(&mut s);
    assert_eq!((op, status), (66, 505));
    // Garbage HELLO body, oversized frame.
    let mut s = std::net::TcpStream::connect(&broker.native).unwrap();
    s.write_all(&[0, 0, 0, 12, 1, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    assert_eq!(read_frame(&mut s).1, 400);
    let mut s = std::net::TcpStream::connect(&broker.native).unwrap();
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 1])
        .unwrap();
    let (_, status, msg) = read_frame(&mut s);
    assert_eq!(status, 400);
    assert!(msg.contains("larger than the limit"), "{msg}");
    // After a good HELLO: an unknown op and a truncated PUB close only that connection.
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("OK", &["ok.*"], Retention::Limits))
            .await
            .unwrap();
        let ack = c
            .publish_ack("ok.1", b"still here", Default::default())
            .await
            .unwrap();
        assert_eq!(ack.seq, 1);
    });
    // A publish whose batch fails its CRC is refused (400) and takes no sequence; the
    // connection goes on.
    let mut s = std::net::TcpStream::connect(&broker.native).unwrap();
    let hello = native::to_body(&Hello {
        version_min: native::VERSION_MIN,
        version_max: native::VERSION_MAX,
        client: "raw".into(),
    });
    s.write_all(&frame(native::op::HELLO, 0, 1, &hello))
        .unwrap();
    assert_eq!(read_frame(&mut s).1, 0);
    let publish = |corrupt: bool, corr: u32| {
        let mut b = BatchBuilder::new(Compression::None, 1);
        b.push(1, Some(b"ok.2"), Some(b"payload"), &[]);
        let mut batch = Vec::new();
        b.build_into(&mut batch);
        if corrupt {
            *batch.last_mut().unwrap() ^= 0xff;
        }
        let mut body = Vec::new();
        Pub {
            subject: "ok.2",
            reply: "",
            batch: &[],
        }
        .encode(&mut body);
        body.extend_from_slice(&batch);
        frame(native::op::PUB, native::flag::ACK, corr, &body)
    };
    s.write_all(&publish(true, 2)).unwrap();
    let (op, status, msg) = read_frame(&mut s);
    assert_eq!((op, status), (native::op::ERROR, 400), "{msg}");
    assert!(msg.to_lowercase().contains("crc"), "{msg}");
    s.write_all(&publish(false, 3)).unwrap();
    let (op, status, _) = read_frame(&mut s);
    assert_eq!((op, status), (native::op::PUB_ACK, 0));
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        let m = c.get_msg("OK", 2).await.unwrap();
        assert_eq!(m.subject, "ok.2");
        assert_eq!(&m.data[..], b"payload");
    });
}

#[test]
fn ephemeral_consumers_go_when_idle() {
    let dir = TestDir::new("native-eph");
    let broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("E", &["e.*"], Retention::Limits))
            .await
            .unwrap();
        c.publish_ack("e.1", b"x", Default::default())
            .await
            .unwrap();
        let eph = ConsumerConfig {
            inactive_threshold_ms: 500,
            ..ConsumerConfig::default()
        };
        let info = c.add_consumer("E", eph).await.unwrap();
        assert!(!info.name.is_empty());
        let got = c.fetch("E", &info.name, batch(1, 1000)).await.unwrap();
        assert_eq!(got.len(), 1);
        // Busy with a parked fetch: kept.
        let _ = c.fetch("E", &info.name, batch(1, 800)).await.unwrap();
        assert!(c.consumer_info("E", &info.name).await.is_ok());
        tokio::time::sleep(Duration::from_millis(900)).await;
        let e = c.consumer_info("E", &info.name).await.unwrap_err();
        assert_eq!(e.status(), Some(404));
    });
}

/// One connection outlives 2^15 requests: the broker once kept a waker per request of a
/// connection (its stop signal, raced against every read) and its shard panicked when
/// glommio's task reference count overflowed at 32,767.
#[test]
fn a_connection_serves_more_than_32767_requests() {
    let dir = TestDir::new("native-long-conn");
    let broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        for i in 0..40_000u32 {
            tokio::time::timeout(Duration::from_secs(10), c.ping())
                .await
                .unwrap_or_else(|_| panic!("ping {i} unanswered"))
                .unwrap_or_else(|e| panic!("ping {i} failed: {e}"));
        }
        c.add_stream(stream("LONG", &["long.*"], Retention::Limits))
            .await
            .unwrap();
        let ack = c
            .publish_ack("long.a", b"still here", PublishOptions::default())
            .await
            .unwrap();
        assert_eq!(ack.seq, 1);
    });
}

/// The README's broker command uses a relative data directory (`./sluice-data`): the broker
/// starts there, stores, and finds its messages again after a restart. (glommio resolved
/// relative paths against descriptor -1; the broker did not start.)
#[test]
fn runs_on_a_relative_data_dir() {
    let dir = TestDir::new("native-relative-dir");
    let mut broker = Broker::start_in(Some(&dir.0), std::path::Path::new("sluice-data"), &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("REL", &["rel.*"], Retention::Limits))
            .await
            .unwrap();
        let ack = c
            .publish_ack("rel.a", b"kept", PublishOptions::default())
            .await
            .unwrap();
        assert_eq!(ack.seq, 1);
    });
    assert_eq!(broker.stop(), Some(0));
    assert!(
        dir.0.join("sluice-data/streams").is_dir(),
        "data under the working directory"
    );
    broker.restart();
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        let m = c.get_msg("REL", 1).await.unwrap();
        assert_eq!(m.data, b"kept");
    });
}

/// A publisher that pipelines: thousands of publishes sent before any ack is read, to two file
/// streams, a memory stream and a subject nobody captures, interleaved, with a duplicate and a
/// failed expectation in the middle. The server stores consecutive publishes to one stream as
/// one run (one task, one durability wait); every message must still get its own answer, in
/// the stream the sequence it was sent in.
#[test]
fn pipelined_publishes_each_get_their_answer_in_order() {
    pipelined_publishes("native-pipelined", None);
}

/// The same publishes through `publish_batch`, in batches of varied sizes sent back to back.
#[test]
fn batched_publishes_each_get_their_answer_in_order() {
    pipelined_publishes("native-batched", Some(&[1, 250, 7, 1000, 64]));
}

/// 6000 publishes to three streams (file and memory) and to no stream, with deduplication
/// and a failing expectation among them, all sent before any answer is read: one per
/// `publish_ack`, or (`batches`: sizes, cycled) through `publish_batch`.
fn pipelined_publishes(dir_name: &str, batches: Option<&[usize]>) {
    let dir = TestDir::new(dir_name);
    let broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        let mut a = stream("PA", &["pa.*"], Retention::Limits);
        a.duplicate_window_ms = 60_000;
        c.add_stream(a).await.unwrap();
        c.add_stream(stream("PB", &["pb.*"], Retention::Limits))
            .await
            .unwrap();
        let mut m = stream("PM", &["pm.*"], Retention::Limits);
        m.storage = Storage::Memory;
        c.add_stream(m).await.unwrap();

        // What each publish is, and what its answer must be.
        #[derive(Debug, PartialEq)]
        enum Want {
            Seq(&'static str, u64),
            Duplicate(u64),
            Refused(u16),
            NoResponders,
        }
        let n = 6000u64;
        let mut sends = Vec::new();
        let mut want = Vec::new();
        let mut next = std::collections::HashMap::<&str, u64>::new();
        let mut stored = std::collections::HashMap::<&str, Vec<Vec<u8>>>::new();
        let mut seq_of_10 = 0;
        for i in 0..n {
            let data = format!("msg-{i}").into_bytes();
            let (stream, subject, opts) = match i {
                // The 10th publish's id again: a duplicate, answered with its sequence.
                3000 => ("PA", "pa.x", with_id("id-10".into())),
                // An expectation that cannot hold: refused, the run goes on.
                3500 => (
                    "PA",
                    "pa.x",
                    PublishOptions {
                        expected_last_seq: Some(1),
                        ..Default::default()
                    },
                ),
                _ if i % 97 == 0 => ("", "nobody.home", PublishOptions::default()),
                _ if i % 13 == 0 => ("PM", "pm.m", PublishOptions::default()),
                _ if i % 7 == 0 => ("PB", "pb.b", PublishOptions::default()),
                _ => ("PA", "pa.a", with_id(format!("id-{i}"))),
            };
            want.push(match (i, stream) {
                (3000, _) => Want::Duplicate(seq_of_10),
                (3500, _) => Want::Refused(412),
                (_, "") => Want::NoResponders,
                (_, s) => {
                    let seq = next.entry(s).or_insert(1);
                    *seq += 1;
                    stored.entry(s).or_default().push(data.clone());
                    if i == 10 {
                        seq_of_10 = *seq - 1;
                    }
                    Want::Seq(s, *seq - 1)
                }
            });
            sends.push((subject, data, opts));
        }
        let answers = match batches {
            // Sent in order when join_all first polls them, all before any answer is read.
            None => {
                futures::future::join_all(
                    sends
                        .iter()
                        .map(|(subject, data, opts)| c.publish_ack(subject, data, opts.clone())),
                )
                .await
            }
            Some(sizes) => {
                let mut chunks = Vec::new();
                let mut rest = &sends[..];
                for size in sizes.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (chunk, more) = rest.split_at((*size).min(rest.len()));
                    rest = more;
                    let msgs: Vec<Publish<'_>> = chunk
                        .iter()
                        .map(|(subject, data, opts)| Publish {
                            subject,
                            data,
                            opts: opts.clone(),
                        })
                        .collect();
                    chunks.push(msgs);
                }
                let batches = futures::future::join_all(chunks.iter().map(|m| c.publish_batch(m)));
                let mut answers = Vec::new();
                for (b, sent) in batches.await.into_iter().zip(&chunks) {
                    let b = b.expect("the connection stays up");
                    assert_eq!(b.len(), sent.len(), "one answer per message of a batch");
                    answers.extend(b);
                }
                answers
            }
        };
        let got: Vec<Want> = answers
            .into_iter()
            .map(|a| match a {
                Ok(ack) if ack.duplicate => Want::Duplicate(ack.seq),
                Ok(ack) => Want::Seq(
                    match ack.stream.as_str() {
                        "PA" => "PA",
                        "PB" => "PB",
                        "PM" => "PM",
                        other => panic!("ack from stream {other}"),
                    },
                    ack.seq,
                ),
                Err(Error::NoResponders(_)) => Want::NoResponders,
                Err(e) => Want::Refused(e.status().unwrap_or(0)),
            })
            .collect();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "answer to publish {i}");
        }
        // Each stream holds its messages in the order they were sent.
        for s in ["PA", "PB", "PM"] {
            let expect = &stored[s];
            let all = ConsumerConfig {
                ack_policy: AckPolicy::None,
                ..pull("all", 30_000)
            };
            c.add_consumer(s, all).await.unwrap();
            let msgs = fetch_n(&c, s, "all", expect.len()).await;
            let data: Vec<String> = msgs
                .iter()
                .map(|m| String::from_utf8_lossy(&m.data).into_owned())
                .collect();
            let expect: Vec<String> = expect
                .iter()
                .map(|d| String::from_utf8_lossy(d).into_owned())
                .collect();
            assert_eq!(data.len(), expect.len(), "messages in stream {s}");
            if let Some(k) = (0..data.len()).find(|&k| data[k] != expect[k]) {
                panic!(
                    "stream {s}, message {k}: {} instead of {}",
                    data[k], expect[k]
                );
            }
            let info = c.stream_info(s, "").await.unwrap();
            assert_eq!(info.state.messages, expect.len() as u64, "stream {s}");
        }
    });
}

/// A batch whose answers are still due when the server dies fails with `Closed` (every
/// waiter of the dead connection is dropped), rather than waiting forever; so does the next.
#[test]
fn a_batch_in_flight_when_the_server_dies_fails_closed() {
    let dir = TestDir::new("native-batch-closed");
    let mut broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let c = Client::connect(&broker.native).await.unwrap();
        c.add_stream(stream("BC", &["bc.*"], Retention::Limits))
            .await
            .unwrap();
        let data = vec![7u8; 1024];
        let batch = async {
            let msgs: Vec<Publish<'_>> = (0..20_000)
                .map(|_| Publish {
                    subject: "bc.x",
                    data: &data,
                    opts: PublishOptions::default(),
                })
                .collect();
            c.publish_batch(&msgs).await
        };
        let kill = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            broker.kill9();
        };
        let (answer, ()) =
            tokio::time::timeout(Duration::from_secs(20), futures::future::join(batch, kill))
                .await
                .expect("the batch ends when the connection does");
        assert!(
            matches!(answer, Err(Error::Closed)),
            "20 MB of fsynced publishes did not all complete in 5 ms: {:?}",
            answer.map(|a| a.len())
        );
        let again = c
            .publish_batch(&[Publish {
                subject: "bc.x",
                data: b"x",
                opts: PublishOptions::default(),
            }])
            .await;
        assert!(
            matches!(again, Err(Error::Closed)),
            "{:?}",
            again.map(|a| a.len())
        );
    });
}

/// A connection remembers what its recent subjects resolved to (no subscribers, which stream):
/// a subscription, a new stream or a deleted stream must each be seen by its very next publish.
#[test]
fn a_publisher_sees_new_subscribers_and_stream_changes_at_once() {
    let dir = TestDir::new("native-subject-memo");
    let broker = Broker::start(&dir.0, &[]);
    rt().block_on(async {
        let publisher = Client::connect(&broker.native).await.unwrap();
        let other = Client::connect(&broker.native).await.unwrap();
        // Remembered: no stream and no subscriber for m.1 (the acked publish is refused).
        for _ in 0..3 {
            publisher.publish("m.1", b"nobody").unwrap();
            let refused = publisher
                .publish_ack("m.1", b"nobody", Default::default())
                .await;
            assert!(refused.is_err(), "no stream captures m.1 yet: {refused:?}");
        }
        // A subscriber appears on another connection: the next publish reaches it.
        let mut sub = other.subscribe("m.*").await.unwrap();
        publisher.publish("m.1", b"seen").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("the publish after the subscription was delivered")
            .unwrap();
        assert_eq!(&got.data[..], b"seen");
        sub.unsubscribe().await.unwrap();
        // Remembered again without subscribers; then a stream starts capturing m.*.
        publisher.publish("m.1", b"nobody").unwrap();
        other
            .add_stream(stream("M", &["m.*"], Retention::Limits))
            .await
            .unwrap();
        let ack = publisher
            .publish_ack("m.1", b"stored", Default::default())
            .await
            .expect("the new stream captures the next publish");
        assert_eq!((ack.stream.as_str(), ack.seq), ("M", 1));
        // And once it is deleted, publishes to m.1 are refused again.
        other.delete_stream("M").await.unwrap();
        let refused = publisher
            .publish_ack("m.1", b"gone", Default::default())
            .await;
        assert!(refused.is_err(), "stream M was deleted: {refused:?}");
    });
}
