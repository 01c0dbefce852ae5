"""What the router modules share: reading and changing a Linux router's ports.

A customer's "switch port" is an interface of the router (``cportN`` in the
lab). Two things make an address reach it, and both are read before
anything is changed (level-triggered):

- a host route ``ADDR/32 dev PORT`` (``/128`` for IPv6), and
- an element ``PORT . ADDR`` in the nftables set ``routed4`` (``routed6``)
  of ``table inet orchestrator``, whose forward chain drops everything its
  sets do not name.

The kernel drops a port's routes when the port goes down; the set keeps
what was meant, so bringing the port up puts its routes back from the set.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from typing import Any

TABLE = ("inet", "orchestrator")
SETS = {4: "routed4", 6: "routed6"}


class RouterError(Exception):
    """A command on the router failed or the router is not prepared."""


def run(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(list(args), input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise RouterError(f"{' '.join(args[:4])}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def link(port: str) -> dict[str, Any]:
    """The port as the kernel reports it; a port that does not exist is an error, not a default."""
    try:
        found: list[dict[str, Any]] = json.loads(run("ip", "-j", "link", "show", "dev", port))
    except RouterError:
        raise RouterError(f"no port {port} on this router") from None
    return found[0]


def admin_up(port: str) -> bool:
    return "UP" in link(port).get("flags", [])


def canonical(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise RouterError(f"{text!r} is not an IP address") from None


def members(port: str) -> set[str]:
    """The addresses the filter lets through to and from the port."""
    found: set[str] = set()
    for name in SETS.values():
        try:
            listing = json.loads(run("nft", "-j", "list", "set", *TABLE, name))
        except RouterError:
            raise RouterError(
                f"set {name} of table {' '.join(TABLE)} is missing: the router is not prepared"
            ) from None
        for item in listing["nftables"]:
            for element in item.get("set", {}).get("elem", []):
                interface, address = element["concat"]
                if interface == port:
                    found.add(canonical(address))
    return found


def routes(port: str) -> set[str]:
    """The host routes through the port (the link-local and other prefixes are not ours)."""
    found: set[str] = set()
    for family, full in (("-4", "/32"), ("-6", "/128")):
        for route in json.loads(run("ip", "-j", family, "route", "show", "dev", port)):
            destination = route.get("dst", "")
            if "/" not in destination or destination.endswith(full):
                found.add(canonical(destination.split("/")[0]))
    return found


def change_members(port: str, add: set[str], remove: set[str]) -> None:
    """One nft transaction: the filter never holds half a change."""
    lines = [_element("add", port, a) for a in sorted(add)]
    lines += [_element("delete", port, a) for a in sorted(remove)]
    if lines:
        run("nft", "-f", "-", stdin="\n".join(lines) + "\n")


def _element(verb: str, port: str, address: str) -> str:
    version = ipaddress.ip_address(address).version
    return f'{verb} element {" ".join(TABLE)} {SETS[version]} {{ "{port}" . {address} }}'


def change_routes(port: str, add: set[str], remove: set[str]) -> None:
    for address in sorted(remove):
        run("ip", "route", "del", _host(address), "dev", port)
    for address in sorted(add):
        run("ip", "route", "replace", _host(address), "dev", port)


def _host(address: str) -> str:
    return f"{address}/{32 if ipaddress.ip_address(address).version == 4 else 128}"
