"""Compute driver for libvirt: KVM/QEMU guests, or libvirt's built-in test hypervisor.

A service's machine is a domain named ``svc-<service id>`` with one disk, a
volume in a storage pool: a copy-on-write qcow2 overlay of ``base_volume``
when one is given (the lab), else a raw volume. The domain's metadata
carries the service id. Terminating removes the domain and keeps the volume
(the archive); purging runs libvirt's zero wipe (on a thin file, a
deallocation, and the evidence says which), reads samples back across it,
deletes it, and checks the pool's listing for it.

Against ``test:///default`` (in-memory, per process) three things cannot be
done for real, and the driver says so rather than pretend:

- volumes cannot be wiped, read or grown (``virStorageVolWipe``,
  ``Download`` and ``Resize`` are unsupported): the purge deletes, verifies
  absence, and its evidence says ``delete-only``; growing a disk raises
  ``Unsupported``;
- interface link state cannot change (``virDomainUpdateDeviceFlags`` is
  unsupported): a network cut is recorded in the domain's metadata only;
- undefining accepts neither the NVRAM nor the checkpoint flag.

On qemu:///system the link really goes down (live and in the persistent
configuration), and the same metadata record is what ``inspect`` reads, so
both hypervisors report a cut the same way.

The parts, each importing only those above it:

- ``connection``: the error boundary (``translated``) and the connection;
- ``domain``: a domain's XML and the steps of its life;
- ``nwfilter``: address binding; ``storage``: volumes, streams, wiping;
- ``machines``: the settings and reading every part shares;
- ``scratch`` then ``backup``: verification by booting, backups, restores;
- ``compute``: ``LibvirtCompute``, the lifecycle.
"""

from drivers.libvirt.compute import LibvirtCompute

__all__ = ["LibvirtCompute"]
