#!/usr/bin/env bash
# kafka-python's own integration suite (pinned 3.0.12) against a fresh `sluice serve`.
# The sdist is not runnable as shipped; the fix-ups follow ../shared/PEERS.md. Tests that need
# what Sluice does not offer (SSL, SASL, ACLs, transactions, several brokers, reassignments,
# log dirs, KRaft quorum, leader election, KIP-966/1142 APIs) are deselected by name below;
# every other test must pass. Prints the pass count.
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.0.12
work="target/kafka-python-suite"
src="$work/kafka_python-$version"
py="$PWD/.venv/bin"
if [ ! -d "$src" ]; then
    mkdir -p "$work"
    "$py/pip" download -q --no-deps --no-binary :all: "kafka-python==$version" -d "$work"
    tar xzf "$work/kafka_python-$version.tar.gz" -C "$work"
    touch "$src/test/__init__.py"
    mkdir -p "$src/servers/4.1.0/kafka-bin"
    cat > "$src/test/service.py" <<'PY'
"""Stand-in for kafka-python's test service module: the broker runs outside the suite."""


class ExternalService(object):
    def __init__(self, host, port):
        self.host = host
        self.port = port

    def start(self):
        pass

    def stop(self):
        pass

    def dump_logs(self):
        pass

    def wait_for(self, pattern, timeout=30):
        return True


class SpawnedService(object):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("this suite runs against an external broker only")
PY
fi
data="$(mktemp -d)"
port=$("$py/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/debug/sluice serve --data-dir "$data" --kafka-listen "127.0.0.1:$port" --native-listen off \
    --num-partitions 4 --group-min-session-timeout-ms 1000 > "$data.stdout" 2> "$data.log" &
broker=$!
# On a failure the broker's log goes to the output (a timing failure is otherwise undiagnosable).
trap 'rc=$?; kill $broker 2>/dev/null; wait $broker 2>/dev/null
      if [ $rc -ne 0 ]; then echo "== sluice log (last 100 lines)"; tail -n 100 "$data.log"; fi
      rm -rf "$data" "$data.stdout" "$data.log"' EXIT
for _ in $(seq 1 100); do grep -q "sluice ready" "$data.stdout" 2>/dev/null && break; sleep 0.1; done
grep -q "sluice ready" "$data.stdout" || { cat "$data.log"; exit 1; }

unsupported=(
    test_admin_integration.py::test_alter_partition_reassignments
    test_admin_integration.py::test_list_partition_reassignments
    test_admin_integration.py::test_alter_replica_log_dirs
    test_admin_integration.py::test_describe_log_dirs
    test_admin_integration.py::test_create_describe_delete_acls
    test_admin_integration.py::test_describe_metadata_quorum
    test_admin_integration.py::test_describe_topic_partitions
    test_admin_integration.py::test_describe_topic_partitions_pagination
    test_admin_integration.py::test_elect_leaders
    test_admin_integration.py::test_list_config_resources
    test_consumer_integration.py::test_kafka_version_infer
    test_producer_integration.py::test_transactional_producer_messages
    test_producer_integration.py::test_transactional_producer_offsets
)
deselect=()
for t in "${unsupported[@]}"; do deselect+=(--deselect "test/integration/$t"); done
# Failures of these tests are retried once, alone: kafka-python 3.0.12 (the newest release) has
# a metadata race in them. The consumer (group_id=None) calls subscribe() while its bootstrap
# Metadata request for no topics is still in flight; the answer, arriving after, clears the
# update subscribe() asked for (kafka/cluster.py, "TODO: handle future when old metadata request
# is currently in-flight"), and the client waits out metadata.max.age.ms (5 min) before asking
# again. Seen twice in 124 runs of its three cases; the race is the client's, on any broker,
# and its debug log shows the broker answering the request it was sent, correctly. Any other
# failure fails the suite at once.
known_client_races='test_idempotent_producer_max_in_flight'
run() {
    KAFKA_VERSION=4.1.0 KAFKA_URI="tcp://127.0.0.1:$port" "$py/pytest" \
        -p no:logging -p no:cacheprovider -q --timeout 60 --timeout-method=signal "$@"
}
cd "$src"
log="$(mktemp)"
set +e
run test/integration \
    --ignore test/integration/test_ssl_integration.py \
    --ignore test/integration/test_sasl_integration.py \
    "${deselect[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
first_passed=$(grep -Eo '([0-9]+) passed' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
failed=$(grep -E '^FAILED ' "$log" | awk '{print $2}' | sort -u || true)
rm -f "$log"
if [ "$rc" -ne 0 ]; then
    [ -n "$failed" ] || exit "$rc"
    for t in $failed; do
        [[ "$t" == *"::${known_client_races}"* ]] || exit "$rc"
    done
    echo "== retrying once, alone (kafka-python's subscribe/metadata race, see tools/kafka_python_suite.sh):"
    echo "$failed"
    retry_log="$(mktemp)"
    # Test ids hold brackets: no globbing. shellcheck disable=SC2086
    set -f
    run $failed 2>&1 | tee "$retry_log"
    set +f
    retried=$(grep -Eo '([0-9]+) passed' "$retry_log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
    rm -f "$retry_log"
    echo "kafka-python suite: $((first_passed + retried)) passed after one retry"
fi
