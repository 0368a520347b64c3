//! The `nats`-CLI-like commands over Sluice's native protocol: `stream`, `consumer`, `pub`,
//! `sub`, `req`, `reply`. Flags take the `nats` CLI's names; `--json` prints JetStream's JSON
//! field names (durations in nanoseconds, times in RFC 3339), so scripts written for `nats`
//! read Sluice's output.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use sluice_client::{
    AckPolicy, Client, ConsumerConfig, ConsumerInfo, DeliverPolicy, Discard, FetchOptions,
    PublishOptions, PurgeRequest, Retention, Storage, StoredMsg, StreamConfig, StreamInfo,
};

#[derive(Args, Clone)]
pub struct Server {
    /// Sluice native-protocol address (host:port or sluice://host:port)
    #[arg(
        long,
        env = "SLUICE_URL",
        default_value = "127.0.0.1:7575",
        global = true
    )]
    server: String,
    /// Print JSON (JetStream's field names)
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum StreamCommand {
    /// Create a stream.
    Add(StreamAdd),
    /// Show a stream's configuration and state.
    Info {
        name: String,
        /// Per-subject message counts for subjects matching this filter (e.g. '>')
        #[arg(long)]
        subjects: Option<String>,
    },
    /// List streams.
    Ls,
    /// Remove messages (all, by subject, keeping the newest N).
    Purge {
        name: String,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        keep: Option<u64>,
        /// Purge messages below this sequence
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Delete a stream and its messages.
    Rm { name: String },
    /// Print one message: by sequence, or the last on a subject.
    Get {
        name: String,
        seq: Option<u64>,
        #[arg(long = "last-for")]
        last_for: Option<String>,
    },
}

#[derive(Args)]
pub struct StreamAdd {
    name: String,
    /// Subjects the stream captures (comma-separated; wildcards allowed)
    #[arg(long, value_delimiter = ',', required = true)]
    subjects: Vec<String>,
    /// limits | interest | workqueue
    #[arg(long, default_value = "limits")]
    retention: String,
    /// file | memory
    #[arg(long, default_value = "file")]
    storage: String,
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    max_msgs: i64,
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    max_bytes: i64,
    /// e.g. 1h, 30m, 10s (0: unlimited)
    #[arg(long, default_value = "0")]
    max_age: String,
    #[arg(long = "max-msgs-per-subject", default_value_t = -1, allow_negative_numbers = true)]
    max_msgs_per_subject: i64,
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    max_msg_size: i32,
    /// old | new
    #[arg(long, default_value = "old")]
    discard: String,
    /// Deduplication window for message ids, e.g. 2m
    #[arg(long = "dupe-window", default_value = "2m")]
    dupe_window: String,
}

#[derive(Subcommand)]
pub enum ConsumerCommand {
    /// Create a consumer on a stream.
    Add(Box<ConsumerAdd>),
    /// Show a consumer's configuration and state.
    Info { stream: String, name: String },
    /// List a stream's consumers.
    Ls { stream: String },
    /// Fetch messages from a pull consumer (and acknowledge them unless --no-ack).
    Next {
        stream: String,
        name: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long)]
        no_ack: bool,
        /// How long to wait for messages
        #[arg(long, default_value = "5s")]
        wait: String,
    },
    /// Delete a consumer.
    Rm { stream: String, name: String },
}

#[derive(Args)]
pub struct ConsumerAdd {
    stream: String,
    name: String,
    /// A pull consumer (the default unless --target is given)
    #[arg(long)]
    pull: bool,
    /// Push consumer: the subject messages are delivered to
    #[arg(long)]
    target: Option<String>,
    /// Push consumer: deliver to one member of this queue group
    #[arg(long = "deliver-group")]
    deliver_group: Option<String>,
    /// none | all | explicit
    #[arg(long, default_value = "explicit")]
    ack: String,
    #[arg(long = "ack-wait", default_value = "30s")]
    ack_wait: String,
    /// Redelivery delays, e.g. 1s,5s,30s
    #[arg(long, value_delimiter = ',')]
    backoff: Vec<String>,
    #[arg(long = "max-deliver", default_value_t = -1, allow_negative_numbers = true)]
    max_deliver: i64,
    /// max_ack_pending
    #[arg(
        long = "max-pending",
        default_value_t = 1000,
        allow_negative_numbers = true
    )]
    max_pending: i64,
    #[arg(long = "max-waiting", default_value_t = 512)]
    max_waiting: i64,
    /// Filter subjects (repeatable)
    #[arg(long)]
    filter: Vec<String>,
    /// all | last | new | last-per-subject | a start sequence | an RFC 3339 start time
    #[arg(long, default_value = "all")]
    deliver: String,
    /// Dead-letter stream for messages that reach max-deliver
    #[arg(long = "dead-letter")]
    dead_letter: Option<String>,
    /// Idle heartbeat interval of a push consumer
    #[arg(long)]
    heartbeat: Option<String>,
    #[arg(long = "flow-control")]
    flow_control: bool,
}

#[derive(Args)]
pub struct PubArgs {
    subject: String,
    /// Message body ("{{Count}}" is replaced by the message number)
    #[arg(default_value = "")]
    data: String,
    #[arg(long = "msg-id")]
    msg_id: Option<String>,
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Header K:V (repeatable)
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
}

#[derive(Args)]
pub struct SubArgs {
    subject: String,
    #[arg(long)]
    queue: Option<String>,
    /// Exit after this many messages (0: never)
    #[arg(long, default_value_t = 0)]
    count: u64,
}

#[derive(Args)]
pub struct ReqArgs {
    subject: String,
    #[arg(default_value = "")]
    data: String,
    #[arg(long, default_value = "5s")]
    timeout: String,
}

#[derive(Args)]
pub struct ReplyArgs {
    subject: String,
    /// Fixed reply body (ignored with --echo)
    #[arg(default_value = "")]
    data: String,
    /// Answer with the request's own body
    #[arg(long)]
    echo: bool,
    #[arg(long)]
    queue: Option<String>,
    /// Exit after this many requests (0: never)
    #[arg(long, default_value_t = 0)]
    count: u64,
}

pub enum Native {
    Stream(StreamCommand),
    Consumer(ConsumerCommand),
    Pub(PubArgs),
    Sub(SubArgs),
    Req(ReqArgs),
    Reply(ReplyArgs),
}

/// Parses `500ms`, `10s`, `2m`, `1h`, `1d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{s}' (e.g. 500ms, 10s, 2m, 1h)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("invalid duration unit in '{s}' (ms, s, m, h, d)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration '{s}'"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn ms(s: &str) -> Result<u64, String> {
    Ok(parse_duration(s)?.as_millis() as u64)
}

fn address(server: &str) -> &str {
    server.strip_prefix("sluice://").unwrap_or(server)
}

pub fn run(server: Server, cmd: Native) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let client = Client::connect(address(&server.server))
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", server.server))?;
        let json = server.json;
        match cmd {
            Native::Stream(c) => stream(&client, c, json).await,
            Native::Consumer(c) => consumer(&client, c, json).await,
            Native::Pub(a) => publish(&client, a, json).await,
            Native::Sub(a) => subscribe(&client, a, json).await,
            Native::Req(a) => request(&client, a, json).await,
            Native::Reply(a) => reply(&client, a).await,
        }
    })
}

fn err(e: sluice_client::Error) -> String {
    e.to_string()
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("json"));
}

async fn stream(c: &Client, cmd: StreamCommand, json: bool) -> Result<(), String> {
    match cmd {
        StreamCommand::Add(a) => {
            let config = StreamConfig {
                name: a.name,
                subjects: a.subjects,
                retention: match a.retention.as_str() {
                    "limits" => Retention::Limits,
                    "interest" => Retention::Interest,
                    "workqueue" | "work" => Retention::WorkQueue,
                    o => {
                        return Err(format!(
                            "--retention must be limits, interest or workqueue, not '{o}'"
                        ))
                    }
                },
                storage: match a.storage.as_str() {
                    "file" => Storage::File,
                    "memory" => Storage::Memory,
                    o => return Err(format!("--storage must be file or memory, not '{o}'")),
                },
                max_msgs: a.max_msgs,
                max_bytes: a.max_bytes,
                max_age_ms: ms(&a.max_age)?,
                max_msgs_per_subject: a.max_msgs_per_subject,
                max_msg_size: a.max_msg_size,
                discard: match a.discard.as_str() {
                    "old" => Discard::Old,
                    "new" => Discard::New,
                    o => return Err(format!("--discard must be old or new, not '{o}'")),
                },
                duplicate_window_ms: ms(&a.dupe_window)?,
            };
            let info = c.add_stream(config).await.map_err(err)?;
            show_stream(&info, json);
        }
        StreamCommand::Info { name, subjects } => {
            let info = c
                .stream_info(&name, subjects.as_deref().unwrap_or(""))
                .await
                .map_err(err)?;
            show_stream(&info, json);
        }
        StreamCommand::Ls => {
            let streams = c.streams().await.map_err(err)?;
            if json {
                print_json(&Value::Array(streams.iter().map(stream_json).collect()));
            } else {
                println!(
                    "{:<20} {:>12} {:>14} {:>10} {:>10}",
                    "NAME", "MESSAGES", "BYTES", "FIRST", "LAST"
                );
                for s in streams {
                    println!(
                        "{:<20} {:>12} {:>14} {:>10} {:>10}",
                        s.config.name,
                        s.state.messages,
                        s.state.bytes,
                        s.state.first_seq,
                        s.state.last_seq
                    );
                }
            }
        }
        StreamCommand::Purge {
            name,
            subject,
            keep,
            seq,
        } => {
            let n = c
                .purge_stream(
                    &name,
                    PurgeRequest {
                        filter: subject.unwrap_or_default(),
                        keep: keep.unwrap_or(0),
                        seq: seq.unwrap_or(0),
                    },
                )
                .await
                .map_err(err)?;
            if json {
                print_json(&json!({"success": true, "purged": n}));
            } else {
                println!("Purged {n} messages from {name}");
            }
        }
        StreamCommand::Rm { name } => {
            c.delete_stream(&name).await.map_err(err)?;
            if json {
                print_json(&json!({"success": true}));
            } else {
                println!("Deleted stream {name}");
            }
        }
        StreamCommand::Get {
            name,
            seq,
            last_for,
        } => {
            let m = match (seq, last_for) {
                (_, Some(subject)) => c.get_last_msg(&name, &subject).await,
                (Some(seq), None) => c.get_msg(&name, seq).await,
                (None, None) => return Err("give a sequence or --last-for SUBJECT".into()),
            }
            .map_err(err)?;
            show_msg(&name, &m, json);
        }
    }
    Ok(())
}

fn deliver_policy(s: &str) -> Result<DeliverPolicy, String> {
    Ok(match s {
        "all" => DeliverPolicy::All,
        "last" => DeliverPolicy::Last,
        "new" => DeliverPolicy::New,
        "last-per-subject" | "last_per_subject" => DeliverPolicy::LastPerSubject,
        other => match other.parse::<u64>() {
            Ok(seq) => DeliverPolicy::ByStartSequence(seq),
            Err(_) => DeliverPolicy::ByStartTime(parse_rfc3339(other).ok_or_else(|| {
                format!(
                    "--deliver must be all, last, new, last-per-subject, a sequence or an RFC 3339 time, not '{other}'"
                )
            })?),
        },
    })
}

async fn consumer(c: &Client, cmd: ConsumerCommand, json: bool) -> Result<(), String> {
    match cmd {
        ConsumerCommand::Add(a) => {
            let a = *a;
            if a.pull && a.target.is_some() {
                return Err("--pull and --target exclude each other".into());
            }
            let config = ConsumerConfig {
                durable_name: a.name,
                deliver_policy: deliver_policy(&a.deliver)?,
                ack_policy: match a.ack.as_str() {
                    "none" => AckPolicy::None,
                    "all" => AckPolicy::All,
                    "explicit" => AckPolicy::Explicit,
                    o => return Err(format!("--ack must be none, all or explicit, not '{o}'")),
                },
                ack_wait_ms: ms(&a.ack_wait)?,
                backoff_ms: a.backoff.iter().map(|b| ms(b)).collect::<Result<_, _>>()?,
                max_deliver: a.max_deliver,
                filter_subjects: a.filter,
                max_ack_pending: a.max_pending,
                max_waiting: a.max_waiting,
                deliver_subject: a.target.unwrap_or_default(),
                deliver_group: a.deliver_group.unwrap_or_default(),
                flow_control: a.flow_control,
                idle_heartbeat_ms: a.heartbeat.as_deref().map(ms).transpose()?.unwrap_or(0),
                dead_letter_stream: a.dead_letter.unwrap_or_default(),
                ..ConsumerConfig::default()
            };
            let info = c.add_consumer(&a.stream, config).await.map_err(err)?;
            show_consumer(&info, json);
        }
        ConsumerCommand::Info { stream, name } => {
            let info = c.consumer_info(&stream, &name).await.map_err(err)?;
            show_consumer(&info, json);
        }
        ConsumerCommand::Ls { stream } => {
            let list = c.consumers(&stream).await.map_err(err)?;
            if json {
                print_json(&Value::Array(list.iter().map(consumer_json).collect()));
            } else {
                println!(
                    "{:<20} {:>12} {:>14} {:>14}",
                    "NAME", "NUM_PENDING", "ACK_PENDING", "REDELIVERED"
                );
                for i in list {
                    println!(
                        "{:<20} {:>12} {:>14} {:>14}",
                        i.name, i.num_pending, i.num_ack_pending, i.num_redelivered
                    );
                }
            }
        }
        ConsumerCommand::Next {
            stream,
            name,
            count,
            no_ack,
            wait,
        } => {
            let deadline = tokio::time::Instant::now() + parse_duration(&wait)?;
            let mut got = 0;
            let mut out = Vec::new();
            while got < count {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let msgs = c
                    .fetch(
                        &stream,
                        &name,
                        FetchOptions {
                            batch: count - got,
                            expires: left,
                            ..FetchOptions::default()
                        },
                    )
                    .await
                    .map_err(err)?;
                if msgs.is_empty() {
                    break;
                }
                for m in msgs {
                    got += 1;
                    if !no_ack {
                        m.ack_sync().await.map_err(err)?;
                    }
                    if json {
                        out.push(message_json(&m));
                    } else {
                        let meta = m.meta.as_ref().expect("consumer messages carry metadata");
                        println!(
                            "[{}] subject: {} stream seq: {} deliveries: {} pending: {}{}",
                            meta.consumer_seq,
                            m.subject,
                            meta.stream_seq,
                            meta.deliveries,
                            meta.pending,
                            if no_ack { "" } else { " (acknowledged)" }
                        );
                        println!("{}\n", String::from_utf8_lossy(&m.data));
                    }
                }
            }
            if json {
                print_json(&Value::Array(out));
            }
            if got == 0 {
                return Err(format!("no message received from {stream} > {name}"));
            }
        }
        ConsumerCommand::Rm { stream, name } => {
            c.delete_consumer(&stream, &name).await.map_err(err)?;
            if json {
                print_json(&json!({"success": true}));
            } else {
                println!("Deleted consumer {stream} > {name}");
            }
        }
    }
    Ok(())
}

fn parse_headers(hs: &[String]) -> Result<Vec<(String, Vec<u8>)>, String> {
    hs.iter()
        .map(|h| {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| format!("header '{h}' must be K:V"))?;
            Ok((k.trim().to_string(), v.trim().as_bytes().to_vec()))
        })
        .collect()
}

async fn publish(c: &Client, a: PubArgs, json: bool) -> Result<(), String> {
    let headers = parse_headers(&a.headers)?;
    let mut acks = Vec::new();
    for i in 1..=a.count.max(1) {
        let data = a.data.replace("{{Count}}", &i.to_string());
        let opts = PublishOptions {
            headers: headers.clone(),
            msg_id: a.msg_id.as_ref().map(|id| {
                if a.count > 1 {
                    format!("{id}-{i}")
                } else {
                    id.clone()
                }
            }),
            ..PublishOptions::default()
        };
        // Stored if a stream captures the subject (and acknowledged); otherwise a plain
        // publish to whoever subscribes.
        match c.publish_ack(&a.subject, data.as_bytes(), opts).await {
            Ok(ack) => acks.push(Some(ack)),
            Err(sluice_client::Error::NoResponders(_)) => acks.push(None),
            Err(e) => return Err(err(e)),
        }
    }
    c.ping().await.map_err(err)?;
    let a_subject = &a.subject;
    if json {
        print_json(&Value::Array(
            acks.iter()
                .map(|a| match a {
                    Some(a) => json!({"stream": a.stream, "seq": a.seq, "duplicate": a.duplicate}),
                    None => json!({"published": true}),
                })
                .collect(),
        ));
        return Ok(());
    }
    for (i, a) in acks.iter().enumerate() {
        match a {
            Some(a) if a.duplicate => println!(
                "Message {} on {}: duplicate of {} sequence {}",
                i + 1,
                a_subject,
                a.stream,
                a.seq
            ),
            Some(a) => println!(
                "Stored message {} on {} in stream {} sequence {}",
                i + 1,
                a_subject,
                a.stream,
                a.seq
            ),
            None => println!("Published message {} to {}", i + 1, a_subject),
        }
    }
    Ok(())
}

async fn subscribe(c: &Client, a: SubArgs, json: bool) -> Result<(), String> {
    let mut sub = c
        .queue_subscribe(&a.subject, a.queue.as_deref().unwrap_or(""))
        .await
        .map_err(err)?;
    if !json {
        eprintln!("Subscribing on {}", a.subject);
    }
    let mut n = 0;
    while let Some(m) = sub.next().await {
        n += 1;
        if json {
            println!(
                "{}",
                serde_json::to_string(&message_json(&m)).expect("json")
            );
        } else {
            println!("[#{n}] Received on \"{}\"", m.subject);
            for (k, v) in &m.headers {
                println!("{k}: {}", String::from_utf8_lossy(v));
            }
            println!("{}\n", String::from_utf8_lossy(&m.data));
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if a.count > 0 && n >= a.count {
            break;
        }
    }
    Ok(())
}

async fn request(c: &Client, a: ReqArgs, json: bool) -> Result<(), String> {
    let m = c
        .request(&a.subject, a.data.as_bytes(), parse_duration(&a.timeout)?)
        .await
        .map_err(err)?;
    if json {
        print_json(&message_json(&m));
    } else {
        println!("{}", String::from_utf8_lossy(&m.data));
    }
    Ok(())
}

async fn reply(c: &Client, a: ReplyArgs) -> Result<(), String> {
    let mut sub = c
        .queue_subscribe(&a.subject, a.queue.as_deref().unwrap_or(""))
        .await
        .map_err(err)?;
    eprintln!("Listening on {}", a.subject);
    let mut n = 0;
    while let Some(m) = sub.next().await {
        if m.reply.is_empty() {
            continue;
        }
        let body = if a.echo {
            m.data.to_vec()
        } else {
            a.data.clone().into_bytes()
        };
        c.publish(&m.reply, &body).map_err(err)?;
        n += 1;
        if a.count > 0 && n >= a.count {
            break;
        }
    }
    c.ping().await.map_err(err)?;
    Ok(())
}

// ---- output ----

fn ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

/// RFC 3339 (UTC) of a Unix time in ms (Go's zero time for 0, as JetStream prints it).
pub fn rfc3339(ms: i64) -> String {
    if ms == 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` to Unix ms.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let millis: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86400 + hh * 3600 + mm * 60 + ss) * 1000) + millis)
}

fn stream_json(i: &StreamInfo) -> Value {
    let c = &i.config;
    let mut state = json!({
        "messages": i.state.messages,
        "bytes": i.state.bytes,
        "first_seq": i.state.first_seq,
        "first_ts": rfc3339(i.state.first_ts_ms),
        "last_seq": i.state.last_seq,
        "last_ts": rfc3339(i.state.last_ts_ms),
        "num_deleted": i.state.num_deleted,
        "num_subjects": i.state.num_subjects,
        "consumer_count": i.state.consumer_count,
    });
    if !i.state.subjects.is_empty() {
        state["subjects"] = Value::Object(
            i.state
                .subjects
                .iter()
                .map(|(s, n)| (s.clone(), json!(n)))
                .collect(),
        );
    }
    json!({
        "config": {
            "name": c.name,
            "subjects": c.subjects,
            "retention": c.retention,
            "max_consumers": -1,
            "max_msgs": c.max_msgs,
            "max_bytes": c.max_bytes,
            "max_age": ns(c.max_age_ms),
            "max_msgs_per_subject": c.max_msgs_per_subject,
            "max_msg_size": c.max_msg_size,
            "discard": c.discard,
            "storage": c.storage,
            "num_replicas": 1,
            "duplicate_window": ns(c.duplicate_window_ms),
        },
        "created": rfc3339(i.created_ms),
        "state": state,
    })
}

fn show_stream(i: &StreamInfo, json: bool) {
    if json {
        print_json(&stream_json(i));
        return;
    }
    let c = &i.config;
    println!(
        "Information for Stream {} created {}\n",
        c.name,
        rfc3339(i.created_ms)
    );
    println!("             Subjects: {}", c.subjects.join(", "));
    println!("            Retention: {:?}", c.retention);
    println!("              Storage: {:?}", c.storage);
    println!("       Maximum Messages: {}", c.max_msgs);
    println!("          Maximum Bytes: {}", c.max_bytes);
    println!("            Maximum Age: {} ms", c.max_age_ms);
    println!(" Max Messages/Subject: {}", c.max_msgs_per_subject);
    println!("     Max Message Size: {}", c.max_msg_size);
    println!("         Discard Policy: {:?}", c.discard);
    println!("     Duplicate Window: {} ms\n", c.duplicate_window_ms);
    let s = &i.state;
    println!("State:\n");
    println!("             Messages: {}", s.messages);
    println!("                Bytes: {}", s.bytes);
    println!(
        "       First Sequence: {} @ {}",
        s.first_seq,
        rfc3339(s.first_ts_ms)
    );
    println!(
        "        Last Sequence: {} @ {}",
        s.last_seq,
        rfc3339(s.last_ts_ms)
    );
    println!("     Deleted Messages: {}", s.num_deleted);
    println!("     Number of Subjects: {}", s.num_subjects);
    println!("      Active Consumers: {}", s.consumer_count);
    for (subj, n) in &s.subjects {
        println!("  {subj}: {n}");
    }
}

fn deliver_json(p: DeliverPolicy) -> (&'static str, Option<u64>, Option<String>) {
    match p {
        DeliverPolicy::All => ("all", None, None),
        DeliverPolicy::Last => ("last", None, None),
        DeliverPolicy::New => ("new", None, None),
        DeliverPolicy::LastPerSubject => ("last_per_subject", None, None),
        DeliverPolicy::ByStartSequence(s) => ("by_start_sequence", Some(s), None),
        DeliverPolicy::ByStartTime(t) => ("by_start_time", None, Some(rfc3339(t))),
    }
}

fn consumer_json(i: &ConsumerInfo) -> Value {
    let c = &i.config;
    let (policy, seq, time) = deliver_json(c.deliver_policy);
    let mut config = json!({
        "durable_name": c.durable_name,
        "deliver_policy": policy,
        "ack_policy": c.ack_policy,
        "ack_wait": ns(c.ack_wait_ms),
        "max_deliver": c.max_deliver,
        "filter_subjects": c.filter_subjects,
        "max_ack_pending": c.max_ack_pending,
        "max_waiting": c.max_waiting,
        "flow_control": c.flow_control,
    });
    if let Some(s) = seq {
        config["opt_start_seq"] = json!(s);
    }
    if let Some(t) = time {
        config["opt_start_time"] = json!(t);
    }
    if !c.backoff_ms.is_empty() {
        config["backoff"] = json!(c.backoff_ms.iter().map(|b| ns(*b)).collect::<Vec<_>>());
    }
    if !c.deliver_subject.is_empty() {
        config["deliver_subject"] = json!(c.deliver_subject);
    }
    if !c.deliver_group.is_empty() {
        config["deliver_group"] = json!(c.deliver_group);
    }
    if c.idle_heartbeat_ms > 0 {
        config["idle_heartbeat"] = json!(ns(c.idle_heartbeat_ms));
    }
    if !c.dead_letter_stream.is_empty() {
        config["dead_letter_stream"] = json!(c.dead_letter_stream);
    }
    json!({
        "stream_name": i.stream,
        "name": i.name,
        "created": rfc3339(i.created_ms),
        "config": config,
        "delivered": {"consumer_seq": i.delivered.consumer_seq, "stream_seq": i.delivered.stream_seq},
        "ack_floor": {"consumer_seq": i.ack_floor.consumer_seq, "stream_seq": i.ack_floor.stream_seq},
        "num_ack_pending": i.num_ack_pending,
        "num_redelivered": i.num_redelivered,
        "num_waiting": i.num_waiting,
        "num_pending": i.num_pending,
    })
}

fn show_consumer(i: &ConsumerInfo, json: bool) {
    if json {
        print_json(&consumer_json(i));
        return;
    }
    let c = &i.config;
    println!(
        "Information for Consumer {} > {} created {}\n",
        i.stream,
        i.name,
        rfc3339(i.created_ms)
    );
    println!("        Pull Mode: {}", c.deliver_subject.is_empty());
    if !c.deliver_subject.is_empty() {
        println!("   Deliver Subject: {}", c.deliver_subject);
    }
    println!("   Deliver Policy: {:?}", c.deliver_policy);
    println!("       Ack Policy: {:?}", c.ack_policy);
    println!("         Ack Wait: {} ms", c.ack_wait_ms);
    println!("      Max Deliver: {}", c.max_deliver);
    println!("  Max Ack Pending: {}", c.max_ack_pending);
    if !c.filter_subjects.is_empty() {
        println!("  Filter Subjects: {}", c.filter_subjects.join(", "));
    }
    if !c.dead_letter_stream.is_empty() {
        println!("      Dead Letter: {}", c.dead_letter_stream);
    }
    println!("\nState:\n");
    println!(
        "  Last Delivered Message: Consumer sequence: {} Stream sequence: {}",
        i.delivered.consumer_seq, i.delivered.stream_seq
    );
    println!(
        "    Acknowledgment Floor: Consumer sequence: {} Stream sequence: {}",
        i.ack_floor.consumer_seq, i.ack_floor.stream_seq
    );
    println!("        Outstanding Acks: {}", i.num_ack_pending);
    println!("    Redelivered Messages: {}", i.num_redelivered);
    println!("    Waiting Pull Requests: {}", i.num_waiting);
    println!("       Unprocessed Messages: {}", i.num_pending);
}

fn show_msg(stream: &str, m: &StoredMsg, json: bool) {
    if json {
        let headers: serde_json::Map<String, Value> = m
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), json!(String::from_utf8_lossy(v))))
            .collect();
        print_json(&json!({
            "subject": m.subject,
            "seq": m.seq,
            "time": rfc3339(m.timestamp_ms),
            "hdrs": headers,
            "data": String::from_utf8_lossy(&m.data),
        }));
        return;
    }
    println!(
        "Item: {stream}#{} received {} on Subject {}\n",
        m.seq,
        rfc3339(m.timestamp_ms),
        m.subject
    );
    for (k, v) in &m.headers {
        println!("{k}: {}", String::from_utf8_lossy(v));
    }
    println!("{}", String::from_utf8_lossy(&m.data));
}

fn message_json(m: &sluice_client::Message) -> Value {
    let headers: serde_json::Map<String, Value> = m
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), json!(String::from_utf8_lossy(v))))
        .collect();
    let mut v = json!({
        "subject": m.subject,
        "data": String::from_utf8_lossy(&m.data),
        "hdrs": headers,
    });
    if !m.reply.is_empty() {
        v["reply"] = json!(m.reply);
    }
    if let Some(meta) = &m.meta {
        v["stream"] = json!(meta.stream);
        v["consumer"] = json!(meta.consumer);
        v["stream_seq"] = json!(meta.stream_seq);
        v["consumer_seq"] = json!(meta.consumer_seq);
        v["num_delivered"] = json!(meta.deliveries);
        v["num_pending"] = json!(meta.pending);
        v["timestamp"] = json!(rfc3339(meta.timestamp_ms));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(rfc3339(1_795_730_000_123), "2026-11-26T21:53:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        for t in [1, 1_795_730_000_123, 951_782_400_000] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(parse_rfc3339("nope"), None);
    }
}
