#!/usr/bin/env bash
# Builds the lab guest: Debian's own kernel and an initramfs of
# busybox-static, the virtio modules and lab/guest-init.sh. Nothing is
# downloaded but Debian packages. Output: $LAB_DIR/images/{vmlinuz,initrd.img}.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lab_dir=${LAB_DIR:-/var/lib/orchestrator-lab}
images="$lab_dir/images"
# Rebuilt whenever the init or this recipe changed since the last build, so
# a machine that built an older guest gets the new one at the next `up`.
if [ -s "$images/initrd.img" ] && [ "$images/initrd.img" -nt "$here/guest-init.sh" ] \
    && [ "$images/initrd.img" -nt "$0" ]; then
  exit 0
fi
kernel=$(ls /boot/vmlinuz-* | sort -V | tail -n 1)
version=${kernel#/boot/vmlinuz-}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,lib/modules/"$version"} "$images"
cp /bin/busybox "$root/bin/busybox"
for module in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
              virtio_blk failover net_failover virtio_net evdev button; do
  path=$(modinfo -k "$version" -n "$module" 2>/dev/null || true)
  [ -n "$path" ] || continue
  target="$root/lib/modules/$version/${path#/lib/modules/$version/}"
  mkdir -p "$(dirname "$target")"
  cp "$path" "$target"
done
cp /lib/modules/"$version"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$version/"
depmod -b "$root" "$version"
install -m 0755 "$here/guest-init.sh" "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$images/initrd.img.new"
cp "$kernel" "$images/vmlinuz"
mv "$images/initrd.img.new" "$images/initrd.img"
echo "lab: guest built from $kernel ($(du -h "$images/initrd.img" | cut -f1) initramfs)"
