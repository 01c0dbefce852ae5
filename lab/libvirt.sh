#!/usr/bin/env bash
# The lab's hypervisor: a real libvirtd with QEMU on this machine.
#
#   bash lab/libvirt.sh up      install what is missing, start virtlogd and
#                               libvirtd, build the guest, define the pool
#                               and the network; idempotent
#   bash lab/libvirt.sh down    remove the lab's guests, pool and network,
#                               stop the daemons
#   bash lab/libvirt.sh status  say what runs, and KVM or TCG
#
# KVM is used only when a guest really boots under it (a /dev/kvm that
# exists but hangs nested guests is common on shared machines); otherwise
# TCG (<domain type='qemu'>). The choice and its reason are written to
# $LAB_DIR/accel for the tests, benchmarks and the demo.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export LAB_DIR=${LAB_DIR:-/var/lib/orchestrator-lab}
uri=qemu:///system
pool=orchestrator-lab
backup_pool=orchestrator-lab-backups
network=orchestrator-lab
virsh=(virsh -q -c "$uri")
# shellcheck source=lab/apt.sh
source "$here/apt.sh"

install_packages() {
  install_missing libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 \
    qemu-utils busybox-static linux-image-amd64 cpio kmod iptables ebtables \
    libvirt-daemon-config-nwfilter
}

create_users_and_dirs() {
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  getent group kvm >/dev/null || groupadd --system kvm
  getent passwd libvirt-qemu >/dev/null || useradd --system --no-create-home \
    --home-dir /var/lib/libvirt --gid libvirt-qemu --groups kvm --shell /usr/sbin/nologin libvirt-qemu
  mkdir -p /var/lib/libvirt/qemu /var/log/libvirt/qemu /var/cache/libvirt/qemu /run/libvirt \
    "$LAB_DIR/pool" "$LAB_DIR/images" "$LAB_DIR/console"
}

start_daemons() {
  pgrep -x virtlogd >/dev/null || virtlogd -d
  # libvirtd makes its firewall chains at start: one started before
  # iptables was installed must start again.
  if pgrep -x libvirtd >/dev/null && ! iptables -w -n -L LIBVIRT_INP >/dev/null 2>&1; then
    pkill -x libvirtd
    while pgrep -x libvirtd >/dev/null; do sleep 0.1; done
  fi
  pgrep -x libvirtd >/dev/null || libvirtd -d
  for _ in $(seq 1 150); do
    "${virsh[@]}" version >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "lab: libvirtd did not answer on $uri" >&2
  return 1
}

define_dir_pool() {
  local name=$1 dir=$2
  mkdir -p "$dir"
  if ! "${virsh[@]}" pool-info "$name" >/dev/null 2>&1; then
    "${virsh[@]}" pool-define-as "$name" dir --target "$dir" >/dev/null
    "${virsh[@]}" pool-autostart "$name" >/dev/null
  fi
  [[ $("${virsh[@]}" pool-info "$name") == *running* ]] || "${virsh[@]}" pool-start "$name" >/dev/null
  "${virsh[@]}" pool-refresh "$name" >/dev/null
}

define_pool() {
  define_dir_pool "$pool" "$LAB_DIR/pool"
  define_dir_pool "$backup_pool" "$LAB_DIR/backups"  # where guests' backups go
  if ! "${virsh[@]}" vol-info --pool "$pool" lab-base.img >/dev/null 2>&1; then
    "${virsh[@]}" vol-create-as "$pool" lab-base.img 64M --format raw >/dev/null
  fi
}

define_network() {
  # An isolated bridge with no addresses of its own: no dnsmasq, no NAT,
  # nothing leaves this machine.
  if ! "${virsh[@]}" net-info "$network" >/dev/null 2>&1; then
    local xml
    xml=$(mktemp)
    printf "<network><name>%s</name><bridge name='virbr-olab' stp='off'/></network>" "$network" > "$xml"
    "${virsh[@]}" net-define "$xml" >/dev/null
    rm -f "$xml"
  fi
  [[ $("${virsh[@]}" net-info "$network") =~ Active:\ +yes ]] || "${virsh[@]}" net-start "$network" >/dev/null
}

define_filters() {
  # Debian's filter files (clean-traffic and what it includes) are loaded by
  # a libvirtd that starts after they are installed; define any it lacks.
  local known
  known=$("${virsh[@]}" nwfilter-list | awk '{print $2}')
  for file in /etc/libvirt/nwfilter/*.xml; do
    grep -qx "$(basename "$file" .xml)" <<<"$known" || "${virsh[@]}" nwfilter-define "$file" >/dev/null
  done
}

probe_accel() {
  [ -s "$LAB_DIR/accel" ] && return 0
  local reason="no /dev/kvm"
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    if timeout 25 qemu-system-x86_64 -accel kvm -cpu host -m 128 -nographic -no-reboot \
        -kernel "$LAB_DIR/images/vmlinuz" -initrd "$LAB_DIR/images/initrd.img" \
        -append "console=ttyS0 panic=-1" 2>/dev/null | grep -aq LAB-GUEST-UP; then
      echo "kvm /dev/kvm boots the lab guest" > "$LAB_DIR/accel"
      return 0
    fi
    reason="/dev/kvm exists but a guest did not boot under it within 25 s"
  fi
  echo "qemu $reason: using TCG" > "$LAB_DIR/accel"
}

up() {
  install_packages
  create_users_and_dirs
  start_daemons
  bash "$here/build-guest.sh"
  probe_accel
  define_pool
  define_network
  define_filters
  status
}

down() {
  if "${virsh[@]}" version >/dev/null 2>&1; then
    for domain in $("${virsh[@]}" list --all --name | grep '^svc-' || true); do
      "${virsh[@]}" destroy "$domain" >/dev/null 2>&1 || true
      "${virsh[@]}" undefine "$domain" --nvram --snapshots-metadata >/dev/null 2>&1 || true
    done
    "${virsh[@]}" net-destroy "$network" >/dev/null 2>&1 || true
    "${virsh[@]}" net-undefine "$network" >/dev/null 2>&1 || true
    for name in "$pool" "$backup_pool"; do
      "${virsh[@]}" pool-destroy "$name" >/dev/null 2>&1 || true
      "${virsh[@]}" pool-undefine "$name" >/dev/null 2>&1 || true
    done
  fi
  for daemon in libvirtd virtlogd; do
    pkill -x "$daemon" || true
    while pgrep -x "$daemon" >/dev/null; do sleep 0.1; done
  done
  rm -rf "$LAB_DIR/pool" "$LAB_DIR/backups" "$LAB_DIR/console"
  echo "lab: down"
}

status() {
  if "${virsh[@]}" version >/dev/null 2>&1; then
    echo "lab: libvirtd up at $uri; pool $pool, network $network; accel: $(cat "$LAB_DIR/accel" 2>/dev/null || echo unknown)"
  else
    echo "lab: libvirtd is not running"
    return 1
  fi
}

case "${1:-status}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
