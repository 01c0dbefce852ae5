#!/usr/bin/python3
"""Ansible module: make exactly a given set of addresses route to one router port.

Reads the port's host routes and filter set elements first and changes only
the difference, so a second run with the same addresses reports
``changed: false``. An empty list takes every address off the port. While
the port is down the kernel keeps no routes on it: the filter set is still
made exact, and the routes follow when the port comes up (``switch_port``).
See module_utils/router_port.py for what is read and written.
"""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.router_port import (
    RouterError,
    admin_up,
    canonical,
    change_members,
    change_routes,
    members,
    routes,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "port": {"type": "str", "required": True},
            "addresses": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    port = module.params["port"]
    try:
        wanted = {canonical(a) for a in module.params["addresses"]}
        up = admin_up(port)
        in_set, routed = members(port), routes(port)
        add_members, remove_members = wanted - in_set, in_set - wanted
        add_routes = (wanted - routed) if up else set()
        remove_routes = routed - wanted
        changed = bool(add_members or remove_members or add_routes or remove_routes)
        if changed and not module.check_mode:
            change_members(port, add_members, remove_members)
            change_routes(port, add_routes, remove_routes)
        after = routes(port) if not module.check_mode else routed
    except RouterError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(
        changed=changed,
        port=port,
        port_up=up,
        addresses=sorted(wanted),
        added=sorted(add_members | add_routes),
        removed=sorted(remove_members | remove_routes),
        routes=sorted(after),
    )


if __name__ == "__main__":
    main()
