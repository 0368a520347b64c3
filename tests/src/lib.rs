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
