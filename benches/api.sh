#!/usr/bin/env bash
# benches/api.sh: the allocation API's throughput, every allocation durable before its
# answer (the store's group commit, fsync on), one daemon alone in a namespace
# (network-test net-init 1), pool `big` = 10.64.0.0/10 (4 194 304 addresses, blocks of
# 128, spare 65536 so that claiming keeps ahead):
#   1. one-shot `ddhcpctl allocate` calls: ONESHOT sequential, then ONESHOT from 16 at once;
#   2. the pipelined control connection (`{"cmd":"pipeline"}` then JSON lines, through
#      socat): PIPELINED allocations;
#   3. HTTP (`--api`, bearer token), keep-alive, 16 connections (python3 client): HTTP
#      allocations;
#   4. up to MILLION allocations in all (pipelined), then: the daemon's RSS, the store's
#      size, and a kill -9 and restart: time until it answers `allocations` with all of
#      them, and the store's own load time from its log.
# Prints one line per figure.
#
# Usage: sudo benches/api.sh          (release build: cargo build --release)
#
# Environment: ONESHOT (default 500), PIPELINED (default 100000), HTTP (default 20000),
#   MILLION (default 1000000), DDHCPD / DDHCPCTL (default target/release/…).
#
# Safety: only namespaces of a fresh NT_PREFIX made by this script's own net-init are
# used; only PIDs this script started are signalled; "network-test net-stop" removes the
# namespaces on exit, also on failure. The root namespace is not touched; the HTTP API
# listens on 127.0.0.1 inside the daemon's namespace.
set -euo pipefail

SELF=$(readlink -f "$0")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
NT=$ROOT/network-test/network-test
DDHCPD=${DDHCPD:-$ROOT/target/release/ddhcpd}
DDHCPCTL=${DDHCPCTL:-$ROOT/target/release/ddhcpctl}
ONESHOT=${ONESHOT:-500}
PIPELINED=${PIPELINED:-100000}
HTTP=${HTTP:-20000}
MILLION=${MILLION:-1000000}
for b in "$DDHCPD" "$DDHCPCTL"; do
	[[ -x $b ]] || { echo "api.sh: $b is not an executable (cargo build --release)" >&2; exit 1; }
done
for t in socat python3; do
	command -v "$t" >/dev/null || { echo "api.sh: needs $t" >&2; exit 1; }
done
[[ $(id -u) -eq 0 ]] || { echo "api.sh: needs root (network namespaces)" >&2; exit 1; }

STATE=$(mktemp -d /tmp/ddhcp-api-XXXXXX)
export NT_PREFIX=api$$
export NT_STATE_DIR=$STATE/nt
NS=${NT_PREFIX}d0
SOCK=$STATE/ctl.sock
PID=
NET_UP=0

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	stop KILL
	((NET_UP)) && "$NT" net-stop >/dev/null 2>&1
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stops the daemon this script started (its own child only).
stop() { # SIGNAL
	[[ -n $PID ]] || return 0
	if [[ $(awk '{print $4}' "/proc/$PID/stat" 2>/dev/null || true) == "$$" ]]; then
		kill -"$1" "$PID" 2>/dev/null || true
	fi
	wait "$PID" 2>/dev/null || true
	PID=
}

now_ms() { date +%s%3N; }
ctl() { "$DDHCPCTL" -C "$SOCK" "$@"; }

printf 'api-bench-token-%s\n' "$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" >"$STATE/token"
chmod 600 "$STATE/token"
TOKEN=$(<"$STATE/token")
POOL=big=10.64.0.0/10,use=api,block=7,spare=65536
start() {
	# info: the log line "state loaded: … in N ms" is one of the figures.
	RUST_LOG=info "$NT" srv-start 0 "$DDHCPD" -i server0 -L -t 2 --pool "$POOL" -C "$SOCK" \
		--state-dir "$STATE/st" --api 127.0.0.1:18099 --api-token "$STATE/token" \
		>>"$STATE/ddhcpd.log" 2>&1 &
	PID=$!
}

"$NT" net-init 1 >"$STATE/net-init.out"
NET_UP=1
start
t0=$(now_ms)
until ctl status >/dev/null 2>&1; do
	kill -0 "$PID" 2>/dev/null || { echo "api.sh: ddhcpd exited; its log:" >&2; cat "$STATE/ddhcpd.log" >&2; exit 1; }
	sleep 0.01
done
until [[ $(ctl --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["pools"][0]["blocks_owned"])') -ge 512 ]]; do
	sleep 0.1
done
echo "start to 512 blocks (65536 spare addresses) owned: $(($(now_ms) - t0)) ms"

# 1. one-shot calls
t0=$(now_ms)
for ((i = 0; i < ONESHOT; i++)); do ctl allocate --pool big --owner "o$i" >/dev/null; done
t1=$(now_ms)
echo "one-shot ddhcpctl, sequential: $ONESHOT in $((t1 - t0)) ms = $((ONESHOT * 1000 / (t1 - t0 + 1))) allocations/s"
t0=$(now_ms)
seq 0 $((ONESHOT - 1)) | xargs -P 16 -I{} "$DDHCPCTL" -C "$SOCK" allocate --pool big --owner "p{}" >/dev/null
t1=$(now_ms)
echo "one-shot ddhcpctl, 16 at once: $ONESHOT in $((t1 - t0)) ms = $((ONESHOT * 1000 / (t1 - t0 + 1))) allocations/s"

# 2. pipelined
pipeline() { # FIRST COUNT: allocations for owners qFIRST… over one pipelined connection
	awk -v a="$1" -v n="$2" 'BEGIN {
		print "{\"cmd\":\"pipeline\"}"
		for (i = a; i < a + n; i++) printf "{\"cmd\":\"allocate\",\"pool\":\"big\",\"owner\":\"q%d\"}\n", i
	}' | socat -t 600 - "UNIX-CONNECT:$SOCK" | grep -c '"created":true' || true
}
t0=$(now_ms)
ok=$(pipeline 0 "$PIPELINED")
t1=$(now_ms)
echo "pipelined control connection: $ok of $PIPELINED in $((t1 - t0)) ms = $((ok * 1000 / (t1 - t0 + 1))) allocations/s"

# 3. HTTP
cat >"$STATE/api_load.py" <<'EOF'
import http.client, json, sys, threading, time
n, token = int(sys.argv[1]), sys.argv[2]
per, ok, lock = n // 16, [0], threading.Lock()
def run(k):
    c = http.client.HTTPConnection("127.0.0.1", 18099, timeout=30)
    got = 0
    for i in range(per):
        body = json.dumps({"pool": "big", "owner": f"h{k}-{i}"})
        c.request("POST", "/v1/allocate", body, {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status == 200 and json.loads(data).get("created"):
            got += 1
    with lock:
        ok[0] += got
t0 = time.time()
ts = [threading.Thread(target=run, args=(k,)) for k in range(16)]
for t in ts: t.start()
for t in ts: t.join()
dt = time.time() - t0
print(f"HTTP, 16 keep-alive connections: {ok[0]} of {per * 16} in {dt * 1000:.0f} ms = {ok[0] / dt:.0f} allocations/s")
EOF
ip netns exec "$NS" python3 "$STATE/api_load.py" "$HTTP" "$TOKEN"
code=$(ip netns exec "$NS" python3 -c 'import http.client as h; c = h.HTTPConnection("127.0.0.1", 18099); c.request("POST", "/v1/allocate", "{\"pool\":\"big\",\"owner\":\"nobody\"}"); print(c.getresponse().status)')
echo "HTTP without a token: status $code"

# 4. a million
have=$(ctl --json allocations | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["allocations"]))')
if ((have < MILLION)); then
	t0=$(now_ms)
	ok=$(pipeline "$PIPELINED" $((MILLION - have)))
	t1=$(now_ms)
	echo "pipelined, up to $MILLION: $ok more in $((t1 - t0)) ms = $((ok * 1000 / (t1 - t0 + 1))) allocations/s"
fi
t0=$(now_ms)
have=$(ctl --json allocations | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["allocations"]))')
echo "listing all $have allocations (ddhcpctl --json allocations, parsed): $(($(now_ms) - t0)) ms"
rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
echo "allocations held: $have; daemon RSS $((rss / 1024)) MB; store $(du -sm "$STATE/st" | cut -f1) MB on disk"
stop KILL
t0=$(now_ms)
start
until ctl status >/dev/null 2>&1; do sleep 0.01; done
t1=$(now_ms)
after=$(ctl --json allocations | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["allocations"]))')
t2=$(now_ms)
echo "kill -9, restart: answering after $((t1 - t0)) ms, all $after allocations listed after $((t2 - t0)) ms; store load: $(grep -o 'state loaded: .*' "$STATE/ddhcpd.log" | tail -1)"
rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
echo "RSS after the restart: $((rss / 1024)) MB"
stop TERM
echo "(logs in $STATE)"
