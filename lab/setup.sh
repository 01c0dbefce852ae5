#!/usr/bin/env bash
# Installs everything the orchestrator, its tests and its demo need on a
# fresh Debian 12 machine: Debian packages (libvirt's library and headers,
# to build libvirt-python), a virtualenv in .venv with the project in
# editable mode, and the lab's libvirtd with QEMU (lab/libvirt.sh up).
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

source lab/apt.sh
install_missing libvirt-dev libvirt-clients pkg-config python3-venv gcc
# The network lab (lab/net.sh): a router namespace's sshd, its filter, ping to judge by.
install_missing openssh-server openssh-client iproute2 nftables iputils-ping
# The rescue system of the disk-erase lab (lab/build-rescue.sh) carries these tools.
install_missing nvme-cli hdparm

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
bash lab/libvirt.sh up
echo "lab/setup: ready ($(.venv/bin/python --version), libvirt $(.venv/bin/python -c 'import libvirt; print(libvirt.getVersion())'))"
