#!/usr/bin/env bash
# The multi-host path of looppool-nats on one machine: a broker, a parent and
# two remote workers, each in its own network namespace (and with its own
# host name), so the workers reach the pool only through the broker's
# address, as they would from other hosts.
#
#   lp-parent 10.77.0.10 ─┐
#   lp-w1     10.77.0.11 ─┼─ bridge in lp-broker 10.77.0.1 ── nats-server -js :4222
#   lp-w2     10.77.0.12 ─┘
#
# Every address lives inside the namespaces; the host's own network is not
# touched. The parent and the workers are the broker_pool example
# (looppool-nats/examples/broker_pool.rs): the workers run it with
# LOOPPOOL_NATS_URL and LOOPPOOL_NATS_POOL, the parent with NATS_URL and
# REMOTE_WORKERS=2 (plus LOCAL_WORKERS local ones, started in lp-parent).
# The broker runs the secure setup of the looppool-nats crate docs: TLS
# (a CA and a server certificate made by this run with openssl), and a
# user per role with only the permissions `auth::Permissions::for_role`
# gives (`broker_pool --server-users` prints them), with passwords made by
# this run: the parent authenticates as netns-demo-parent, its local and
# remote workers as netns-demo-worker.
# The script checks that both remote workers handled tasks (their host names
# and pids appear in the parent's summary), that every process exited 0, and
# removes the namespaces, processes and temporary files on exit.
#
# Run it as root, from anywhere in the repository:
#
#   sudo scripts/netns-demo.sh
#   sudo TASKS=2000 LOCAL_WORKERS=0 scripts/netns-demo.sh
#
# It builds the example first (cargo build --release, as $SUDO_USER when run
# through sudo). If cargo is not on root's PATH, build it yourself and pass
# the binary: sudo BIN=target/release/examples/broker_pool scripts/netns-demo.sh
#
# Needs: root, iproute2 (`ip`), util-linux (`unshare`), openssl, nats-server (PATH,
# /usr/sbin, or NATS_SERVER). Exit status: 0 on success, 1 if the demo
# failed, 2 if a prerequisite is missing.
set -euo pipefail

TASKS=${TASKS:-400}
LOCAL_WORKERS=${LOCAL_WORKERS:-1}
POOL=netns-demo
NET=10.77.0
BROKER_URL=nats://$NET.1:4222
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
    echo "netns-demo: $*" >&2
    exit 2
}

# --- prerequisites -----------------------------------------------------------

[[ $EUID -eq 0 ]] || die "needs root to create network namespaces: run it with sudo"
if ! command -v ip >/dev/null; then
    echo "netns-demo: ip not found, installing iproute2" >&2
    { apt-get install -y iproute2 || { apt-get update && apt-get install -y iproute2; }; } >&2 ||
        die "ip (iproute2) is missing and could not be installed"
fi
command -v unshare >/dev/null || die "unshare (util-linux) is missing"
command -v openssl >/dev/null || die "openssl is missing (Debian: apt-get install openssl)"
NATS_SERVER=${NATS_SERVER:-$(PATH=$PATH:/usr/sbin:/usr/local/sbin command -v nats-server || true)}
[[ -n $NATS_SERVER && -x $NATS_SERVER ]] ||
    die "nats-server not found: install it (Debian: apt-get install nats-server) or set NATS_SERVER"
for ns in lp-broker lp-parent lp-w1 lp-w2; do
    if [[ -e /run/netns/$ns ]]; then
        die "network namespace $ns exists already (left by an earlier run?): remove it with 'ip netns del $ns'"
    fi
done

if [[ -z ${BIN:-} ]]; then
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/broker_pool
    build=(cargo build --release -p looppool-nats --example broker_pool --manifest-path "$ROOT/Cargo.toml")
    if ! command -v cargo >/dev/null; then
        [[ -x $BIN ]] || die "cargo is not on root's PATH: build the example yourself and pass BIN=<path>"
        echo "netns-demo: cargo is not on the PATH, using the existing $BIN" >&2
    elif [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]]; then
        # Keep the target directory owned by the user who ran sudo.
        sudo -u "$SUDO_USER" env "PATH=$PATH" "${build[@]}"
    else
        "${build[@]}"
    fi
fi
[[ -x $BIN ]] || die "no example binary at $BIN"

# --- teardown, whatever happens from here on -----------------------------------

WORK=$(mktemp -d /tmp/lp-netns.XXXXXX)
NAMESPACES=() # the ones this run created
PIDS=()       # the processes this run started

cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for _ in $(seq 50); do
        alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [[ $alive -eq 0 ]] && break
        sleep 0.1
    done
    # Anything still inside our namespaces (a local worker of the parent,
    # say, or a process that ignored SIGTERM) was started by this run too.
    for ns in "${NAMESPACES[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null
        done
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    # Deleting a namespace deletes the veth ends and the bridge inside it.
    for ns in "${NAMESPACES[@]}"; do
        ip netns del "$ns"
    done
    for n in parent w1 w2; do
        ip link del "lp-v-$n" 2>/dev/null # only if setup stopped half-way
    done
    rm -rf "$WORK"
    if [[ $rc -eq 0 ]]; then
        echo "netns-demo: ok (namespaces, processes and $WORK removed)"
    else
        echo "netns-demo: FAILED with status $rc (namespaces, processes and $WORK removed)" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the network -------------------------------------------------------------

for ns in lp-broker lp-parent lp-w1 lp-w2; do
    ip netns add "$ns"
    NAMESPACES+=("$ns")
    ip -n "$ns" link set lo up
done
ip -n lp-broker link add br0 type bridge
ip -n lp-broker addr add "$NET.1/24" dev br0
ip -n lp-broker link set br0 up

host=10
for n in parent w1 w2; do
    # A veth pair: eth0 in the namespace, its peer on the broker's bridge.
    ip link add "lp-v-$n" type veth peer name "lp-b-$n"
    ip link set "lp-v-$n" netns "lp-$n"
    ip link set "lp-b-$n" netns lp-broker
    ip -n "lp-$n" link set "lp-v-$n" name eth0
    ip -n "lp-$n" addr add "$NET.$host/24" dev eth0
    ip -n "lp-$n" link set eth0 up
    ip -n lp-broker link set "lp-b-$n" master br0 up
    host=$((host + 1))
done

# Runs a command inside namespace $1, with the namespace's name as host name
# (a UTS namespace of its own) so that workers report where they run. Each
# step execs the next: run as `( in_ns ... ) &`, $! is the command's pid.
in_ns() {
    local ns=$1
    shift
    exec ip netns exec "$ns" unshare --uts \
        sh -c 'echo "$0" >/proc/sys/kernel/hostname && exec "$@"' "$ns" "$@"
}

# --- the secure setup: TLS, a user per role -----------------------------------

password() { head -c 18 /dev/urandom | base64 | tr -d '/+='; }
PARENT_PASSWORD=$(password)
WORKER_PASSWORD=$(password)
tls() { openssl "$@" 2>>"$WORK/openssl.log" >&2; }
tls req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=netns-demo-CA -keyout "$WORK/ca-key.pem" -out "$WORK/ca.pem"
tls req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=lp-broker \
    -keyout "$WORK/server-key.pem" -out "$WORK/server.csr"
printf 'subjectAltName=IP:%s\n' "$NET.1" >"$WORK/server.ext"
tls x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca-key.pem" \
    -CAcreateserial -days 1 -extfile "$WORK/server.ext" -out "$WORK/server.pem"
{
    printf 'tls { cert_file: "%s", key_file: "%s" }\n' "$WORK/server.pem" "$WORK/server-key.pem"
    "$BIN" --server-users "$POOL" "$PARENT_PASSWORD" "$WORKER_PASSWORD"
} >"$WORK/server.conf"
chmod 600 "$WORK/server.conf"
echo "netns-demo: broker configuration: TLS, users $POOL-parent and $POOL-worker with their roles' permissions"

# --- the broker --------------------------------------------------------------

(in_ns lp-broker "$NATS_SERVER" -c "$WORK/server.conf" -js -a "$NET.1" -p 4222 -sd "$WORK/store") \
    >"$WORK/broker.log" 2>&1 &
PIDS+=($!)
echo "netns-demo: nats-server in lp-broker at $BROKER_URL (pid $!)"
# Wait until the broker answers from the parent's namespace: this also shows
# that the veths and the bridge carry traffic.
reachable() { ip netns exec lp-parent bash -c "exec 3<>/dev/tcp/$NET.1/4222" 2>/dev/null; }
for _ in $(seq 100); do
    reachable && break
    sleep 0.1
done
if ! reachable; then
    cat "$WORK/broker.log" >&2
    echo "netns-demo: the broker is not reachable from lp-parent" >&2
    exit 1
fi

# --- two remote workers ------------------------------------------------------

# They keep asking to join until the pool exists, so they can start first.
declare -A WORKER_PID
for w in w1 w2; do
    (in_ns "lp-$w" env LOOPPOOL_NATS_URL="$BROKER_URL" LOOPPOOL_NATS_POOL="$POOL" \
        LOOPPOOL_NATS_USER="$POOL-worker" LOOPPOOL_NATS_PASSWORD="$WORKER_PASSWORD" \
        LOOPPOOL_NATS_CA="$WORK/ca.pem" "$BIN") \
        >"$WORK/$w.log" 2>&1 &
    PIDS+=($!)
    WORKER_PID[$w]=$!
    echo "netns-demo: remote worker in lp-$w (pid $!)"
done

# --- the parent --------------------------------------------------------------

echo "netns-demo: parent in lp-parent: $LOCAL_WORKERS local + 2 remote workers, $TASKS tasks"
# In the background, so that a signal to this script runs its trap at once
# (bash runs traps only between foreground commands); its output is shown as
# it comes.
(in_ns lp-parent env -u LOOPPOOL_NATS_URL -u LOOPPOOL_NATS_POOL -u LOOPPOOL_NATS_INDEX \
    NATS_URL="$BROKER_URL" POOL_NAME="$POOL" LOCAL_WORKERS="$LOCAL_WORKERS" \
    LOOPPOOL_NATS_USER="$POOL-parent" LOOPPOOL_NATS_PASSWORD="$PARENT_PASSWORD" \
    LOOPPOOL_NATS_CA="$WORK/ca.pem" WORKER_USER="$POOL-worker" WORKER_PASSWORD="$WORKER_PASSWORD" \
    REMOTE_WORKERS=2 TASKS="$TASKS" timeout 120 "$BIN") >"$WORK/parent.log" 2>&1 &
parent_pid=$!
PIDS+=("$parent_pid")
tail -n +1 -s 0.1 -f --pid="$parent_pid" "$WORK/parent.log" &
PIDS+=($!)
set +e
wait "$parent_pid"
parent_rc=$?
wait $! # the rest of the output
set -e

# --- checks ------------------------------------------------------------------

failed=0
check() { # description, then a command that must succeed
    if "${@:2}"; then
        echo "check ok: $1"
    else
        echo "check FAILED: $1" >&2
        failed=1
    fi
}
check "the parent exited 0 (it exited $parent_rc)" test "$parent_rc" -eq 0
check "the parent finished its tasks" grep -q "^done: $TASKS tasks through the broker" "$WORK/parent.log"
for w in w1 w2; do
    # A summary line such as "  worker 1:  130 tasks, host lp-w1, pid 1234, net:[...]".
    line=$(grep -E "^  worker [0-9]+: +[0-9]+ tasks, host lp-$w, " "$WORK/parent.log" || true)
    handled=$(sed -E 's/^  worker [0-9]+: +([0-9]+) tasks.*/\1/' <<<"$line")
    check "lp-$w handled tasks (${handled:-none})" test "${handled:-0}" -gt 0
    check "lp-$w's worker is the process started there (pid ${WORKER_PID[$w]})" \
        grep -q ", pid ${WORKER_PID[$w]}, " <<<"$line"
    # The pool's shutdown stops the remote workers; give them a moment.
    for _ in $(seq 50); do
        kill -0 "${WORKER_PID[$w]}" 2>/dev/null || break
        sleep 0.1
    done
    set +e
    wait "${WORKER_PID[$w]}"
    worker_rc=$?
    set -e
    check "lp-$w's worker exited 0 (it exited $worker_rc)" test "$worker_rc" -eq 0
    if [[ -s $WORK/$w.log ]]; then
        echo "--- lp-$w's worker log:"
        cat "$WORK/$w.log"
    fi
done
# A process without the pool's credentials (but trusting the CA) is refused.
set +e
stranger=$(ip netns exec lp-w1 env LOOPPOOL_NATS_URL="$BROKER_URL" LOOPPOOL_NATS_POOL="$POOL" \
    LOOPPOOL_NATS_CA="$WORK/ca.pem" LOOPPOOL_NATS_JOIN_TIMEOUT=5 "$BIN" 2>&1)
stranger_rc=$?
set -e
check "a worker without credentials is refused (it exited $stranger_rc: $stranger)" \
    bash -c '[[ $0 -ne 0 && $1 == *"refused this worker"* ]]' "$stranger_rc" "$stranger"
if [[ $failed -ne 0 ]]; then
    echo "--- broker log (tail):"
    tail -20 "$WORK/broker.log"
    exit 1
fi
