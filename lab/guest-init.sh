#!/bin/busybox sh
# The lab guest's whole userland: mount the basics, load virtio, say it is
# up, and write a marker (from the kernel command line) at fixed sectors of
# its disk, so tests can tell the guest's data from anything else.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in virtio_pci virtio_blk virtio_net; do modprobe "$module" 2>/dev/null; done
echo "LAB-GUEST-UP" > /dev/ttyS0
marker=$(sed -n 's/.*lab\.marker=\([^ ]*\).*/\1/p' /proc/cmdline)
tries=0
while [ ! -b /dev/vda ] && [ "$tries" -lt 50 ]; do sleep 0.1; tries=$((tries + 1)); done
if [ -b /dev/vda ] && [ -n "$marker" ]; then
  for sector in 0 2048 16384 65536 131000; do
    printf 'LABDATA:%s:%s\n' "$marker" "$sector" | dd of=/dev/vda bs=512 seek="$sector" conv=notrunc 2>/dev/null
  done
  sync
  echo "LAB-GUEST-WROTE $marker" > /dev/ttyS0
fi
while true; do sleep 3600; done
