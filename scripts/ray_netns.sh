#!/usr/bin/env bash
# Two (or more) "hosts" on this machine for testing `--engine ray` as on a real cluster: Linux network
# namespaces with their own IPs, joined by veth pairs to a bridge that this (the root) namespace also
# sits on, so a server bound to the bridge IP (an S3 endpoint) is reachable from every "host".
#
#   scripts/ray_netns.sh check              exit 0 when namespaces can be made here (root, iproute2, veth, bridge)
#   scripts/ray_netns.sh up [NAMES...]      make them (default: a b); prints NAME=IP lines, the bridge last
#   scripts/ray_netns.sh down [NAMES...]    kill what runs inside them (by pid), delete them and the bridge
#   scripts/ray_netns.sh run [NAMES...] -- CMD...   up, run CMD, and always down afterwards (trap)
#
# Host "a" is 10.77.0.1, "b" 10.77.0.2, ...; the bridge is 10.77.0.254. Inside, run commands with
# `ip netns exec mmr-a CMD`. MMNET_PREFIX (default mmr) and MMNET_NET (default 10.77.0) rename them,
# so two runs at once do not collide. Needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2.
set -euo pipefail

PREFIX="${MMNET_PREFIX:-mmr}"
NET="${MMNET_NET:-10.77.0}"
BR="${PREFIX}-br"
[ ${#PREFIX} -le 10 ] || { echo "ray_netns.sh: MMNET_PREFIX at most 10 characters (interface names)" >&2; exit 2; }

die() { echo "ray_netns.sh: $*" >&2; exit 2; }

host_ip() {  # a -> NET.1, b -> NET.2, ...
    local n; n=$(( $(printf '%d' "'$1") - 96 ))
    [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "host names are single letters a..z, got '$1'"
    echo "${NET}.${n}"
}

check() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces need CAP_NET_ADMIN)"
    command -v ip >/dev/null || die "needs iproute2 (the ip command)"
    local t="mmp$$"   # interface names: 15 characters at most
    ip netns add "$t" 2>/dev/null || die "cannot create a network namespace here (ip netns add failed: a container without CAP_SYS_ADMIN?)"
    local ok=0
    if ip link add "${t}h" type veth peer name "${t}n" 2>/dev/null; then
        ip link set "${t}n" netns "$t" 2>/dev/null && ip link add "${t}b" type bridge 2>/dev/null && ok=1
        ip link del "${t}b" 2>/dev/null || true
        ip link del "${t}h" 2>/dev/null || true
    fi
    ip netns del "$t" 2>/dev/null || true
    [ "$ok" = 1 ] || die "cannot create veth pairs or a bridge here (no veth/bridge kernel modules?)"
}

down() {
    local h ns pids
    for h in "$@"; do
        ns="${PREFIX}-$h"
        ip netns list 2>/dev/null | grep -qw "^$ns" || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
        ip link del "${PREFIX}-$h-h" 2>/dev/null || true   # gone with the namespace; this for a half-made one
    done
    ip link del "$BR" 2>/dev/null || true
}

up() {
    check
    down "$@"
    trap 'down "$@"' ERR   # a half-made set is removed
    ip link add "$BR" type bridge
    ip addr add "${NET}.254/24" dev "$BR"
    ip link set "$BR" up
    local h ns ip
    for h in "$@"; do
        ns="${PREFIX}-$h"; ip=$(host_ip "$h")
        ip netns add "$ns"
        ip link add "${PREFIX}-$h-h" type veth peer name eth0 netns "$ns"
        ip link set "${PREFIX}-$h-h" master "$BR" up
        ip -n "$ns" addr add "$ip/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        echo "$h=$ip"
    done
    trap - ERR
    # Traffic between two hosts crosses the bridge; where br_netfilter is loaded the root namespace's
    # iptables FORWARD chain would see it, so let bridged frames past it (only on our bridge).
    if [ -w "/sys/class/net/$BR/bridge/nf_call_iptables" ]; then
        echo 0 > "/sys/class/net/$BR/bridge/nf_call_iptables" || true
    fi
    echo "bridge=${NET}.254"
}

cmd="${1:-}"; shift || true
names=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do names+=("$1"); shift; done
[ ${#names[@]} -gt 0 ] || names=(a b)
case "$cmd" in
    check) check ;;
    up) up "${names[@]}" ;;
    down) down "${names[@]}" ;;
    run)
        [ "${1:-}" = "--" ] && shift
        [ $# -gt 0 ] || die "run: give a command after --"
        trap 'down "${names[@]}"' EXIT INT TERM
        up "${names[@]}"
        "$@"
        ;;
    *) die "usage: ray_netns.sh check | up [NAMES] | down [NAMES] | run [NAMES] -- CMD" ;;
esac
