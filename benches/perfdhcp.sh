#!/usr/bin/env bash
# benches/perfdhcp.sh: DHCPv4 throughput of ddhcpd and of ISC Kea (kea-dhcp4),
# measured with Kea's perfdhcp in the project's namespace harness.
#
# Each server runs by itself, one after the other, in the same namespace
# setup (network-test net-init 1).  perfdhcp runs in the client namespace
# as a relay (giaddr 10.0.0.2) and drives full DORA exchanges from distinct
# clients at rising rates.  Every step restarts the server with an empty
# lease database.  A server's series stops after the first step with >= 1 %
# drops.  Prints, per server, the highest rate with < 1 % drops, the CPU use
# of the server and of perfdhcp, and the ratio ddhcpd / Kea.
#
# Usage: sudo benches/perfdhcp.sh            (see docs/benchmarks.md)
#
# Environment:
#   BENCH_SECS        seconds per step (default 10)
#   BENCH_RATES       rates to try, 4-way exchanges per second, ascending
#                     (default "1000 2000 4000 5000 6000 8000 10000 12000 16000 24000 32000 48000")
#   BENCH_US_AT       the rate at which the summary compares server CPU per
#                     exchange, ours / Kea (default 5000; must be in BENCH_RATES)
#   BENCH_SERVERS     which series to run, in order (default
#                     "ddhcpd ddhcpd-auto ddhcpd-nosync kea kea-mt ddhcpd-direct
#                     kea-direct"): ddhcpd = -s
#                     BENCH_DDHCPD_SPARE, ddhcpd-auto = -s sized to the whole step
#                     (110 % of rate x BENCH_SECS, so it never claims while driven),
#                     ddhcpd-nosync = ddhcpd-auto with --fsync off (leases written,
#                     not synced), kea = single-threaded Kea, kea-mt = Kea with 2
#                     threads; ddhcpd-direct and kea-direct: the same as
#                     ddhcpd-auto and kea, but perfdhcp is a client straight on the
#                     client link (broadcast DISCOVER/REQUEST, broadcast flag set,
#                     no relay), as a mesh node's clients are, and Kea uses raw
#                     sockets (dhcp-socket-type raw, as it ships for direct
#                     clients).  Every server keeps its leases on the disk under
#                     BENCH_STATE_DIR (ddhcpd syncs each batch before replying, Kea's
#                     memfile appends without a sync).
#   BENCH_ALLOW_FAIL  1: exit 0 even if a server gave no usable step
#                     (e.g. ddhcpd without a DHCP service yet)
#   BENCH_DROP_PCT    drop threshold in percent (default 1)
#   BENCH_CLIENTS     perfdhcp -R, number of distinct clients (default 4294967295)
#   BENCH_DDHCPD_SPARE  ddhcpd -s of the "ddhcpd" series, free addresses it
#                     claims ahead (default 20000, i.e. ~157 blocks of 128;
#                     "auto" as for ddhcpd-auto)
#   BENCH_MIN_BLOCKS  blocks ddhcpd must own before it is driven (default
#                     150 with -s 20000; 95 % of spare/128 otherwise)
#   BENCH_BLOCK_WAIT  seconds to wait for those blocks (default 60, longer
#                     for big "auto" spares)
#   BENCH_KEA_SOCKET  Kea dhcp-socket-type, udp or raw (default udp)
#   BENCH_QUIET_WAIT  before each step, wait up to this many seconds for the
#                     machine to be quiet (default 0: do not wait); for shared
#                     machines where others compile or run tests
#   BENCH_QUIET_PCT   "quiet" = machine CPU busy below this, in % where
#                     100 % = one core (default 50)
#   BENCH_STATE_DIR   where configs, logs and perfdhcp outputs go (kept;
#                     default /tmp/ddhcp-bench-<date>)
#   BENCH_KEEP_LEASES 1: keep Kea's lease files (can be tens of MB per step)
#   DDHCPD, DDHCPCTL  binaries (default target/release/ddhcpd, ddhcpctl)
#
# Safety: only namespaces of a fresh, unique NT_PREFIX made by this script's
# own net-init are used; on exit only PIDs this script started are signalled,
# then "network-test net-stop" removes the namespaces.  The root namespace is
# not touched.
set -euo pipefail

SELF=$(readlink -f "$0")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
NT=$ROOT/network-test/network-test
DDHCPD=${DDHCPD:-$ROOT/target/release/ddhcpd}
DDHCPCTL=${DDHCPCTL:-$ROOT/target/release/ddhcpctl}

SECS=${BENCH_SECS:-10}
RATES=${BENCH_RATES:-"1000 2000 4000 5000 6000 8000 10000 12000 16000 24000 32000 48000"}
# the rate at which the summary compares server CPU per exchange
US_AT=${BENCH_US_AT:-5000}
SERVERS=${BENCH_SERVERS:-"ddhcpd ddhcpd-auto ddhcpd-nosync kea kea-mt ddhcpd-direct kea-direct"}
ALLOW_FAIL=${BENCH_ALLOW_FAIL:-0}
DROP_LIMIT=${BENCH_DROP_PCT:-1}
CLIENTS=${BENCH_CLIENTS:-4294967295}
DD_SPARE=${BENCH_DDHCPD_SPARE:-20000}
DD_BLOCK=128 # -b 7
MIN_BLOCKS_ENV=${BENCH_MIN_BLOCKS:-}
BLOCK_WAIT_ENV=${BENCH_BLOCK_WAIT:-}
KEA_SOCKET=${BENCH_KEA_SOCKET:-udp}
KEEP_LEASES=${BENCH_KEEP_LEASES:-0}
QUIET_WAIT=${BENCH_QUIET_WAIT:-0}
QUIET_PCT=${BENCH_QUIET_PCT:-50}
STAMP=$(date +%Y%m%d-%H%M%S)
STATE=${BENCH_STATE_DIR:-/tmp/ddhcp-bench-$STAMP}

# perfdhcp: a request unanswered after DROP_TIME s is a drop; after the test
# period it keeps receiving (and answering OFFERs with REQUESTs) for
# EXIT_WAIT_US, so exchanges in flight at the end are not counted as drops.
DROP_TIME=1
EXIT_WAIT_US=1000000
SERVER_ADDR=10.0.0.1
CLIENT_ADDR=10.0.0.2/16

die() { echo "perfdhcp.sh: error: $*" >&2; exit 2; }
log() { echo "[$(date +%T)] $*" >&2; }

# ------------------------------------------------------------ arguments ---

[[ $# == 0 ]] || die "no arguments expected (configure with BENCH_* variables; see the header of $SELF)"
[[ $(id -u) == 0 ]] || die "must run as root (sudo $0)"
if ! [[ $SECS =~ ^[0-9]+$ ]] || ((SECS < 3)); then
	die "BENCH_SECS must be an integer >= 3"
fi
for r in $RATES; do
	[[ $r =~ ^[1-9][0-9]*$ ]] || die "BENCH_RATES: '$r' is not a positive integer"
done
[[ -n ${RATES// /} ]] || die "BENCH_RATES is empty"
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || die "BENCH_CLIENTS must be a positive integer"
[[ $DD_SPARE == auto || $DD_SPARE =~ ^[1-9][0-9]*$ ]] || die "BENCH_DDHCPD_SPARE must be a positive integer or auto"
[[ -z $MIN_BLOCKS_ENV || $MIN_BLOCKS_ENV =~ ^[0-9]+$ ]] || die "BENCH_MIN_BLOCKS must be an integer"
[[ -z $BLOCK_WAIT_ENV || $BLOCK_WAIT_ENV =~ ^[1-9][0-9]*$ ]] || die "BENCH_BLOCK_WAIT must be a positive integer"
[[ $QUIET_WAIT =~ ^[0-9]+$ ]] || die "BENCH_QUIET_WAIT must be a number of seconds"
[[ $QUIET_PCT =~ ^[0-9]+$ ]] || die "BENCH_QUIET_PCT must be an integer percentage"
[[ $DROP_LIMIT =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BENCH_DROP_PCT must be a number"
[[ $KEA_SOCKET == udp || $KEA_SOCKET == raw ]] || die "BENCH_KEA_SOCKET must be udp or raw"
for s in $SERVERS; do
	case $s in
	ddhcpd | ddhcpd-auto | ddhcpd-nosync | kea | kea-mt | ddhcpd-direct | kea-direct) ;;
	*) die "BENCH_SERVERS: unknown server '$s' (ddhcpd, ddhcpd-auto, ddhcpd-nosync, kea, kea-mt, ddhcpd-direct, kea-direct)" ;;
	esac
done
[[ -x $NT ]] || die "$NT not found"
for t in ip perfdhcp awk; do
	command -v "$t" >/dev/null || die "'$t' not found (perfdhcp: apt-get install kea-admin)"
done
[[ $STATE == /* ]] || STATE="$PWD/$STATE"
if [[ -e $STATE ]] && [[ -n $(ls -A "$STATE" 2>/dev/null) ]]; then
	die "$STATE exists and is not empty"
fi
mkdir -p "$STATE"

# A fresh namespace prefix; refuse to reuse anything that exists.
export NT_PREFIX=pbench$$
export NT_STATE_DIR=$STATE/nt
P=$NT_PREFIX
DNS=${P}d0
CNS=${P}c0
if ip netns list | awk '{print $1}' | grep -qE "^${P}(hub|[dc][0-9]+)\$"; then
	die "namespaces with prefix $P already exist"
fi

HZ=$(getconf CLK_TCK)
NCPU=$(nproc)

# ------------------------------------------------------ process helpers ---

# PIDs started by this script (servers, perfdhcp), for the cleanup.
declare -a STARTED=()
NET_UP=0

pid_alive() {
	local st
	[[ $1 =~ ^[0-9]+$ ]] || return 1
	st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
	[[ -n $st && $st != Z && $st != X ]]
}

# True if PID is a live, not yet reaped child of this script.  A PID is only
# ever signalled if this holds, so a recycled PID is never hit.
our_child() {
	local ppid
	pid_alive "$1" || return 1
	ppid=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f2) || return 1
	[[ $ppid == "$$" ]]
}

# Stops one PID this script started: SIGTERM, SIGKILL after 5 s; reaps it.
stop_pid() {
	local p=$1 t
	our_child "$p" || { wait "$p" 2>/dev/null || true; return 0; }
	kill -TERM "$p" 2>/dev/null || true
	for ((t = 0; t < 50; t++)); do
		pid_alive "$p" || break
		sleep 0.1
	done
	if pid_alive "$p"; then
		log "pid $p ignored SIGTERM, sending SIGKILL"
		kill -KILL "$p" 2>/dev/null || true
	fi
	wait "$p" 2>/dev/null || true
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
	local rc=$? p
	trap - EXIT INT TERM
	set +e
	for p in "${STARTED[@]}"; do
		our_child "$p" && stop_pid "$p"
	done
	if ((NET_UP)); then
		[[ -e /run/netns/$CNS ]] && ip -n "$CNS" addr del "$CLIENT_ADDR" dev eth0 2>/dev/null
		"$NT" net-stop
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# utime+stime of a process (all threads), in clock ticks; empty if gone.
proc_ticks() {
	local s
	s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 0
	awk '{print $12 + $13}' <<<"$s"
}

# Nanoseconds the threads of a process spent runnable but waiting for a CPU
# (sum of /proc/PID/task/*/schedstat field 2); empty if gone.
proc_wait() {
	pid_alive "$1" || return 0
	cat "/proc/$1/task/"*/schedstat 2>/dev/null | awk '{ s += $2 } END { printf "%.0f\n", s }'
}

# "busy total" jiffies of the whole machine (all CPUs).
sys_ticks() {
	awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit}' /proc/stat
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# Machine CPU busy over the next SECS seconds, in % (100 % = one core).
busy_pct() { # SECS
	local b0 t0 b1 t1
	read -r b0 t0 < <(sys_ticks)
	sleep "$1"
	read -r b1 t1 < <(sys_ticks)
	awk -v b0="$b0" -v b1="$b1" -v t0="$t0" -v t1="$t1" -v n="$NCPU" \
		'BEGIN { printf "%.0f", (t1 > t0 ? (b1 - b0) / (t1 - t0) * 100 * n : 0) }'
}

# With BENCH_QUIET_WAIT: waits until the machine is quiet (or gives up).
wait_quiet() {
	((QUIET_WAIT > 0)) || return 0
	local start=$SECONDS b
	while :; do
		b=$(busy_pct 2)
		((b < QUIET_PCT)) && return 0
		if ((SECONDS - start >= QUIET_WAIT)); then
			log "  machine still $b % busy (of $((NCPU * 100)) %) after $QUIET_WAIT s; going on"
			return 0
		fi
		log "  machine $b % busy (of $((NCPU * 100)) %), waiting for it to calm down"
		sleep 3
	done
}

now() { echo "$EPOCHREALTIME"; }

# ---------------------------------------------------------------- servers ---

SERVER_PID=""

write_kea_conf() { # DIR MT(0|1) SOCKET
	local d=$1 mt=$2 sock=$3 mtconf=""
	if ((mt)); then
		mtconf='"multi-threading": {"enable-multi-threading": true, "thread-pool-size": 2, "packet-queue-size": 64},'
	else
		mtconf='"multi-threading": {"enable-multi-threading": false},'
	fi
	cat >"$d/kea.json" <<EOF
{
  "Dhcp4": {
    "interfaces-config": { "interfaces": [ "client0" ], "dhcp-socket-type": "$sock" },
    "lease-database": {
      "type": "memfile", "persist": true,
      "name": "$d/kea-leases4.csv", "lfc-interval": 0
    },
    "control-socket": { "socket-type": "unix", "socket-name": "$d/kea4-ctrl.sock" },
    $mtconf
    "valid-lifetime": 300,
    "subnet4": [
      {
        "id": 1,
        "subnet": "10.0.0.0/8",
        "pools": [ { "pool": "10.64.0.0 - 10.127.255.255" } ]
      }
    ],
    "loggers": [
      {
        "name": "kea-dhcp4",
        "output_options": [ { "output": "$d/kea.log" } ],
        "severity": "WARN"
      }
    ]
  }
}
EOF
}

# ddhcpd's claim-ahead for a step at RATE: sets SPARE, MIN_BLOCKS, BLOCK_WAIT.
ddhcpd_sizing() { # SERIES RATE
	if [[ $DD_SPARE == auto || $1 == ddhcpd-auto || $1 == ddhcpd-nosync || $1 == ddhcpd-direct ]]; then
		SPARE=$(($2 * SECS * 11 / 10))
		((SPARE >= 20000)) || SPARE=20000
	else
		SPARE=$DD_SPARE
	fi
	if [[ -n $MIN_BLOCKS_ENV ]]; then
		MIN_BLOCKS=$MIN_BLOCKS_ENV
	elif ((SPARE == 20000)); then
		MIN_BLOCKS=150
	else
		MIN_BLOCKS=$((SPARE * 95 / 100 / DD_BLOCK))
	fi
	# claim-ahead gets about 85 blocks a second here (255 per ~3 s round); margin
	BLOCK_WAIT=${BLOCK_WAIT_ENV:-$((MIN_BLOCKS / 20 > 60 ? MIN_BLOCKS / 20 : 60))}
}

# Starts the server of series $1 for rate $3 with its files in $2; sets SERVER_PID.
start_server() { # SERIES DIR RATE
	local series=$1 d=$2 rate=$3 mt=0 t comm want
	case $series in
	kea | kea-mt | kea-direct)
		[[ $series == kea-mt ]] && mt=1
		local sock=$KEA_SOCKET
		[[ $series == kea-direct ]] && sock=raw
		write_kea_conf "$d" "$mt" "$sock"
		KEA_PIDFILE_DIR=$d KEA_LOCKFILE_DIR=$d \
			ip netns exec "$DNS" kea-dhcp4 -c "$d/kea.json" </dev/null >"$d/kea.out" 2>&1 &
		SERVER_PID=$!
		want=kea-dhcp4
		;;
	ddhcpd | ddhcpd-auto | ddhcpd-nosync | ddhcpd-direct)
		ddhcpd_sizing "$series" "$rate"
		local fsync=on
		[[ $series == ddhcpd-nosync ]] && fsync=off
		"$NT" srv-start 0 "$DDHCPD" -i server0 -c client0 -N 10.64.0.0/10 -b 7 -t 2 -B 30 -L -s "$SPARE" \
			-C "$d/ctl.sock" --state-dir "$d/state" --fsync "$fsync" </dev/null >"$d/ddhcpd.log" 2>&1 &
		SERVER_PID=$!
		want=ddhcpd
		;;
	esac
	STARTED+=("$SERVER_PID")
	echo "$SERVER_PID" >"$d/server.pid"
	# wait for the exec chain (network-test, ip netns exec) to reach the server
	for ((t = 0; t < 50; t++)); do
		comm=$(cat "/proc/$SERVER_PID/comm" 2>/dev/null) || break
		[[ $comm == "$want" ]] && return 0
		sleep 0.1
	done
	pid_alive "$SERVER_PID" || return 1
	log "warning: pid $SERVER_PID is '$comm', not $want"
}

# ddhcpd: waits until it owns MIN_BLOCKS blocks (ddhcpctl status).
wait_blocks() { # DIR
	local d=$1 t n=0 js
	for ((t = 0; t < BLOCK_WAIT * 2; t++)); do
		pid_alive "$SERVER_PID" || return 1
		if js=$("$DDHCPCTL" -C "$d/ctl.sock" --json status 2>/dev/null); then
			n=$(sed -n 's/.*"blocks_owned":\([0-9]*\).*/\1/p' <<<"$js")
			n=${n:-0}
			if ((n >= MIN_BLOCKS)); then
				echo "$js" >"$d/status-before.json"
				log "  ddhcpd owns $n blocks after $((t / 2)) s"
				return 0
			fi
		fi
		sleep 0.5
	done
	log "  warning: ddhcpd owns only $n blocks after $BLOCK_WAIT s (wanted $MIN_BLOCKS); driving it anyway"
	echo "$n" >"$d/blocks-timeout"
	return 0
}

# perfdhcp's mode for a series: relay (unicast to the server, giaddr = its own address)
# or, for the -direct series, a client on the link (broadcast, broadcast flag).
perf_target() { # SERIES
	if [[ $1 == *-direct ]]; then
		echo -B
	else
		echo "$SERVER_ADDR"
	fi
}

# A short perfdhcp run (10/s for 1 s); true if any exchange completed.
probe() { # DIR SERIES
	local out=$1/probe.out p
	# shellcheck disable=SC2046 # perf_target is one word
	ip netns exec "$CNS" perfdhcp -4 -l eth0 -r 10 -R "$CLIENTS" -p 1 -d "$DROP_TIME" \
		-W 300000 $(perf_target "$2") </dev/null >"$out" 2>&1 &
	p=$!
	STARTED+=("$p")
	if ! timeout_wait "$p" 15; then
		stop_pid "$p"
		return 1
	fi
	local ra_rcvd
	read -r _ _ _ ra_rcvd _ < <(parse_perfdhcp "$out")
	((ra_rcvd > 0))
}

# Waits up to SECS seconds for child PID to exit and reaps it (its exit
# status goes to WAIT_RC); false on timeout.
WAIT_RC=0
timeout_wait() { # PID SECS
	local t
	for ((t = 0; t < $2 * 10; t++)); do
		if ! pid_alive "$1"; then
			WAIT_RC=0
			wait "$1" 2>/dev/null || WAIT_RC=$?
			return 0
		fi
		sleep 0.1
	done
	return 1
}

wait_ready() { # SERIES DIR
	local series=$1 d=$2 t
	if [[ $series == ddhcpd* ]]; then
		wait_blocks "$d" || return 1
	fi
	for ((t = 0; t < 5; t++)); do
		pid_alive "$SERVER_PID" || return 1
		probe "$d" "$series" && return 0
		sleep 0.5
	done
	log "  warning: $series did not answer a 10/s probe; driving it anyway"
	return 0
}

stop_server() { # DIR
	local d=$1
	[[ -n $SERVER_PID ]] || return 0
	stop_pid "$SERVER_PID"
	SERVER_PID=""
	if [[ -f $d/kea-leases4.csv ]]; then
		# evidence of persistence: number of lease lines Kea wrote
		wc -l <"$d/kea-leases4.csv" >"$d/lease-file-lines"
		((KEEP_LEASES)) || rm -f "$d"/kea-leases4.csv*
	fi
}

# ddhcpd after a step: saves status and stats; notes the claim-ahead picture
# (blocks before -> after, leases handed out, leases the step needed).
ddhcpd_after() { # DIR RATE
	local d=$1 rate=$2 b0 b1 l1
	"$DDHCPCTL" -C "$d/ctl.sock" --json status >"$d/status-after.json" 2>/dev/null || true
	"$DDHCPCTL" -C "$d/ctl.sock" --json stats >"$d/stats-after.json" 2>/dev/null || true
	b0=$(sed -n 's/.*"blocks_owned":\([0-9]*\).*/\1/p' "$d/status-before.json" 2>/dev/null)
	b1=$(sed -n 's/.*"blocks_owned":\([0-9]*\).*/\1/p' "$d/status-after.json" 2>/dev/null)
	l1=$(sed -n 's/.*"leases_active":\([0-9]*\).*/\1/p' "$d/status-after.json" 2>/dev/null)
	R_NOTE="${R_NOTE:+$R_NOTE; }-s $SPARE, blocks ${b0:-?}->${b1:-?}, leases ${l1:-?}"
	if ((rate * SECS > ${b0:-0} * DD_BLOCK)); then
		R_NOTE="$R_NOTE, step needs $((rate * SECS)) > $((${b0:-0} * DD_BLOCK)) pre-claimed"
	fi
}

# --------------------------------------------------------------- perfdhcp ---

# % of wall time from two nanosecond counts taken at times T0 and T1.
wait_pct() { # NS0 NS1 T0 T1
	if [[ -n $1 && -n $2 ]]; then
		awk -v a="$1" -v b="$2" -v t0="$3" -v t1="$4" 'BEGIN { printf "%.0f", (b - a) / 1e9 / (t1 - t0) * 100 }'
	else
		echo n/a
	fi
}

# CPU % (100 = one core) from two tick counts taken at times T0 and T1.
cpu_pct() { # TICKS0 TICKS1 T0 T1
	if [[ -n $1 && -n $2 ]]; then
		awk -v a="$1" -v b="$2" -v t0="$3" -v t1="$4" -v hz="$HZ" \
			'BEGIN { printf "%.0f", (b - a) / hz / (t1 - t0) * 100 }'
	else
		echo n/a
	fi
}

# Prints "DO_sent DO_rcvd RA_sent RA_rcvd DO_orphans RA_orphans".
parse_perfdhcp() { # FILE
	awk '
		/Statistics for: DISCOVER-OFFER/ { s = "do" }
		/Statistics for: REQUEST-ACK/ { s = "ra" }
		s != "" && /^sent packets:/ { sent[s] = $3 }
		s != "" && /^received packets:/ { rcvd[s] = $3 }
		s != "" && /^orphans:/ { orph[s] = $2 }
		END {
			printf "%d %d %d %d %d %d\n", sent["do"], rcvd["do"], sent["ra"], rcvd["ra"], orph["do"], orph["ra"]
		}' "$1"
}

# Results of the last step (set by run_step).
R_DO_SENT=0 R_DO_RCVD=0 R_RA_SENT=0 R_RA_RCVD=0 R_DROP=100 R_SRV_CPU=n/a R_PERF_CPU=n/a
R_SYS=n/a R_OTHER=n/a R_OFFERED=0 R_OK=0 R_GEN_LIMITED=0 R_NOTE="" R_SRV_WAIT=n/a R_PERF_WAIT=n/a R_US=n/a

# Runs one step of series $1 at rate $2; fills R_*; appends to the step table.
run_step() { # SERIES RATE
	local series=$1 rate=$2 d="$STATE/$1/r$2" perf t0 pt0 st0 pw0 sw0 sb0 stt0 t1 pt1 st1 pw1 sw1 sb1 stt1
	mkdir -p "$d"
	R_NOTE=""
	wait_quiet
	log "$series @ $rate/s: starting server"
	if ! start_server "$series" "$d" "$rate" || ! wait_ready "$series" "$d"; then
		R_DO_SENT=0 R_DO_RCVD=0 R_RA_SENT=0 R_RA_RCVD=0 R_DROP=100 R_OK=0
		R_SRV_CPU=n/a R_PERF_CPU=n/a R_SYS=n/a R_OTHER=n/a R_OFFERED=0 R_GEN_LIMITED=0
		R_SRV_WAIT=n/a R_PERF_WAIT=n/a R_US=n/a
		R_NOTE="server did not start (see $d)"
		log "  $series did not start or died; last lines of its output:"
		tail -n 5 "$d"/*.log "$d"/*.out 2>/dev/null >&2 || true
		stop_server "$d"
		printf '| %s | %s | - | - | - | - | - | - | - | - | - | %s | %s |\n' \
			"$series" "$rate" "$(loadavg)" "$R_NOTE" >>"$STATE/steps.md"
		return 0
	fi
	cp /proc/loadavg "$d/loadavg-before"

	log "  perfdhcp -r $rate for $SECS s"
	# shellcheck disable=SC2046 # perf_target is one word
	ip netns exec "$CNS" perfdhcp -4 -l eth0 -r "$rate" -R "$CLIENTS" -p "$SECS" -d "$DROP_TIME" \
		-W "$EXIT_WAIT_US" $(perf_target "$series") </dev/null >"$d/perfdhcp.out" 2>&1 &
	perf=$!
	STARTED+=("$perf")
	echo "$perf" >"$d/perfdhcp.pid"

	# CPU window: from 1 s after the start to the end of the sending period.
	sleep 1
	t0=$(now)
	pt0=$(proc_ticks "$perf")
	st0=$(proc_ticks "$SERVER_PID")
	pw0=$(proc_wait "$perf")
	sw0=$(proc_wait "$SERVER_PID")
	read -r sb0 stt0 < <(sys_ticks)
	# (sleep in the background: wait returns at once on SIGTERM/SIGINT)
	sleep "$((SECS - 1))" &
	STARTED+=("$!")
	wait "$!" || true
	t1=$(now)
	pt1=$(proc_ticks "$perf")
	st1=$(proc_ticks "$SERVER_PID")
	pw1=$(proc_wait "$perf")
	sw1=$(proc_wait "$SERVER_PID")
	read -r sb1 stt1 < <(sys_ticks)
	cp /proc/loadavg "$d/loadavg-after"

	if timeout_wait "$perf" $((SECS + 30)); then
		echo "$WAIT_RC" >"$d/perfdhcp.rc"
	else
		log "  perfdhcp did not finish, stopping it"
		stop_pid "$perf"
		R_NOTE="perfdhcp hung"
	fi
	pid_alive "$SERVER_PID" || R_NOTE="${R_NOTE:+$R_NOTE; }server died during the step"
	if [[ $series == ddhcpd* ]]; then
		ddhcpd_after "$d" "$rate"
	fi
	stop_server "$d"
	if [[ -f $d/lease-file-lines ]]; then
		R_NOTE="${R_NOTE:+$R_NOTE; }lease file $(<"$d/lease-file-lines") lines"
	fi

	read -r R_DO_SENT R_DO_RCVD R_RA_SENT R_RA_RCVD _ < <(parse_perfdhcp "$d/perfdhcp.out")
	R_PERF_CPU=$(cpu_pct "$pt0" "$pt1" "$t0" "$t1")
	R_SRV_CPU=$(cpu_pct "$st0" "$st1" "$t0" "$t1")
	R_PERF_WAIT=$(wait_pct "$pw0" "$pw1" "$t0" "$t1")
	R_SRV_WAIT=$(wait_pct "$sw0" "$sw1" "$t0" "$t1")
	R_SYS=$(awk -v b0="$sb0" -v b1="$sb1" -v t0="$stt0" -v t1="$stt1" -v n="$NCPU" \
		'BEGIN { if (t1 > t0) printf "%.0f", (b1 - b0) / (t1 - t0) * 100 * n; else print "n/a" }')
	# everything else: other processes on the machine, softirq/kernel work not
	# charged to either process
	R_OTHER=$(awk -v m="$R_SYS" -v a="$R_SRV_CPU" -v b="$R_PERF_CPU" \
		'BEGIN { if (m ~ /^[0-9]/ && a ~ /^[0-9]/ && b ~ /^[0-9]/) { o = m - a - b; printf "%.0f", (o < 0 ? 0 : o) } else print "n/a" }')
	R_OFFERED=$(awk -v s="$R_DO_SENT" -v p="$SECS" 'BEGIN { printf "%.0f", s / p }')
	# server CPU time per completed exchange, microseconds
	R_US=$(awk -v a="$st0" -v b="$st1" -v t0="$t0" -v t1="$t1" -v hz="$HZ" -v n="$R_RA_RCVD" -v p="$SECS" \
		'BEGIN { if (a != "" && b != "" && n > 0) printf "%.0f", (b - a) / hz / (t1 - t0) / (n / p) * 1e6; else print "n/a" }')
	# 4-way drops: DISCOVERs sent that did not end in an ACK.
	R_DROP=$(awk -v s="$R_DO_SENT" -v r="$R_RA_RCVD" \
		'BEGIN { if (s > 0) printf "%.3f", (s - r) / s * 100; else print "100" }')
	# perfdhcp could not send at the requested rate (>5 % short)
	R_GEN_LIMITED=$(awk -v s="$R_DO_SENT" -v r="$rate" -v p="$SECS" 'BEGIN { print ((s < 0.95 * r * p) ? 1 : 0) }')
	R_OK=$(awk -v d="$R_DROP" -v l="$DROP_LIMIT" -v s="$R_DO_SENT" -v g="$R_GEN_LIMITED" \
		'BEGIN { print ((s > 0 && d < l && !g) ? 1 : 0) }')
	if ((R_GEN_LIMITED)); then
		R_NOTE="${R_NOTE:+$R_NOTE; }perfdhcp sent only $R_OFFERED/s"
	fi
	if ((R_DO_SENT > 0 && R_DO_RCVD == 0)); then
		R_NOTE="${R_NOTE:+$R_NOTE; }0 answers"
	fi

	# for a bad step: a guess at what limited it
	if ((!R_OK && R_DO_SENT > 0 && R_DO_RCVD > 0)); then
		local hint
		hint=$(awk -v g="$R_GEN_LIMITED" -v c="$R_SRV_CPU" -v w="$R_SRV_WAIT" -v m="$R_SYS" -v n="$NCPU" \
			-v dd="$([[ $series == ddhcpd* && $R_NOTE == *pre-claimed* ]] && echo 1 || echo 0)" \
			-v dod="$((R_DO_SENT - R_DO_RCVD))" -v rad="$((R_RA_SENT - R_RA_RCVD))" 'BEGIN {
				h = ""
				if (g) h = h ", perfdhcp could not send the rate"
				if (dd && dod > 10 * rad) h = h ", ddhcpd had no free address (claim-ahead behind)"
				if (c ~ /^[0-9]/ && c >= 90) h = h ", server CPU (" c " %)"
				else if ((m ~ /^[0-9]/ && m >= n * 90) || (w ~ /^[0-9]/ && w >= 30)) h = h ", machine CPU saturated (machine " m " %, server waited " w " % for a CPU)"
				print (h == "" ? "limit: not CPU (see the logs)" : "limit: " substr(h, 3))
			}')
		R_NOTE="${R_NOTE:+$R_NOTE; }$hint"
	fi

	local do_pct ra_pct
	do_pct=$(awk -v s="$R_DO_SENT" -v r="$R_DO_RCVD" 'BEGIN { if (s > 0) printf "%.2f", (s - r) / s * 100; else print "-" }')
	ra_pct=$(awk -v s="$R_RA_SENT" -v r="$R_RA_RCVD" 'BEGIN { if (s > 0) printf "%.2f", (s - r) / s * 100; else print "-" }')
	printf '| %s | %s | %s | %s/%s (%s %%) | %s/%s (%s %%) | %s %% | %s | %s | %s | %s | %s | %s | %s |\n' \
		"$series" "$rate" "$R_OFFERED" "$R_DO_RCVD" "$R_DO_SENT" "$do_pct" "$R_RA_RCVD" "$R_RA_SENT" "$ra_pct" \
		"$R_DROP" "$R_SRV_CPU ($R_SRV_WAIT)" "$R_US" "$R_PERF_CPU ($R_PERF_WAIT)" "$R_OTHER" "$R_SYS" \
		"$(cut -d' ' -f1-3 "$d/loadavg-after")" \
		"${R_NOTE:-}" >>"$STATE/steps.md"
	log "  DISCOVER-OFFER $R_DO_RCVD/$R_DO_SENT, REQUEST-ACK $R_RA_RCVD/$R_RA_SENT, 4-way drops $R_DROP %," \
		"server CPU $R_SRV_CPU % (waiting for a CPU $R_SRV_WAIT %; $R_US us/exchange), perfdhcp CPU $R_PERF_CPU % (waiting $R_PERF_WAIT %), other $R_OTHER %, machine $R_SYS % (of $((NCPU * 100)) %)${R_NOTE:+ [$R_NOTE]}"
}

# ------------------------------------------------------------------- main ---

declare -A BEST BEST_DROP BEST_SRV BEST_PERF BEST_US NEXT FAIL STEP_US
run_series() { # SERIES
	local s=$1 first=1 rate
	BEST[$s]="" NEXT[$s]="" FAIL[$s]=""
	for rate in $RATES; do
		run_step "$s" "$rate"
		((R_OK)) && STEP_US[$s,$rate]=$R_US
		if ((R_OK)); then
			BEST[$s]=$rate BEST_DROP[$s]=$R_DROP BEST_US[$s]=$R_US
			BEST_SRV[$s]="$R_SRV_CPU (runq wait $R_SRV_WAIT)" BEST_PERF[$s]="$R_PERF_CPU (runq wait $R_PERF_WAIT)"
		else
			if ((first)) && ((R_RA_RCVD == 0)); then
				if [[ $R_NOTE == "server did not start"* ]]; then
					FAIL[$s]="$s: $R_NOTE"
				else
					FAIL[$s]="$s: 0 answers at $rate/s"
				fi
			fi
			NEXT[$s]="$rate ($R_DROP %${R_NOTE:+; $R_NOTE})"
			break
		fi
		first=0
		sleep 1
	done
	if [[ -z ${BEST[$s]} && -z ${FAIL[$s]} ]]; then
		FAIL[$s]="$s: >= $DROP_LIMIT % drops already at the lowest rate"
	fi
}

BUSY_BEFORE=$(busy_pct 2)
if ((BUSY_BEFORE > 40)); then
	log "warning: the machine is already $BUSY_BEFORE % busy (of $((NCPU * 100)) %) before the benchmark; results will be low and noisy"
fi
ddhcpd_version() {
	local v
	v=$("$DDHCPD" --version 2>/dev/null | head -n1 | awk '{print $NF}') || true
	echo "${v:-n/a}"
}

{
	echo "# perfdhcp benchmark $STAMP"
	echo
	echo "- host: $(uname -n), $(uname -sr), $NCPU CPU(s): $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
	echo "- load average at start: $(loadavg); CPU busy before start (2 s): $BUSY_BEFORE % of $((NCPU * 100)) %"
	echo "- perfdhcp $(perfdhcp -v 2>&1 | head -n1 | awk '{print $NF}'), kea-dhcp4 $(kea-dhcp4 -v 2>/dev/null || echo n/a)," \
		"ddhcpd $(ddhcpd_version)" \
		"(project $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown))"
	echo "- $SECS s per step, rates: $RATES; drops = (DISCOVERs sent - ACKs received) / DISCOVERs sent;" \
		"a step is good if drops < $DROP_LIMIT % and perfdhcp sent >= 95 % of the rate"
	echo "- perfdhcp: relay mode (giaddr 10.0.0.2) except the -direct series (clients on the link: broadcast, -B), -R $CLIENTS distinct clients, -d $DROP_TIME s drop time," \
		"-W $EXIT_WAIT_US us exit wait; Kea socket type $KEA_SOCKET;" \
		"quiet wait before each step: up to ${QUIET_WAIT} s for machine CPU < $QUIET_PCT %; ddhcpd -s $DD_SPARE, ddhcpd-auto -s 110 % of rate x seconds"
	echo "- CPU %: utime+stime over the sending period (100 % = one core; multi-threaded processes can exceed 100);" \
		"machine = all CPUs busy, of $((NCPU * 100)) %; other = machine - server - perfdhcp (other processes, softirq);" \
		"runq wait = % of the time the threads of the process were runnable but waiting for a CPU (/proc/PID/task/*/schedstat);" \
		"µs/exchange = server CPU time per completed exchange (ACK received)"
} >"$STATE/header.md"
{
	echo "| server | rate/s | sent/s | DISCOVER-OFFER rcvd/sent (drops) | REQUEST-ACK rcvd/sent (drops) | 4-way drops | server CPU % (runq wait %) | server CPU µs/exchange | perfdhcp CPU % (runq wait %) | other CPU % | machine CPU % | load avg | note |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
} >"$STATE/steps.md"

log "state dir $STATE (kept), namespaces ${P}*"
if [[ $SERVERS == *ddhcpd* ]]; then
	[[ -x $DDHCPD && -x $DDHCPCTL ]] || log "warning: $DDHCPD or $DDHCPCTL missing (cargo build --release)"
fi
if [[ $SERVERS == *kea* ]]; then
	command -v kea-dhcp4 >/dev/null || die "kea-dhcp4 not found (apt-get install kea-dhcp4-server)"
fi

NET_UP=1
"$NT" net-init 1 >"$STATE/net-init.out"
ip -n "$CNS" addr add "$CLIENT_ADDR" dev eth0
# wait until 10.0.0.1 answers ARP/ping from the client namespace
for ((i = 0; i < 30; i++)); do
	ip netns exec "$CNS" ping -c1 -W1 "$SERVER_ADDR" >/dev/null 2>&1 && break
	sleep 0.2
done

for s in $SERVERS; do
	if [[ $s == ddhcpd* ]] && ! [[ -x $DDHCPD && -x $DDHCPCTL ]]; then
		FAIL[$s]="$s: binary missing ($DDHCPD)"
		BEST[$s]="" NEXT[$s]=""
		continue
	fi
	log "=== series $s"
	run_series "$s"
done

# ---------------------------------------------------------------- summary ---

fmt_best() { # SERIES
	local s=$1
	if [[ -n ${BEST[$s]:-} ]]; then
		printf '| %s | %s | %s %% | %s | %s | %s |\n' "$s" "${BEST[$s]}" "${BEST_DROP[$s]}" \
			"${BEST_SRV[$s]}" "${BEST_PERF[$s]}" "${NEXT[$s]:-none (end of BENCH_RATES)}"
	else
		printf '| %s | none | - | - | - | %s |\n' "$s" "${NEXT[$s]:-${FAIL[$s]:-}}"
	fi
}

ratio_line() { # SERIES_A SERIES_B
	local a=$1 b=$2
	if [[ -n ${BEST[$a]:-} && -n ${BEST[$b]:-} ]]; then
		awk -v x="${BEST[$a]}" -v y="${BEST[$b]}" -v a="$a" -v b="$b" \
			'BEGIN { printf "ratio %s/%s = %.2f\n", a, b, x / y }'
	else
		echo "ratio $a/$b = n/a (${FAIL[$a]:-${FAIL[$b]:-no result}})"
	fi
}

{
	cat "$STATE/header.md"
	echo
	echo "## Steps"
	echo
	cat "$STATE/steps.md"
	echo
	echo "## Summary"
	echo
	echo "| server | best rate < $DROP_LIMIT % drops (4-way/s) | drops at that rate | server CPU % | perfdhcp CPU % | next rate tried (drops) |"
	echo "|---|---|---|---|---|---|"
	for s in $SERVERS; do fmt_best "$s"; done
	echo
	for s in $SERVERS; do
		[[ -n ${FAIL[$s]:-} ]] && echo "- ${FAIL[$s]}"
	done
	for a in ddhcpd ddhcpd-auto ddhcpd-nosync ddhcpd-direct; do
		for b in kea kea-mt kea-direct; do
			# a ratio compares one way of reaching the server
			[[ ${a%-direct} != "$a" && ${b%-direct} != "$b" || ${a%-direct} == "$a" && ${b%-direct} == "$b" ]] || continue
			if [[ " $SERVERS " == *" $a "* && " $SERVERS " == *" $b "* ]]; then
				ratio_line "$a" "$b"
			fi
		done
	done
	echo
	for s in $SERVERS; do
		[[ -n ${BEST[$s]:-} ]] && echo "- $s: ${BEST_US[$s]} µs of server CPU per exchange at ${BEST[$s]}/s"
	done
	echo
	for a in ddhcpd ddhcpd-auto ddhcpd-nosync ddhcpd-direct; do
		for b in kea kea-mt kea-direct; do
			[[ ${a%-direct} != "$a" && ${b%-direct} != "$b" || ${a%-direct} == "$a" && ${b%-direct} == "$b" ]] || continue
			[[ " $SERVERS " == *" $a "* && " $SERVERS " == *" $b "* ]] || continue
			x=${STEP_US[$a,$US_AT]:-} y=${STEP_US[$b,$US_AT]:-}
			if [[ $x =~ ^[0-9]+$ && $y =~ ^[0-9]+$ ]] && ((y > 0)); then
				awk -v x="$x" -v y="$y" -v a="$a" -v b="$b" -v r="$US_AT" \
					'BEGIN { printf "µs/exchange at %d/s: %s %d, %s %d, ratio %s/%s = %.2f\n", r, a, x, b, y, a, b, x / y }'
			else
				echo "µs/exchange at $US_AT/s: $a ${x:-n/a}, $b ${y:-n/a} (no good step at that rate for one of them)"
			fi
			# and at the highest rate both served cleanly, which a loaded machine may
			# push below BENCH_US_AT
			both=
			for r in $RATES; do
				[[ ${STEP_US[$a,$r]:-} =~ ^[0-9]+$ && ${STEP_US[$b,$r]:-} =~ ^[0-9]+$ ]] && both=$r
			done
			if [[ -n $both && $both != "$US_AT" ]] && ((${STEP_US[$b,$both]} > 0)); then
				awk -v x="${STEP_US[$a,$both]}" -v y="${STEP_US[$b,$both]}" -v a="$a" -v b="$b" -v r="$both" \
					'BEGIN { printf "µs/exchange at %d/s (highest rate both served): %s %d, %s %d, ratio %s/%s = %.2f\n", r, a, x, b, y, a, b, x / y }'
			fi
		done
	done
	echo
	echo "- load average at end: $(loadavg)"
	echo "- full outputs: $STATE/<server>/r<rate>/ (perfdhcp.out, server log, config)"
} >"$STATE/summary.md"

mkdir -p "$ROOT/target/bench"
cp "$STATE/summary.md" "$ROOT/target/bench/perfdhcp-$STAMP.md"
echo
cat "$STATE/summary.md"
echo
echo "summary saved to $ROOT/target/bench/perfdhcp-$STAMP.md"

rc=0
for s in $SERVERS; do
	[[ -n ${BEST[$s]:-} ]] || rc=1
done
if ((rc)) && [[ $ALLOW_FAIL == 1 ]]; then
	echo "(BENCH_ALLOW_FAIL=1: exiting 0 although a server had no good step)"
	rc=0
fi
exit "$rc"
