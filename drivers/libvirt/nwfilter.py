"""Address binding by libvirt's nwfilter: a guest sends only from its assigned addresses.

Each interface references ``clean-traffic`` with one ``IP`` parameter per
address the store assigned; a guest with none assigned gets the quarantine
filter, which lets nothing through. The binding read back from the
persistent XML is what ``inspect`` reports.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape

import libvirt

from drivers.libvirt.domain import rewrite_interfaces

QUARANTINE_FILTER = "orchestrator-quarantine"
QUARANTINE_FILTER_XML = (
    f"<filter name='{QUARANTINE_FILTER}' chain='root'>"
    "<filterref filter='no-mac-spoofing'/>"
    "<rule action='drop' direction='inout' priority='100'><arp/></rule>"
    "<rule action='drop' direction='inout' priority='100'><ip/></rule>"
    "<rule action='drop' direction='inout' priority='100'><ipv6/></rule>"
    "</filter>"
)


def bind(
    conn: libvirt.virConnect, domain: libvirt.virDomain, addresses: tuple[str, ...], live: bool
) -> None:
    """Every interface filtered to ``addresses``: in the persistent XML, and live if asked."""
    if QUARANTINE_FILTER not in conn.listNWFilters():
        conn.nwfilterDefineXML(QUARANTINE_FILTER_XML)
    for view in (True, False) if live else (False,):
        rewrite_interfaces(domain, lambda i: _with_filter(i, addresses), view)


def is_bound(domain: libvirt.virDomain, addresses: tuple[str, ...]) -> bool:
    """Bound to exactly ``addresses`` (sorted); none means quarantined, not unfiltered."""
    return bound_addresses(domain) == addresses and (bool(addresses) or _quarantined(domain))


def bound_addresses(domain: libvirt.virDomain) -> tuple[str, ...] | None:
    """The addresses the interface's filter allows; None when no filter binds it."""
    xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    filterref = re.search(r"<filterref filter=['\"]([\w-]+)['\"].*?(?:/>|</filterref>)", xml, re.S)
    if filterref is None:
        return None
    return tuple(
        sorted(re.findall(r"<parameter name=['\"]IP['\"] value=['\"]([^'\"]+)", filterref.group(0)))
    )


def _quarantined(domain: libvirt.virDomain) -> bool:
    return f"filter='{QUARANTINE_FILTER}'" in domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def _with_filter(interface: str, addresses: tuple[str, ...]) -> str:
    bare = re.sub(r"<filterref[^>]*/>|<filterref.*?</filterref>", "", interface, flags=re.S)
    return bare.replace("</interface>", f"{_filterref(addresses)}</interface>")


def _filterref(addresses: tuple[str, ...]) -> str:
    """clean-traffic with the addresses the store assigned; none assigned, nothing passes."""
    if not addresses:
        return f"<filterref filter='{QUARANTINE_FILTER}'/>"
    parameters = "".join(f"<parameter name='IP' value='{escape(a)}'/>" for a in addresses)
    return f"<filterref filter='clean-traffic'>{parameters}</filterref>"
