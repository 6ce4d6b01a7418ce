#!/usr/bin/env bash
# benches/replica_lag.sh: how far replica holders fall behind under DHCP load.
#
# Three ddhcpd nodes on one server link (network-test net-init 3, --replicas 2: each
# holds every block of the others); perfdhcp drives node 0 as a relay (giaddr 10.0.0.2)
# at each rate for BENCH_SECS seconds, every ACK synced to node 0's store. Node 0's
# `ddhcpctl metrics` are sampled every 200 ms: the worst ddhcp_replica_lag_milliseconds
# and ddhcp_replica_lag_records over both holders and the whole step, with the
# replication bytes per change. Prints one line per rate.
#
# Usage: sudo benches/replica_lag.sh
# Environment: BENCH_SECS (default 10), BENCH_RATES (default "500 1000 2000 4000"),
#   DDHCPD, DDHCPCTL (default target/release/ddhcpd, ddhcpctl).
#
# Safety: a fresh NT_PREFIX of this script's own net-init; only PIDs this script started
# are signalled; "network-test net-stop" removes the namespaces on exit.
set -euo pipefail

SELF=$(readlink -f "$0")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
NT=$ROOT/network-test/network-test
DDHCPD=${DDHCPD:-$ROOT/target/release/ddhcpd}
DDHCPCTL=${DDHCPCTL:-$ROOT/target/release/ddhcpctl}
SECS=${BENCH_SECS:-10}
RATES=${BENCH_RATES:-"500 1000 2000 4000"}

die() { echo "replica_lag.sh: error: $*" >&2; exit 2; }
[[ $(id -u) == 0 ]] || die "must run as root"
[[ -x $DDHCPD && -x $DDHCPCTL ]] || die "$DDHCPD or $DDHCPCTL missing (cargo build --release)"
command -v perfdhcp >/dev/null || die "perfdhcp not found (apt-get install kea-admin)"
[[ $SECS =~ ^[0-9]+$ ]] && ((SECS >= 3)) || die "BENCH_SECS must be an integer >= 3"

STATE=$(mktemp -d /tmp/ddhcp-lag-XXXXXX)
export NT_PREFIX=lbench$$
export NT_STATE_DIR=$STATE/nt
CNS=${NT_PREFIX}c0
declare -a STARTED=()
NET_UP=0

cleanup() {
	local rc=$? p
	trap - EXIT INT TERM
	set +e
	for p in "${STARTED[@]}"; do
		if [[ -e /proc/$p ]] && [[ $(awk '{print $4}' "/proc/$p/stat" 2>/dev/null) == "$$" ]]; then
			kill -TERM "$p" 2>/dev/null
			wait "$p" 2>/dev/null
		fi
	done
	((NET_UP)) && "$NT" net-stop >/dev/null 2>&1
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

NET_UP=1
"$NT" net-init 3 >"$STATE/net-init.out"
ip -n "$CNS" addr add 10.0.0.2/16 dev eth0

# Sums of the metric's series on node 0 (max over series for the lag gauges).
metric_max() { # NAME
	"$DDHCPCTL" -C "$STATE/ctl0.sock" metrics 2>/dev/null |
		awk -v n="$1" 'index($0, n "{") == 1 || $1 == n { if ($NF + 0 > m) m = $NF + 0 } END { print m + 0 }'
}

for rate in $RATES; do
	# Node 0 gets all the load: it claims room for the whole step ahead, so it does not
	# claim while driven; the others keep two blocks.
	spare0=$((rate * SECS * 11 / 10 + 256))
	for i in 0 1 2; do
		rm -rf "$STATE/state$i"
		spare=256
		((i == 0)) && spare=$spare0
		"$NT" srv-start "$i" "$DDHCPD" -i server0 -c client0 -N 10.64.0.0/10 -b 7 -t 2 -B 30 -L \
			-s "$spare" --replicas 2 -C "$STATE/ctl$i.sock" \
			--state-dir "$STATE/state$i" </dev/null >"$STATE/ddhcpd$i-$rate.log" 2>&1 &
		STARTED+=("$!")
	done
	# Wait until node 0 owns its spare and every node sees the other two.
	for ((t = 0; t < 240; t++)); do
		ok=1
		for i in 0 1 2; do
			js=$("$DDHCPCTL" -C "$STATE/ctl$i.sock" --json status 2>/dev/null) || { ok=0; break; }
			peers=$(sed -n 's/.*"peers":\([0-9]*\).*/\1/p' <<<"$js")
			owned=$(sed -n 's/^{.*"blocks_owned":\([0-9]*\).*/\1/p' <<<"$js" | head -n1)
			[[ ${peers:-0} -ge 2 ]] || ok=0
			((i == 0 && ${owned:-0} < spare0 * 95 / 100 / 128)) && ok=0
		done
		((ok)) && break
		sleep 0.5
	done
	sleep 3
	bytes0=$(metric_max ddhcp_replica_bytes_sent_total)
	recs0=$(metric_max ddhcp_replica_records_sent_total)
	ip netns exec "$CNS" perfdhcp -4 -l eth0 -r "$rate" -p "$SECS" -d 1 -W 1000000 10.0.0.1 \
		</dev/null >"$STATE/perfdhcp-$rate.out" 2>&1 &
	perf=$!
	STARTED+=("$perf")
	worst_ms=0 worst_rec=0
	while kill -0 "$perf" 2>/dev/null; do
		ms=$(metric_max ddhcp_replica_lag_milliseconds)
		rec=$(metric_max ddhcp_replica_lag_records)
		((ms > worst_ms)) && worst_ms=$ms
		((rec > worst_rec)) && worst_rec=$rec
		sleep 0.2
	done
	wait "$perf" || true
	sleep 1
	bytes=$(($(metric_max ddhcp_replica_bytes_sent_total) - bytes0))
	recs=$(($(metric_max ddhcp_replica_records_sent_total) - recs0))
	acks=$(awk '/^Rate:/ {print; exit}' "$STATE/perfdhcp-$rate.out")
	drops=$(awk '/^drops:/ {printf "%s ", $0}' "$STATE/perfdhcp-$rate.out")
	echo "rate $rate/s for $SECS s: worst replica lag ${worst_ms} ms, ${worst_rec} records; $recs changes replicated, $(awk -v b="$bytes" -v r="$recs" 'BEGIN { printf "%.1f", r ? b / r : 0 }') B per change and holder; perfdhcp ${acks:-?} ${drops}"
	for p in "${STARTED[@]}"; do
		[[ -e /proc/$p ]] && kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null
	done
	STARTED=()
done
