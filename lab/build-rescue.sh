#!/usr/bin/env bash
# Builds the lab's rescue system: what a dedicated box boots to have its disks
# purged. Debian's kernel and an initramfs of busybox, OpenSSH's sshd, Debian's
# python3 (for Ansible's modules), nvme-cli, hdparm and lsblk, with the NVMe,
# AHCI and virtio-net drivers; lab/rescue-init.sh is its init. Nothing is
# downloaded but Debian packages. Output: $LAB_DIR/images/rescue.img (the
# kernel is the lab guest's vmlinuz), rebuilt when its recipe changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
lab_dir=${LAB_DIR:-/var/lib/orchestrator-lab}
images="$lab_dir/images"
# shellcheck source=lab/apt.sh
source "$here/apt.sh"
if [ -s "$images/rescue.img" ] && [ "$images/rescue.img" -nt "$here/rescue-init.sh" ] \
    && [ "$images/rescue.img" -nt "$0" ]; then
  exit 0
fi
install_missing busybox-static openssh-server python3-minimal libpython3.11-stdlib nvme-cli \
  hdparm util-linux linux-image-amd64 cpio kmod
kernel=$(ls /boot/vmlinuz-* | sort -V | tail -n 1)
version=${kernel#/boot/vmlinuz-}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run/sshd,var/empty,tmp,root/.ssh,etc/ssh,usr/bin,usr/sbin}
mkdir -p "$root"/lib/modules/"$version" "$images"

copy_with_libraries() {  # a program and every shared library it loads, at the same paths
  local file
  for file in "$@" $(ldd "$@" 2>/dev/null | grep -o '/[^ :]*' | sort -u); do
    mkdir -p "$root$(dirname "$file")"
    cp -L "$file" "$root$file"
  done
}

cp /bin/busybox "$root/bin/busybox"
copy_with_libraries /usr/sbin/sshd /usr/bin/ssh-keygen /usr/bin/python3.11 /usr/sbin/nvme /usr/sbin/hdparm \
  /usr/bin/lsblk /usr/lib/openssh/sftp-server
ln -s python3.11 "$root/usr/bin/python3"
# The standard library without its tests and GUI toolkits (Ansible's modules need neither).
tar -C / --exclude='python3.11/test' --exclude='python3.11/idlelib' \
  --exclude='python3.11/tkinter' --exclude='python3.11/lib2to3' --exclude='python3.11/ensurepip' \
  -cf - usr/lib/python3.11 | tar -C "$root" -xf -
for file in $(find "$root/usr/lib/python3.11/lib-dynload" -name '*.so'); do
  for lib in $(ldd "$file" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
    [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
  done
done
for module in nvme ahci sd_mod virtio_pci virtio_net; do
  for path in $(modprobe -S "$version" --show-depends "$module" 2>/dev/null | awk '/^insmod/ {print $2}'); do
    target="$root/lib/modules/$version/${path#/lib/modules/$version/}"
    mkdir -p "$(dirname "$target")"
    cp "$path" "$target"
  done
done
cp /lib/modules/"$version"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$version/"
depmod -b "$root" "$version"
printf 'root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
cat > "$root/etc/ssh/sshd_config" <<CONFIG
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
Subsystem sftp /usr/lib/openssh/sftp-server
CONFIG
install -m 0755 "$here/rescue-init.sh" "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$images/rescue.img.new"
[ -s "$images/vmlinuz" ] || cp "$kernel" "$images/vmlinuz"
mv "$images/rescue.img.new" "$images/rescue.img"
echo "lab: rescue system built from $kernel ($(du -h "$images/rescue.img" | cut -f1) initramfs)"
