#!/bin/busybox sh
# The lab guest's whole userland: mount the basics, load virtio, arm the
# ACPI power button, say it is up, and write a marker (from the kernel
# command line) at fixed sectors of its disk, so tests can tell the guest's
# data from anything else.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in virtio_pci virtio_blk virtio_net evdev button; do modprobe "$module" 2>/dev/null; done

# A real guest powers off on the ACPI power button (libvirt's graceful
# shutdown): the button driver turns it into a key event on an input
# device named "Power Button"; the first event read there syncs the disk and
# powers off, which QEMU reports to libvirt as a guest shutdown.
for name in /sys/class/input/event*/device/name; do
  [ "$(cat "$name" 2>/dev/null)" = "Power Button" ] || continue
  event=${name#/sys/class/input/}
  event=${event%%/*}
  (dd if="/dev/input/$event" bs=64 count=1 of=/dev/null 2>/dev/null
   echo "LAB-GUEST-POWER-BUTTON" > /dev/ttyS0; sync; poweroff -f) &
done
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
