//! The `sluice` CLI's stream, consumer, pub, sub, req and reply commands against a real
//! broker: JetStream JSON field names in `--json` output, plain errors and exit codes.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sluice_tests::{sluice_bin, Broker, TestDir};

fn cli(broker: &Broker, args: &[&str]) -> Output {
    Command::new(sluice_bin())
        .args(args)
        .env("SLUICE_URL", format!("sluice://{}", broker.native))
        .output()
        .expect("run sluice")
}

fn json(broker: &Broker, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = cli(broker, &a);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn streams_and_consumers_from_the_command_line() {
    let dir = TestDir::new("native-cli");
    let broker = Broker::start(&dir.0, &[]);
    let s = json(
        &broker,
        &[
            "stream",
            "add",
            "ORDERS",
            "--subjects",
            "orders.*",
            "--retention",
            "workqueue",
            "--dupe-window",
            "1m",
        ],
    );
    assert_eq!(s["config"]["retention"], "workqueue");
    assert_eq!(s["config"]["duplicate_window"], 60_000_000_000u64);
    assert_eq!(s["config"]["storage"], "file");
    let acks = json(
        &broker,
        &[
            "pub",
            "orders.1",
            "x {{Count}}",
            "--count",
            "5",
            "--msg-id",
            "m",
        ],
    );
    let seqs: Vec<u64> = acks
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    let dup = json(&broker, &["pub", "orders.1", "again", "--msg-id", "m-2"]);
    assert_eq!(dup[0]["duplicate"], true);
    assert_eq!(dup[0]["seq"], 2);
    let c = json(
        &broker,
        &[
            "consumer",
            "add",
            "ORDERS",
            "w",
            "--pull",
            "--ack",
            "explicit",
            "--ack-wait",
            "1s",
            "--max-deliver",
            "4",
        ],
    );
    assert_eq!(c["config"]["ack_wait"], 1_000_000_000u64);
    assert_eq!(c["config"]["max_deliver"], 4);
    assert_eq!(c["num_pending"], 5);
    let msgs = json(
        &broker,
        &["consumer", "next", "ORDERS", "w", "--count", "3"],
    );
    let msgs = msgs.as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0]["data"], "x 1");
    assert_eq!(msgs[2]["stream_seq"], 3);
    let ci = json(&broker, &["consumer", "info", "ORDERS", "w"]);
    assert_eq!(
        (ci["num_pending"].as_u64(), ci["num_ack_pending"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(ci["delivered"]["stream_seq"], 3);
    let si = json(&broker, &["stream", "info", "ORDERS", "--subjects", ">"]);
    assert_eq!(si["state"]["messages"], 2, "acknowledged work is gone");
    assert_eq!(si["state"]["subjects"]["orders.1"], 2);
    let m = json(&broker, &["stream", "get", "ORDERS", "4"]);
    assert_eq!(
        (m["data"].as_str(), m["hdrs"]["Sluice-Msg-Id"].as_str()),
        (Some("x 4"), Some("m-4"))
    );
    let last = json(
        &broker,
        &["stream", "get", "ORDERS", "--last-for", "orders.1"],
    );
    assert_eq!(last["seq"], 5);
    let ls = json(&broker, &["consumer", "ls", "ORDERS"]);
    assert_eq!(ls[0]["name"], "w");
    let p = json(&broker, &["stream", "purge", "ORDERS"]);
    assert_eq!(p["purged"], 2);
    json(&broker, &["consumer", "rm", "ORDERS", "w"]);
    json(&broker, &["stream", "rm", "ORDERS"]);
    assert_eq!(json(&broker, &["stream", "ls"]), Value::Array(vec![]));
    // Text output and errors.
    let out = cli(&broker, &["stream", "info", "ORDERS"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404: stream ORDERS not found"));
    let out = cli(
        &broker,
        &[
            "stream",
            "add",
            "X",
            "--subjects",
            "x",
            "--retention",
            "forever",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--retention must be"));
    let out = cli(
        &broker,
        &["consumer", "add", "X", "c", "--ack-wait", "soon"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
}

#[test]
fn pub_sub_req_reply_from_the_command_line() {
    let dir = TestDir::new("native-cli-pubsub");
    let broker = Broker::start(&dir.0, &[]);
    let url = format!("sluice://{}", broker.native);
    let spawn = |args: &[&str]| {
        Command::new(sluice_bin())
            .args(args)
            .env("SLUICE_URL", &url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let replier = spawn(&["reply", "svc.echo", "--echo", "--count", "1"]);
    let sub = spawn(&["sub", "news.>", "--count", "2", "--json"]);
    // Wait until both are listening: a request gets an answer, a publish gets delivered.
    let mut answer = None;
    for _ in 0..50 {
        let out = cli(&broker, &["req", "svc.echo", "ping me", "--timeout", "1s"]);
        if out.status.success() {
            answer = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(answer.as_deref(), Some("ping me"));
    assert!(replier.wait_with_output().unwrap().status.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(cli(&broker, &["pub", "news.a", "one"]).status.success());
    assert!(cli(&broker, &["pub", "news.b.c", "two"]).status.success());
    let out = sub.wait_with_output().unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["subject"].as_str(), lines[0]["data"].as_str()),
        (Some("news.a"), Some("one"))
    );
    assert_eq!(lines[1]["subject"], "news.b.c");
    let out = cli(&broker, &["req", "nobody.home", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no responders"));
}
