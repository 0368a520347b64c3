//! Kill -9 a process appending to a partition log under `fsync = always`, at random moments,
//! many times over, and reopen: every batch whose append was acknowledged is there, in order,
//! byte for byte; offsets stay dense; nothing past a torn tail is ever served.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use sluice_tests::{sluice_bin, TestDir};

const VALUE_BYTES_MAX: &str = "12000";

#[test]
fn acknowledged_batches_survive_kill9() {
    let cycles: usize = std::env::var("SLUICE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = rand::random();
    eprintln!("kill -9 test: {cycles} cycles, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = TestDir::new("kill9");
    let log_dir = dir.0.join("log");
    let mut acked: HashSet<u64> = HashSet::new();
    let mut next_seq = 0u64;
    let mut cycles_with_acks = 0;
    for cycle in 0..cycles {
        let mut child = Command::new(sluice_bin())
            .args([
                "log",
                "append",
                "--count",
                "0",
                "--fsync",
                "always",
                "--concurrency",
                "8",
            ])
            .args([
                "--segment-bytes",
                "2000000",
                "--value-bytes-max",
                VALUE_BYTES_MAX,
            ])
            .arg("--first-seq")
            .arg(next_seq.to_string())
            .arg("--dir")
            .arg(&log_dir)
            .arg("--print-acks")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sluice log append");
        let stdout = child.stdout.take().expect("piped stdout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut parts = line.split_whitespace();
                    if parts.next() == Some("ack") {
                        let seq: u64 = parts.next().and_then(|s| s.parse().ok()).expect("ack seq");
                        seen.lock().unwrap().push(seq);
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..400)));
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        reader.join().expect("reader thread");
        let new_acks = seen.lock().unwrap().clone();
        if !new_acks.is_empty() {
            cycles_with_acks += 1;
        }
        acked.extend(new_acks.iter().copied());

        // Reopen (recovery) and read everything back through the real binary.
        let out = Command::new(sluice_bin())
            .args([
                "log",
                "dump",
                "--verify",
                "--json",
                "--value-bytes-max",
                VALUE_BYTES_MAX,
            ])
            .arg("--dir")
            .arg(&log_dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run sluice log dump");
        // A hung dump fails the test (and is killed) instead of stalling the run.
        let pid = out.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(out.wait_with_output()));
        let out = match rx.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(r) => r.expect("wait for sluice log dump"),
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                panic!("cycle {cycle}: sluice log dump did not finish within 120 s");
            }
        };
        assert!(
            out.status.success(),
            "cycle {cycle}: dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut present = HashSet::new();
        let mut expected_offset = 0i64;
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let base = v["base_offset"].as_i64().unwrap();
            assert_eq!(base, expected_offset, "cycle {cycle}: offsets are dense");
            expected_offset = v["last_offset"].as_i64().unwrap() + 1;
            let seq = v["seq"].as_u64().unwrap();
            assert!(
                present.insert(seq),
                "cycle {cycle}: batch {seq} stored twice"
            );
        }
        let lost: Vec<_> = acked.iter().filter(|s| !present.contains(s)).collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle} (seed {seed}): acknowledged batches lost: {lost:?}"
        );
        next_seq = present
            .iter()
            .chain(acked.iter())
            .max()
            .map_or(0, |m| m + 1);
    }
    assert!(
        cycles_with_acks * 2 >= cycles,
        "only {cycles_with_acks} of {cycles} cycles acknowledged anything: the test proved little"
    );
    eprintln!("{} acknowledged batches, none lost", acked.len());
}
