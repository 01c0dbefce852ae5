#!/usr/bin/python3
"""Ansible module: set one router port administratively up or down, and its description.

Reads the port first and changes only what differs, so ``changed`` says
whether anything did. A port brought up gets back the host routes of the
addresses its filter set names (the kernel dropped them when it went down),
so opening a suspended customer's port restores their traffic. The
description (the interface alias) records why a port is down, e.g. a
terminated colocation box; an empty one clears it, none leaves it alone.
"""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.router_port import (
    RouterError,
    change_routes,
    link,
    members,
    routes,
    run,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "port": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["up", "down"], "required": True},
            "description": {"type": "str", "required": False},
        },
        supports_check_mode=True,
    )
    port, state = module.params["port"], module.params["state"]
    description = module.params["description"]
    try:
        before = link(port)
        was_up = "UP" in before.get("flags", [])
        alias = before.get("ifalias", "")
        set_alias = description is not None and description != alias
        set_state = was_up != (state == "up")
        restore = (members(port) - routes(port)) if state == "up" else set()
        changed = set_alias or set_state or bool(restore)
        if not module.check_mode:
            if set_alias:
                run("ip", "link", "set", "dev", port, "alias", description)
            if set_state:
                run("ip", "link", "set", "dev", port, state)
            change_routes(port, restore, set())
        after = link(port)
    except RouterError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(
        changed=changed,
        port=port,
        up="UP" in after.get("flags", []),
        was_up=was_up,
        description=after.get("ifalias", ""),
        routes_restored=sorted(restore),
    )


if __name__ == "__main__":
    main()
