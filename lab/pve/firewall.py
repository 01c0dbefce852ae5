"""Firewalls: a guest's IP sets and options (``PVE::API2::Firewall::VM``) and the
datacenter's options (``PVE::API2::Firewall::Cluster``), all synchronous.

As in PVE, a guest's rules and IP sets filter nothing unless the datacenter firewall
is enabled and the NIC has ``firewall=1``: this module stores the settings; what
filters is read from all three by whoever asks.
"""

from __future__ import annotations

import hashlib
from typing import Any

from lab.pve.registry import Call, api
from lab.pve.schema import split_list
from lab.pve.state import Guest, IPSet, fail

OPTION_KEYS = ("dhcp", "enable", "ipfilter", "log_level_in", "log_level_out", "macfilter",
               "ndp", "policy_in", "policy_out", "radv")
BOOLEAN_OPTIONS = {"dhcp", "enable", "ipfilter", "macfilter", "ndp", "radv"}


def _guest(call: Call) -> Guest:
    return call.cluster.guest(call.text("node"), call.text("vmid"))


def _digest(guest: Guest) -> str:
    text = repr(sorted((n, s.comment, sorted(s.entries)) for n, s in guest.ipsets.items()))
    return hashlib.sha1((text + repr(sorted(guest.fw_options.items()))).encode()).hexdigest()


def _ipset(guest: Guest, name: str) -> IPSet:
    found = guest.ipsets.get(name)
    if found is None:
        raise fail(f"no such IPSet '{name}'")
    return found


@api("GET", "/nodes/{node}/qemu/{vmid}/firewall/ipset")
def ipsets(call: Call) -> list[dict[str, Any]]:
    guest = _guest(call)
    digest = _digest(guest)
    return [{"name": n, "digest": digest, **({"comment": s.comment} if s.comment else {})}
            for n, s in sorted(guest.ipsets.items())]


@api("POST", "/nodes/{node}/qemu/{vmid}/firewall/ipset")
def create_ipset(call: Call) -> None:
    guest, name = _guest(call), call.text("name")
    rename = call.params.get("rename")
    if rename:
        guest.ipsets[name] = guest.ipsets.pop(_existing(guest, rename))
        return
    if name in guest.ipsets:
        raise fail(f"IPSet '{name}' already exists")
    guest.ipsets[name] = IPSet(call.text("comment"))


def _existing(guest: Guest, name: str) -> str:
    _ipset(guest, name)
    return name


@api("GET", "/nodes/{node}/qemu/{vmid}/firewall/ipset/{name}")
def ipset_entries(call: Call) -> list[dict[str, Any]]:
    guest = _guest(call)
    ipset, digest = _ipset(guest, call.text("name")), _digest(guest)
    return [{"cidr": cidr, "digest": digest, **entry} for cidr, entry in ipset.entries.items()]


@api("POST", "/nodes/{node}/qemu/{vmid}/firewall/ipset/{name}")
def add_entry(call: Call) -> None:
    ipset, cidr = _ipset(_guest(call), call.text("name")), call.text("cidr")
    if cidr in ipset.entries:
        raise fail(f"address '{cidr}' already exists")
    entry: dict[str, object] = {}
    if call.params.get("comment"):
        entry["comment"] = call.text("comment")
    if call.flag("nomatch"):
        entry["nomatch"] = 1
    ipset.entries[cidr] = entry


@api("DELETE", "/nodes/{node}/qemu/{vmid}/firewall/ipset/{name}")
def delete_ipset(call: Call) -> None:
    guest, name = _guest(call), call.text("name")
    ipset = _ipset(guest, name)
    if ipset.entries and not call.flag("force"):
        raise fail(f"IPSet '{name}' is not empty")
    del guest.ipsets[name]


@api("DELETE", "/nodes/{node}/qemu/{vmid}/firewall/ipset/{name}/{cidr}")
def delete_entry(call: Call) -> None:
    ipset, cidr = _ipset(_guest(call), call.text("name")), call.text("cidr")
    if cidr not in ipset.entries:
        raise fail(f"no such IP/Network '{cidr}'")
    del ipset.entries[cidr]


@api("GET", "/nodes/{node}/qemu/{vmid}/firewall/options")
def options(call: Call) -> dict[str, Any]:
    guest = _guest(call)
    values: dict[str, Any] = {k: int(v) if k in BOOLEAN_OPTIONS else v
                              for k, v in guest.fw_options.items()}
    return {**values, "digest": _digest(guest)}


@api("PUT", "/nodes/{node}/qemu/{vmid}/firewall/options")
def set_options(call: Call) -> None:
    guest = _guest(call)
    digest = call.params.get("digest")
    if digest and digest != _digest(guest):
        raise fail("detected modified configuration - file changed by other user? Try again.")
    for key in split_list(call.text("delete")):
        guest.fw_options.pop(key, None)
    for key in OPTION_KEYS:
        if call.params.get(key) is not None:
            value = call.params[key]
            guest.fw_options[key] = ("1" if value else "0") if isinstance(value, bool) else str(
                value)


CLUSTER_OPTION_KEYS = ("ebtables", "enable", "log_ratelimit", "policy_forward", "policy_in",
                       "policy_out")


def _cluster_digest(values: dict[str, str]) -> str:
    return hashlib.sha1(repr(sorted(values.items())).encode()).hexdigest()


@api("GET", "/cluster/firewall/options")
def cluster_options(call: Call) -> dict[str, Any]:
    values = call.cluster.fw_options
    out: dict[str, Any] = {k: int(v) if k in ("ebtables", "enable") else v
                           for k, v in values.items()}
    return {**out, "digest": _cluster_digest(values)}


@api("PUT", "/cluster/firewall/options")
def set_cluster_options(call: Call) -> None:
    values = call.cluster.fw_options
    digest = call.params.get("digest")
    if digest and digest != _cluster_digest(values):
        raise fail("detected modified configuration - file changed by other user? Try again.")
    for key in split_list(call.text("delete")):
        values.pop(key, None)
    for key in CLUSTER_OPTION_KEYS:
        if call.params.get(key) is not None:
            value = call.params[key]
            values[key] = ("1" if value else "0") if isinstance(value, bool) else str(value)
