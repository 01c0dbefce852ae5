#!/usr/bin/env bash
# The lab's network: a router, customers behind its switch ports, and "the internet".
#
#   bash lab/net.sh up [N]   a router and N customers (default 3); idempotent
#   bash lab/net.sh down     remove them all, by name
#   bash lab/net.sh status   the router's sshd, each port's state and routes
#
# Namespaces and links (none shared with lab/boxes.sh's olab-boxN, 10.77.0.0/24):
#
#   root ns  olab-rtr0 10.78.0.1/30 ── uplink0 10.78.0.2/30   olab-rtr (router, sshd)
#   olab-inet eth0 10.78.1.2/24 ────── inet0 10.78.1.1/24     olab-rtr
#   olab-custN eth0 (no address) ───── cportN                 olab-rtr (switch port N)
#
# The router forwards (ip_forward=1) but by default routes nothing to a
# customer and forwards nothing: table inet orchestrator's forward chain
# drops by default and accepts only what its sets "routed4"/"routed6" name,
# pairs of (port, address) in both directions. The orchestrator's playbooks
# (playbooks/route-addresses.yml) add per-address routes (ADDR/32 dev cportN)
# and set elements, and take them away; playbooks/switch-port.yml sets a
# port up or down. Customer addresses come from 203.0.113.0/24 (TEST-NET-3,
# RFC 5737); the router answers for the customers' gateway 203.0.113.1 on
# every port. A customer namespace has no address until a test gives it one.
#
# Secrets (0600, under $LAB_DIR/secrets, as lab/boxes.sh makes them): the
# orchestrator's SSH key, which the router authorises. The router's host key
# and the known_hosts that pins it live in $LAB_DIR/net (0700).
set -Eeuo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export LAB_DIR=${LAB_DIR:-/var/lib/orchestrator-lab}
net_dir=$LAB_DIR/net
secrets=$LAB_DIR/secrets
router=olab-rtr
inet=olab-inet
gateway=203.0.113.1
# shellcheck source=lab/apt.sh
source "$here/apt.sh"
# shellcheck source=lab/sshd.sh
source "$here/sshd.sh"

in_router() { ip netns exec "$router" "$@"; }

make_secrets() {
  install -d -m 0700 "$secrets" "$net_dir"
  umask 077
  [ -s "$secrets/orchestrator_ed25519" ] ||
    ssh-keygen -q -t ed25519 -N '' -C orchestrator-lab -f "$secrets/orchestrator_ed25519"
  [ -s "$net_dir/ssh_host_ed25519_key" ] ||
    ssh-keygen -q -t ed25519 -N '' -C olab-rtr -f "$net_dir/ssh_host_ed25519_key"
  cp "$secrets/orchestrator_ed25519.pub" "$net_dir/authorized_keys"
  echo "10.78.0.2 $(cut -d' ' -f1,2 "$net_dir/ssh_host_ed25519_key.pub")" > "$net_dir/known_hosts"
}

namespace() {
  [ -e "/run/netns/$1" ] || ip netns add "$1"
  ip -n "$1" link set lo up
}

# A veth pair whose ends live in two namespaces ("" is the root namespace);
# a half-made pair of an earlier run is removed first.
veth() {
  local left_ns=$1 left=$2 right_ns=$3 right=$4
  local left_ip=(ip) right_ip=(ip)
  [ -n "$left_ns" ] && left_ip=(ip -n "$left_ns")
  [ -n "$right_ns" ] && right_ip=(ip -n "$right_ns")
  if "${left_ip[@]}" link show "$left" >/dev/null 2>&1 && "${right_ip[@]}" link show "$right" >/dev/null 2>&1; then
    return
  fi
  "${left_ip[@]}" link del "$left" 2>/dev/null || true
  "${right_ip[@]}" link del "$right" 2>/dev/null || true
  ip link add "tmp-l$$" type veth peer name "tmp-r$$"
  if [ -n "$left_ns" ]; then ip link set "tmp-l$$" netns "$left_ns"; fi
  if [ -n "$right_ns" ]; then ip link set "tmp-r$$" netns "$right_ns"; fi
  "${left_ip[@]}" link set "tmp-l$$" name "$left"
  "${right_ip[@]}" link set "tmp-r$$" name "$right"
}

address() {  # namespace ("" = root), device, address/prefix
  local cmd=(ip); [ -n "$1" ] && cmd=(ip -n "$1")
  # Read whole before matching: grep -q stopping early would fail the pipe (pipefail).
  local have; have=$("${cmd[@]}" -o addr show dev "$2")
  grep -q " $3 " <<<"$have" || "${cmd[@]}" addr add "$3" dev "$2"
  "${cmd[@]}" link set "$2" up
}

make_router() {
  namespace "$router"
  namespace "$inet"
  veth "" olab-rtr0 "$router" uplink0
  address "" olab-rtr0 10.78.0.1/30
  address "$router" uplink0 10.78.0.2/30
  veth "$router" inet0 "$inet" eth0
  address "$router" inet0 10.78.1.1/24
  address "$inet" eth0 10.78.1.2/24
  ip -n "$inet" route replace default via 10.78.1.1
  address "$router" lo "$gateway/32"
  in_router sysctl -qw net.ipv4.ip_forward=1
  in_router sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.default.rp_filter=1
  # The base filter, made once: a router already carrying customers' routes keeps them.
  in_router nft list table inet orchestrator >/dev/null 2>&1 || in_router nft -f - <<'EOF'
table inet orchestrator {
  set routed4 { type ifname . ipv4_addr; }
  set routed6 { type ifname . ipv6_addr; }
  chain forward {
    type filter hook forward priority 0; policy drop;
    oifname . ip daddr @routed4 accept
    iifname . ip saddr @routed4 accept
    oifname . ip6 daddr @routed6 accept
    iifname . ip6 saddr @routed6 accept
  }
}
EOF
}

make_customer() {
  local n=$1 name=olab-cust$1
  namespace "$name"
  # A new port starts up; an existing one keeps the state the orchestrator gave it.
  if ! ip -n "$router" link show "cport$n" >/dev/null 2>&1 ||
     ! ip -n "$name" link show eth0 >/dev/null 2>&1; then
    veth "$router" "cport$n" "$name" eth0
    ip -n "$router" link set "cport$n" up
  fi
  ip -n "$name" link set eth0 up
  ip -n "$name" route replace default via "$gateway" dev eth0 onlink
}

start_sshd() {
  write_sshd_config "$net_dir" 10.78.0.2
  if [ -f "$net_dir/sshd.pid" ] && kill -0 "$(cat "$net_dir/sshd.pid")" 2>/dev/null &&
     [ "$(ip netns identify "$(cat "$net_dir/sshd.pid")")" = "$router" ]; then
    return
  fi
  mkdir -p /run/sshd
  in_router /usr/sbin/sshd -f "$net_dir/sshd_config"
  for _ in $(seq 1 50); do
    if [ -n "$(in_router ss -tlnH 'sport = :22')" ]; then return 0; fi
    sleep 0.1
  done
  echo "lab: the router's sshd did not start" >&2
  return 1
}

up() {
  local count=${1:-3}
  trap 'echo "lab: net.sh up failed at line $LINENO: $BASH_COMMAND" >&2' ERR
  install_missing openssh-server openssh-client iproute2 nftables iputils-ping
  make_secrets
  make_router
  for n in $(seq 1 "$count"); do make_customer "$n"; done
  start_sshd
  echo "lab: router olab-rtr up (sshd 10.78.0.2), $count customers on cport1-$count, internet at olab-inet"
}

down() {
  for netns in $(ip netns list | grep -oE '^olab-(rtr|inet|cust[0-9]+)\b'); do
    ip netns pids "$netns" | xargs -r kill -9 2>/dev/null || true
    ip netns del "$netns"
  done
  ip link del olab-rtr0 2>/dev/null || true
  rm -f "$net_dir/sshd.pid"
  echo "lab: network removed"
}

status() {
  if [ ! -e "/run/netns/$router" ]; then echo "lab: no router"; return 1; fi
  local sshd=down
  if [ -n "$(in_router ss -tlnH 'sport = :22')" ]; then sshd=up; fi
  echo "router olab-rtr sshd=$sshd forward=$(in_router sysctl -n net.ipv4.ip_forward)"
  for port in $(ip -n "$router" -o link show | grep -oE 'cport[0-9]+'); do
    local routes
    routes=$(ip -n "$router" route show dev "$port" | cut -d' ' -f1 | tr '\n' ' ')
    echo "$port $(ip -n "$router" -br link show "$port" | awk '{print $2}') routes: ${routes:-none}"
  done
}

case ${1:-} in
  up) up "${2:-3}" ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up [N]|down|status" >&2; exit 2 ;;
esac
