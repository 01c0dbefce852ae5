#!/usr/bin/env bash
# The lab's dedicated servers: boxes with a BMC, an sshd and a disk.
#
#   bash lab/boxes.sh up [N]   create N boxes (default 2); idempotent
#   bash lab/boxes.sh down     stop and remove them
#   bash lab/boxes.sh status   one line a box: BMC port, address, power, disk
#
# A box is a network namespace (olab-boxN, address 10.77.0.(10+N) behind the
# bridge olab-br0 at 10.77.0.1) whose "operating system" is an sshd, with a
# disk that is a real block device (a loop device over a file). Its BMC is
# OpenIPMI's ipmi_sim on 127.0.0.1:(9100+N), speaking real IPMI over UDP;
# ipmi_sim drives the box through lab/box-chassis: power on starts the
# box's sshd, power off kills every process in the box, the boot device is
# kept for the next power on. `up` installs box-chassis as
# $LAB_DIR/bin/box-chassis and the BMCs run that copy: a BMC outlives the
# checkout that started it, so it must not name a script in one. A running
# BMC started from another lan.conf (another chassis program, password or
# port; or by a boxes.sh before this rule) is restarted with this one.
#
# Secrets the lab makes (0600, under $LAB_DIR/secrets): the BMC password,
# the orchestrator's SSH key (the boxes authorise its public half) and the
# key that signs erase records. The inventory names them by reference
# (inventory/lab-metal.yaml); nothing here prints them. The boxes' host
# keys go to $LAB_DIR/boxes/known_hosts, which the inventory pins.
set -Eeuo pipefail
# Under pipefail, `cmd | grep -q` fails when grep quits first and cmd dies of SIGPIPE: the
# checks below let grep read everything (`grep ... >/dev/null`) instead.
here=$(cd "$(dirname "$0")" && pwd)
export LAB_DIR=${LAB_DIR:-/var/lib/orchestrator-lab}
boxes_dir=$LAB_DIR/boxes
chassis=$LAB_DIR/bin/box-chassis
secrets=$LAB_DIR/secrets
bridge=olab-br0
disk_mib=${BOX_DISK_MIB:-64}
# shellcheck source=lab/apt.sh
source "$here/apt.sh"
# shellcheck source=lab/sshd.sh
source "$here/sshd.sh"

make_secrets() {
  install -d -m 0700 "$secrets"
  umask 077
  [ -s "$secrets/bmc-password" ] || head -c 12 /dev/urandom | base64 | tr -d '/+=\n' > "$secrets/bmc-password"
  [ -s "$secrets/orchestrator_ed25519" ] ||
    ssh-keygen -q -t ed25519 -N '' -C orchestrator-lab -f "$secrets/orchestrator_ed25519"
  [ -s "$secrets/erase-signing.pem" ] ||
    openssl genpkey -algorithm ed25519 -out "$secrets/erase-signing.pem" 2>/dev/null
  openssl pkey -in "$secrets/erase-signing.pem" -pubout -out "$LAB_DIR/erase-signing.pub" 2>/dev/null
}

make_bridge() {
  ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge
  ip addr show dev "$bridge" | grep "10.77.0.1/24" >/dev/null || ip addr add 10.77.0.1/24 dev "$bridge"
  ip link set "$bridge" up
}

make_box() {
  local n=$1 name=olab-box$1 dir=$boxes_dir/box$1 address=10.77.0.$((10 + $1))
  install -d -m 0700 "$dir"
  ip netns list | grep -w "$name" >/dev/null || ip netns add "$name"
  if ! ip link show "olab-b$n" >/dev/null 2>&1; then
    ip -n "$name" link del eth0 2>/dev/null || true  # a half-made box of an earlier run
    ip link add "olab-b$n" type veth peer name eth0 netns "$name"
    ip link set "olab-b$n" master "$bridge" up
  fi
  ip -n "$name" addr show dev eth0 | grep "$address/24" >/dev/null ||
    ip -n "$name" addr add "$address/24" dev eth0
  ip -n "$name" link set eth0 up
  ip -n "$name" link set lo up
  [ -f "$dir/disk.img" ] || truncate -s "${disk_mib}M" "$dir/disk.img"
  if [ -z "$(losetup -j "$dir/disk.img")" ]; then losetup -f "$dir/disk.img"; fi
  losetup -j "$dir/disk.img" | awk -F: 'NR == 1 {print $1}' > "$dir/device"
  ln -sfn "$(cat "$dir/device")" "$dir/disk"  # a stable name for the inventory's purge_devices
  [ -f "$dir/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh_host_ed25519_key"
  cp "$secrets/orchestrator_ed25519.pub" "$dir/authorized_keys"
  write_sshd_config "$dir" "$address"
  [ -f "$dir/bootdev" ] || echo default > "$dir/bootdev"
  write_bmc "$n" "$dir"
  start_bmc "$n" "$dir"
}

write_bmc() {
  local n=$1 dir=$2
  (umask 077 && cat > "$dir/lan.conf" <<EOF
name "box$n"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 $((9100 + n))
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid $(printf 'a1b2c3d4e5f60718293a4b5c6d7e%04x' "$n")
  endlan
  chassis_control "$chassis $n"
  user 2 true "admin" "$(cat "$secrets/bmc-password")" admin 10 md5
EOF
)
  cat > "$dir/box.emu" <<EOF
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
EOF
}

install_chassis() {
  install -d -m 0755 "$LAB_DIR/bin"
  install -m 0755 "$here/box-chassis" "$chassis.new"
  mv -f "$chassis.new" "$chassis"  # a rename: a BMC running the old copy finishes it unharmed
}

# ipmi_sim reads lan.conf once, at its start; bmc.conf.sha256 says which one it read.
conf_sum() { sha256sum "$1/lan.conf" "$1/box.emu" | cut -d' ' -f1 | tr -d '\n'; }

stop_bmc() {
  local dir=$1 pid
  pid=$(cat "$dir/bmc.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

start_bmc() {
  local n=$1 dir=$2
  if [ -f "$dir/bmc.pid" ] && kill -0 "$(cat "$dir/bmc.pid")" 2>/dev/null; then
    if [ "$(cat "$dir/bmc.conf.sha256" 2>/dev/null)" = "$(conf_sum "$dir")" ]; then return; fi
    echo "lab: box $n's BMC runs an older lan.conf; restarting it"
    stop_bmc "$dir"
  fi
  mkdir -p "$dir/bmc-state"
  conf_sum "$dir" > "$dir/bmc.conf.sha256"
  (
    close_inherited_fds
    exec setsid ipmi_sim -c "$dir/lan.conf" -f "$dir/box.emu" -n -s "$dir/bmc-state" \
      </dev/null >"$dir/bmc.log" 2>&1
  ) &
  echo $! > "$dir/bmc.pid"
}

# A BMC outlives this script: it must not keep what the caller opened, above all the lab
# lock of `flock /tmp/olab-lab.lock bash lab/boxes.sh up`, which it would hold for ever.
close_inherited_fds() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}

known_hosts() {
  : > "$boxes_dir/known_hosts.new"
  for dir in "$boxes_dir"/box*/; do
    local n=${dir%/}; n=${n##*box}
    echo "10.77.0.$((10 + n)) $(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")" >> "$boxes_dir/known_hosts.new"
  done
  mv "$boxes_dir/known_hosts.new" "$boxes_dir/known_hosts"
}

up() {
  local count=${1:-2}
  trap 'echo "lab: boxes.sh up failed at line $LINENO: $BASH_COMMAND" >&2' ERR
  install_missing openipmi ipmitool openssh-server openssh-client iproute2 openssl
  mkdir -p "$boxes_dir" /run/sshd
  make_secrets
  install_chassis
  make_bridge
  for n in $(seq 1 "$count"); do make_box "$n"; done
  known_hosts
  for n in $(seq 1 "$count"); do wait_bmc "$n"; done
  echo "lab: $count boxes up (BMCs on 127.0.0.1:9101-$((9100 + count)), boxes 10.77.0.11-$((10 + count)))"
}

wait_bmc() {
  local port=$((9100 + $1)) pid holder
  pid=$(cat "$boxes_dir/box$1/bmc.pid")
  for _ in $(seq 1 50); do
    holder=$(ss -ulnpH "sport = :$port" | grep -o 'pid=[0-9]*' | awk 'NR == 1') || true
    if [ "$holder" = "pid=$pid" ]; then return 0; fi
    if [ -n "$holder" ] && ! kill -0 "$pid" 2>/dev/null; then
      # Another process (a BMC whose box directory was removed) holds the port.
      echo "lab: 127.0.0.1:$port is held by $holder, not box $1's BMC; run boxes.sh down" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "lab: the BMC of box $1 did not start; see $boxes_dir/box$1/bmc.log" >&2
  return 1
}

down() {
  # By name as well as by directory, so a box whose directory is gone is swept too.
  pkill -f "ipmi_sim -c $boxes_dir/" 2>/dev/null || true
  for dir in "$boxes_dir"/box*/; do
    [ -d "$dir" ] || continue
    local n=${dir%/}; n=${n##*box}
    "$here/box-chassis" "$n" set power '"0"' >/dev/null 2>&1 || true
    [ -f "$dir/bmc.pid" ] && kill "$(cat "$dir/bmc.pid")" 2>/dev/null || true
    losetup -j "$dir/disk.img" | cut -d: -f1 | xargs -r -n1 losetup -d
    ip link del "olab-b$n" 2>/dev/null || true
    ip netns del "olab-box$n" 2>/dev/null || true
    rm -rf "$dir"
  done
  for netns in $(ip netns list | grep -o '^olab-box[0-9]*'); do
    ip netns pids "$netns" | xargs -r kill -9 2>/dev/null || true
    ip netns del "$netns"
  done
  for link in $(ip -o link show | grep -o 'olab-b[0-9]*@' | tr -d @); do ip link del "$link" || true; done
  ip link del "$bridge" 2>/dev/null || true
  rm -f "$chassis"
  echo "lab: boxes removed"
}

status() {
  for dir in "$boxes_dir"/box*/; do
    [ -d "$dir" ] || continue
    local n=${dir%/}; n=${n##*box}
    echo "box$n bmc=127.0.0.1:$((9100 + n)) address=10.77.0.$((10 + n)) $("$here/box-chassis" "$n" get power) disk=$(cat "$dir/device")"
  done
}

case ${1:-} in
  up) up "${2:-2}" ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up [N]|down|status" >&2; exit 2 ;;
esac
