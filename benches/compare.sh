#!/usr/bin/env bash
# wsgate against nginx, in one run on 127.0.0.1: see benches/compare.rs.
#
#   benches/compare.sh            full run (3 repeats; about 8 minutes on 2 cores after the build)
#   benches/compare.sh --quick    every target and measure once, tiny and short (CI; about 40 s)
#   benches/compare.sh --hub-only the hub table alone (no relay targets)
#   benches/compare.sh --memory-only  the memory measures alone, no load (fine on a busy machine)
#   benches/compare.sh --deflate-only the compression table alone
#
# Prints three tables: the relay (wsgate, nginx, a direct wss backend), the
# hub (wsgate's fan-out against the kernel floor of a plain write loop, and
# the memory of idle hub connections), and compression (wsgate with clients
# that offer permessage-deflate and clients that do not: a 1 KiB JSON echo,
# idle hub connections, and the fan-out to the largest --hub-subs count).
#
# Options (or the environment variable in brackets):
#   --repeats N   [COMPARE_REPEATS]   repeats of every measure (default 3, quick 1)
#   --sessions N  [COMPARE_SESSIONS]  sessions for the memory measures (default 2000, quick 100)
#   --secs S      [COMPARE_SECS]      measured seconds per load measure (default 4, quick 1)
#   --workers N   [COMPARE_WORKERS]   wsgate tokio workers = nginx worker_processes (default 2)
#   --hub-subs L  [COMPARE_HUB_SUBS]  hub subscriber counts, comma-separated (default 1000,5000,10000;
#                                     quick 100)
#   --hub-secs S  [COMPARE_HUB_SECS]  seconds of publishing per fan-out measure (default 4, quick 1)
#   --hub-idle N  [COMPARE_HUB_IDLE]  idle hub connections for the memory measure (default 2000,
#                                     quick 100; up to about 19000 under a 20000 descriptor limit)
#   --wsgate BIN  [COMPARE_WSGATE]    measure this wsgate binary instead of building one
#                                     (an older build, for a before/after comparison)
#
# Installs nginx (Debian nginx-light, else nginx) if it is missing (as root,
# or through sudo). Everything it starts is stopped when it exits, however it exits.
set -euo pipefail

cd "$(dirname "$0")/.."

args=()
[[ -n "${COMPARE_REPEATS:-}" ]] && args+=(--repeats "$COMPARE_REPEATS")
[[ -n "${COMPARE_SESSIONS:-}" ]] && args+=(--sessions "$COMPARE_SESSIONS")
[[ -n "${COMPARE_SECS:-}" ]] && args+=(--secs "$COMPARE_SECS")
[[ -n "${COMPARE_HUB_SUBS:-}" ]] && args+=(--hub-subs "$COMPARE_HUB_SUBS")
[[ -n "${COMPARE_HUB_SECS:-}" ]] && args+=(--hub-secs "$COMPARE_HUB_SECS")
[[ -n "${COMPARE_HUB_IDLE:-}" ]] && args+=(--hub-idle "$COMPARE_HUB_IDLE")
workers="${COMPARE_WORKERS:-2}"
wsgate="${COMPARE_WSGATE:-}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) args+=(--quick) ;;
        --hub-only) args+=(--hub-only) ;;
        --memory-only) args+=(--memory-only) ;;
        --deflate-only) args+=(--deflate-only) ;;
        --repeats|--sessions|--secs|--warmup|--hub-subs|--hub-secs|--hub-idle)
            [[ $# -ge 2 ]] || { echo "$1 needs a value" >&2; exit 2; }
            args+=("$1" "$2"); shift ;;
        --workers)
            [[ $# -ge 2 ]] || { echo "$1 needs a value" >&2; exit 2; }
            workers="$2"; shift ;;
        --wsgate)
            [[ $# -ge 2 ]] || { echo "$1 needs a value" >&2; exit 2; }
            wsgate="$(realpath "$2")"; shift ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

dir="$(mktemp -d -t wsgate-compare.XXXXXX)"
runner_pid=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$runner_pid" ]] && kill -0 "$runner_pid" 2>/dev/null; then
        kill -TERM "$runner_pid" 2>/dev/null || true
    fi
    # Every server the runner started is listed here, each the leader of its
    # own process group (nginx's workers are in their master's group).
    if [[ -f "$dir/pids" ]]; then
        while read -r pid; do
            kill -TERM -- "-$pid" 2>/dev/null || true
        done < "$dir/pids"
        sleep 0.5
        while read -r pid; do
            kill -KILL -- "-$pid" 2>/dev/null || true
        done < "$dir/pids"
    fi
    if [[ $status -ne 0 ]]; then
        for log in "$dir"/*.log "$dir"/nginx-*/logs/error.log; do
            [[ -s "$log" ]] || continue
            echo "--- last lines of $log" >&2
            tail -n 5 "$log" >&2
        done
    fi
    rm -rf "$dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Descriptors: as many as the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "descriptor limit: $(ulimit -n)" >&2

# nginx, installed if missing (without leaving the package's own service running).
nginx_bin="$(command -v nginx || true)"
[[ -z "$nginx_bin" && -x /usr/sbin/nginx ]] && nginx_bin=/usr/sbin/nginx
if [[ -z "$nginx_bin" ]]; then
    echo "installing nginx..." >&2
    if [[ "$(id -u)" -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >&2 \
        || "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >&2
    nginx_bin=/usr/sbin/nginx
    # Where the package starts its own service, stop that instance.
    if [[ -s /run/nginx.pid ]]; then
        "${sudo[@]}" kill -QUIT "$(cat /run/nginx.pid)" 2>/dev/null || true
    fi
fi
echo "$("$nginx_bin" -v 2>&1)" >&2

# Builds: the load generator (bench profile = release), then wsgate in
# release last, so target/release/wsgate is built without dev-dependencies.
runner="$(cargo bench --bench compare --no-run --message-format=json \
    | grep -o '"executable":"[^"]*/deps/compare-[^"]*"' | tail -n 1 | sed 's/"executable":"\(.*\)"/\1/')"
[[ -x "$runner" ]] || { echo "could not build the compare bench" >&2; exit 1; }
if [[ -z "$wsgate" ]]; then
    cargo build --release --bin wsgate >&2
    wsgate="$(pwd)/target/release/wsgate"
fi
[[ -x "$wsgate" ]] || { echo "no wsgate binary at $wsgate" >&2; exit 1; }

# The certificate, as users make it.
"$wsgate" gen-cert --host localhost --host 127.0.0.1 --out "$dir" >/dev/null 2>&1
chmod 755 "$dir"   # nginx workers run as an unprivileged user
chmod 644 "$dir"/*.pem

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(uname -r)" >&2
start=$(date +%s)
"$runner" run --wsgate "$wsgate" --nginx "$nginx_bin" --dir "$dir" \
    --workers "$workers" --clk-tck "$(getconf CLK_TCK)" "${args[@]}" &
runner_pid=$!
wait "$runner_pid"
echo "(compare.sh total: $(( $(date +%s) - start )) s after the build)" >&2
