//! Helpers for Sluice's end-to-end tests: find the real `sluice` binary and give each test a
//! fresh directory. Tests live in `tests/tests/`, one behaviour per file.

use std::path::PathBuf;

/// The `sluice` binary built from this workspace (`cargo build --workspace --bins` first; the
/// README's test command does). `SLUICE_BIN` overrides the path.
pub fn sluice_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("sluice");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "no sluice binary under {}: run `cargo build --workspace --bins` before the tests",
        target.display()
    );
}

/// A new empty directory for one test, removed when dropped.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let base = std::env::var_os("SLUICE_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("sluice-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        TestDir(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// A running `sluice serve` on loopback ports, stopped with SIGTERM when dropped.
pub struct Broker {
    pub dir: PathBuf,
    pub kafka: String,
    pub native: String,
    child: Option<std::process::Child>,
    extra: Vec<String>,
    /// Working directory of the broker process (`dir` may then be relative to it).
    cwd: Option<PathBuf>,
}

impl Broker {
    pub fn start(dir: &std::path::Path, extra: &[&str]) -> Broker {
        Broker::start_in(None, dir, extra)
    }

    /// Starts the broker with `cwd` as its working directory, where `dir` may be relative.
    pub fn start_in(
        cwd: Option<&std::path::Path>,
        dir: &std::path::Path,
        extra: &[&str],
    ) -> Broker {
        let mut b = Broker {
            dir: dir.to_path_buf(),
            kafka: format!("127.0.0.1:{}", free_port()),
            native: format!("127.0.0.1:{}", free_port()),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.map(|c| c.to_path_buf()),
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(sluice_bin());
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd
            .args(["serve", "--data-dir"])
            .arg(&self.dir)
            .args([
                "--kafka-listen",
                &self.kafka,
                "--native-listen",
                &self.native,
            ])
            .args(["--shards", "2"])
            .args(&self.extra)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start sluice serve");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read ready line");
        assert!(
            line.starts_with("sluice ready"),
            "broker did not start: {line:?}"
        );
        self.child = Some(child);
    }

    /// Stops with SIGTERM (clean shutdown) and waits; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc_kill(child.id() as i32, 15) };
        child.wait().ok()?.code()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same data directory and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the broker first");
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A two-worker tokio runtime for tests that drive many client tasks at once.
pub fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
