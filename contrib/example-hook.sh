#!/bin/sh
# Example ddhcpd hook: ddhcpd runs it as `example-hook.sh ACTION ARGS...` (no shell expands
# the arguments; this script is run directly through its #! line).
# It appends one line per event to $DDHCP_HOOK_LOG (default /tmp/ddhcpd-hook.log) and, for
# leases, pings the new address once so the neighbour entry is fresh (as Gluon's 000-arp-ping).
log=${DDHCP_HOOK_LOG:-/tmp/ddhcpd-hook.log}
action=$1
shift
printf '%s %s\n' "$action" "$*" >> "$log"
case "$action" in
    lease)
        # $1 = IP, $2 = MAC
        ping -c 1 -W 1 "$1" >/dev/null 2>&1 &
        ;;
    release|expire|decline)
        ;;
    claim|drop)
        # $1 = FIRST/LEN of the block, e.g. 10.116.128.4/30
        ;;
    conflict)
        # $1 = FIRST/LEN, $2 = node id that took it
        logger -t ddhcpd-hook "block $1 taken over by $2"
        ;;
    endlearning|nodeid)
        ;;
esac
exit 0
