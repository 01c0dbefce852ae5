#!/bin/busybox sh
# The lab's rescue system, as a box boots it to be purged: its disk drivers,
# the network (QEMU's user network: 10.0.2.15, the host at 10.0.2.2), a host
# key made at boot (printed to the console, as a rescue boot reports it),
# root's authorized key from the kernel command line (lab.sshkey=, the
# base64 of an ed25519 key), and sshd.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for module in nvme ahci sd_mod virtio_pci virtio_net; do modprobe "$module" 2>/dev/null; done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
key=$(sed -n 's/.*lab\.sshkey=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "ssh-ed25519 $key lab" > /root/.ssh/authorized_keys
/usr/bin/ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
echo "LAB-RESCUE-HOSTKEY $(cat /etc/ssh/ssh_host_ed25519_key.pub)" > /dev/ttyS0
/usr/sbin/sshd -f /etc/ssh/sshd_config
echo "LAB-RESCUE-UP" > /dev/ttyS0
while true; do sleep 3600; done
