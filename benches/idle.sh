#!/usr/bin/env bash
# benches/idle.sh: what an idle daemon costs, ours against the C ddhcpd, same flags
# (-N 10.0.128.0/17 -b 2 -s 4 -L), each alone in the same namespace setup
# (network-test net-init 1), one after the other:
#   RSS and threads IDLE_SETTLE seconds after the start (the issue's 6 s),
#   then over IDLE_SECS seconds: CPU time (utime + stime) and wake-ups
#   (voluntary + involuntary context switches of all threads).
# Prints one row per daemon and the ratios ours / C.
#
# Usage: sudo benches/idle.sh                  (see docs/footprint.md)
#
# Environment:
#   IDLE_SECS     measuring window after the settle time (default 60)
#   IDLE_SETTLE   seconds before RSS is read (default 6)
#   DDHCPD        our daemon (default target/router/ddhcpd if built, else target/release/ddhcpd)
#   C_DDHCPD      the C daemon (default $DDHCP_C_DDHCPD, else target/interop/3eefc27/ddhcpd)
#
# Safety: only namespaces of a fresh NT_PREFIX made by this script's own net-init are
# used; only PIDs this script started are signalled; "network-test net-stop" removes
# the namespaces on exit, also on failure. The root namespace is not touched.
set -euo pipefail

SELF=$(readlink -f "$0")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
NT=$ROOT/network-test/network-test
SECS=${IDLE_SECS:-60}
SETTLE=${IDLE_SETTLE:-6}
if [[ -z ${DDHCPD:-} ]]; then
	DDHCPD=$ROOT/target/router/ddhcpd
	[[ -x $DDHCPD ]] || DDHCPD=$ROOT/target/release/ddhcpd
fi
C_DDHCPD=${C_DDHCPD:-${DDHCP_C_DDHCPD:-$ROOT/target/interop/3eefc27/ddhcpd}}
for b in "$DDHCPD" "$C_DDHCPD"; do
	[[ -x $b ]] || { echo "idle.sh: $b is not an executable (build it first)" >&2; exit 1; }
done
[[ $(id -u) -eq 0 ]] || { echo "idle.sh: needs root (network namespaces)" >&2; exit 1; }

STATE=$(mktemp -d /tmp/ddhcp-idle-XXXXXX)
export NT_PREFIX=idle$$
export NT_STATE_DIR=$STATE/nt
HZ=$(getconf CLK_TCK)
PID=
NET_UP=0

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	stop
	((NET_UP)) && "$NT" net-stop >/dev/null 2>&1
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stops the daemon this script started (its own child only), SIGKILL after 5 s.
stop() {
	[[ -n $PID ]] || return 0
	if [[ $(awk '{print $4}' "/proc/$PID/stat" 2>/dev/null || true) == "$$" ]]; then
		kill -TERM "$PID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$PID" 2>/dev/null || true
	fi
	wait "$PID" 2>/dev/null || true
	PID=
}

ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
switches() { # all threads
	cat /proc/"$1"/task/*/status | awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {s += $2} END {print s}'
}
status() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# measure NAME CMD...: writes "NAME rss_kb threads cpu_ms wakeups_per_s" to $STATE/NAME.row
# (in this shell, not a subshell, so that the cleanup knows the daemon's PID)
measure() {
	local name=$1
	shift
	"$NT" srv-start 0 "$@" >"$STATE/$name.log" 2>&1 &
	PID=$!
	sleep "$SETTLE"
	kill -0 "$PID" 2>/dev/null || { echo "idle.sh: $name exited; log:" >&2; cat "$STATE/$name.log" >&2; exit 1; }
	local rss threads t0 s0 t1 s1
	rss=$(status "$PID" VmRSS)
	threads=$(status "$PID" Threads)
	t0=$(ticks "$PID")
	s0=$(switches "$PID")
	sleep "$SECS"
	t1=$(ticks "$PID")
	s1=$(switches "$PID")
	stop
	echo "$name $rss $threads $(((t1 - t0) * 1000 / HZ)) $(awk -v a="$s0" -v b="$s1" -v s="$SECS" 'BEGIN {printf "%.2f", (b - a) / s}')" >"$STATE/$name.row"
}

"$NT" net-init 1 >"$STATE/net-init.out"
NET_UP=1
FLAGS=(-i server0 -c client0 -N 10.0.128.0/17 -b 2 -s 4 -L)
measure ddhcpd "$DDHCPD" "${FLAGS[@]}" -C "$STATE/ours.sock" --state-dir "$STATE/ours-state"
measure c-ddhcpd "$C_DDHCPD" -D "${FLAGS[@]}" -C "$STATE/c.sock"
ours=$(<"$STATE/ddhcpd.row")
c=$(<"$STATE/c-ddhcpd.row")

printf '%-10s %10s %8s %14s %12s\n' daemon "RSS (kB)" threads "CPU in ${SECS}s" "wake-ups/s"
for row in "$ours" "$c"; do
	read -r n r t cpu w <<<"$row"
	printf '%-10s %10s %8s %11s ms %12s\n' "$n" "$r" "$t" "$cpu" "$w"
done
read -r _ r1 _ c1 w1 <<<"$ours"
read -r _ r2 _ c2 w2 <<<"$c"
awk -v r1="$r1" -v r2="$r2" -v c1="$c1" -v c2="$c2" -v w1="$w1" -v w2="$w2" 'BEGIN {
	printf "ratios ours/C: RSS %.2f, CPU %s, wake-ups %s\n", r1 / r2,
		(c2 > 0 ? sprintf("%.2f", c1 / c2) : "n/a (C used 0 ms)"),
		(w2 > 0 ? sprintf("%.2f", w1 / w2) : "n/a")
}'
echo "($DDHCPD vs $C_DDHCPD; logs in $STATE)"
