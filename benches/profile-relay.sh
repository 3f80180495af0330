#!/usr/bin/env bash
# Where wsgate's CPU per relayed message goes: a bounded 64-byte echo load
# through an upstream route, counted by callgrind (instructions, repeatable on
# a shared machine) and by strace -c (system calls).
#
#   benches/profile-relay.sh [MESSAGES_PER_CONN]   (default 1000; 64 conns x 16 in flight)
#
# wsgate is built in release with debug symbols in a separate target dir
# ($PROFILE_TARGET_DIR, default /tmp/wsgate-prof-target). Collection is on only
# while the messages flow (not during start-up or the handshakes). Outputs are
# kept in $PROFILE_OUT (default a new temp dir) and their summaries printed.
# Needs valgrind (callgrind_control, callgrind_annotate); strace if present.
set -euo pipefail
cd "$(dirname "$0")/.."

per_conn="${1:-1000}"
conns=64
in_flight=16
size=64
target_dir="${PROFILE_TARGET_DIR:-/tmp/wsgate-prof-target}"
out="${PROFILE_OUT:-$(mktemp -d -t wsgate-profile.XXXXXX)}"
mkdir -p "$out"
pids=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 0.5
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
CARGO_PROFILE_RELEASE_DEBUG=true CARGO_TARGET_DIR="$target_dir" \
    cargo build --release --bin wsgate >&2
wsgate="$target_dir/release/wsgate"
runner="$(cargo bench --bench compare --no-run --message-format=json \
    | grep -o '"executable":"[^"]*/deps/compare-[^"]*"' | tail -n 1 | sed 's/"executable":"\(.*\)"/\1/')"
"$wsgate" gen-cert --host localhost --host 127.0.0.1 --out "$out" >/dev/null 2>&1

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}

backend_port="$(free_port)"
TOKIO_WORKER_THREADS=2 "$runner" serve-ws "$backend_port" >"$out/backend.log" 2>&1 &
pids+=($!)
wait_port "$backend_port"

# One gateway config; `under` runs wsgate under a tool, the load runs once.
run_gateway() {
    local name="$1"; shift
    local port; port="$(free_port)"
    cat >"$out/wsgate.toml" <<EOF
[listen]
addr = "127.0.0.1:$port"
[admin]
addr = "127.0.0.1:0"
[tls]
cert = "$out/cert.pem"
key = "$out/key.pem"
[[routes]]
path = "/relay"
kind = "upstream"
upstreams = ["ws://127.0.0.1:$backend_port"]
EOF
    RUST_LOG=warn TOKIO_WORKER_THREADS=2 "$@" "$wsgate" --config "$out/wsgate.toml" \
        >"$out/$name.log" 2>&1 &
    local gw=$!
    pids+=("$gw")
    wait_port "$port"
    coproc LOAD { "$runner" load "$out/ca.pem" "wss://localhost:$port/relay" \
        "$conns" "$in_flight" "$size" "${load_per_conn:-$per_conn}" 3; }
    pids+=("$LOAD_PID")
    local line
    read -r line <&"${LOAD[0]}"   # connected
    [[ "$line" == connected ]] || { echo "load: $line" >&2; return 1; }
    on_start "$gw"
    read -r line <&"${LOAD[0]}"   # done: ...
    on_stop "$gw"
    echo "$name: $line" >&2
    echoes="$(echo "$line" | awk '{print $2}')"
    wait "$LOAD_PID" || true
    kill -TERM "$gw" 2>/dev/null || true
    wait "$gw" || true
}

# 1. callgrind: instructions while the messages flow.
on_start() { sleep 1; callgrind_control -i on "$1" >/dev/null; }
on_stop() { callgrind_control -i off "$1" >/dev/null; }
run_gateway callgrind valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$out/callgrind.out" --dump-instr=no
# With instrumentation switched on late, callgrind 3.19 writes "summary: 0";
# the log has the count collected.
total_ir="$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out/callgrind.log")"
sed -i "s/^summary: 0\$/summary: $total_ir/; s/^totals: 0\$/totals: $total_ir/" "$out/callgrind.out"
echo "callgrind: $total_ir instructions for $echoes echoes: $((total_ir / echoes)) per echo" >&2
callgrind_annotate --inclusive=yes "$out/callgrind.out" 2>/dev/null | sed -n '1,120p' >"$out/inclusive.txt"
callgrind_annotate "$out/callgrind.out" 2>/dev/null | sed -n '1,120p' >"$out/self.txt"

# 2. strace -c: system calls of every wsgate thread while the messages flow
#    (strace slows wsgate, which then batches more per call: read the counts
#    per echo as an estimate, not an exact figure for a fast run).
if command -v strace >/dev/null; then
    on_start() {
        strace -c -f -p "$1" -o "$out/strace.txt" 2>/dev/null &
        strace_pid=$!
        pids+=("$strace_pid")
        sleep 1
    }
    on_stop() { kill -INT "$strace_pid"; wait "$strace_pid" || true; }
    run_gateway strace env
    echo "strace -c -f -p (while $echoes echoes flow):" >&2
    head -n 25 "$out/strace.txt" >&2
fi
# 3. No tool, 20x the messages: user and system CPU of wsgate per echo
#    (/proc/PID/stat) and read/write system calls per echo (/proc/PID/io).
counters() {
    local cpu io
    cpu="$(awk '{sub(/.*\) /, ""); print $12, $13}' "/proc/$1/stat")"
    io="$(awk '/^syscr|^syscw/ {printf "%s ", $2}' "/proc/$1/io")"
    echo "$cpu $io"
}
on_start() { sleep 1; read -r u0 s0 r0 w0 < <(counters "$1"); }
on_stop() { read -r u1 s1 r1 w1 < <(counters "$1"); }
load_per_conn=$((per_conn * 20)) run_gateway native env
tck="$(getconf CLK_TCK)"
awk -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v r="$((r1 - r0))" -v w="$((w1 - w0))" \
    -v n="$echoes" -v t="$tck" 'BEGIN {
    printf "native: per echo %.2f us user + %.2f us system = %.2f us; %.3f read + %.3f write system calls\n",
        u/t*1e6/n, s/t*1e6/n, (u+s)/t*1e6/n, r/n, w/n }' >&2
echo "outputs in $out: inclusive.txt self.txt callgrind.out strace.txt" >&2
