"""Fixtures for the Kafka-client suites: each test gets a real `sluice serve` process on a free
loopback port with its own data directory, stopped with SIGTERM (and checked to stop cleanly)
afterwards. Nothing here mocks the broker."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def sluice_bin() -> str:
    env = os.environ.get("SLUICE_BIN")
    if env:
        return env
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "sluice"
        if p.exists():
            return str(p)
    raise RuntimeError("no sluice binary: run `cargo build --workspace --bins` first")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A running `sluice serve`; `kill9()` and `start()` restart it on the same data dir."""

    def __init__(self, data_dir: Path, shards: int = 2, extra=()):
        self.data_dir = data_dir
        self.port = free_port()
        self.native_port = free_port()
        self.shards = shards
        self.extra = list(extra)
        self.proc = None
        self.log_path = data_dir.parent / f"broker-{self.port}.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout=30.0):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sluice_bin(), "serve", "--data-dir", str(self.data_dir),
             "--kafka-listen", self.bootstrap, "--shards", str(self.shards),
             "--native-listen", f"127.0.0.1:{self.native_port}", *self.extra],
            stdout=subprocess.PIPE, stderr=log)
        deadline = time.time() + timeout
        line = b""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(b"sluice ready"):
                return self
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"broker did not start: {line!r}; log: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self, timeout=30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


@pytest.fixture
def workdir():
    base = os.environ.get("SLUICE_TEST_DIR")
    d = Path(tempfile.mkdtemp(prefix="sluice-kafka-", dir=base))
    yield d
    if not os.environ.get("SLUICE_KEEP"):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def broker(workdir):
    b = Broker(workdir / "data").start()
    yield b
    rc = b.stop()
    assert rc == 0, f"broker did not stop cleanly (exit {rc}): {b.log_tail()}"
