"""Who is calling and what they may do: API tokens, tickets with CSRF tokens, ACL checks.

As pve-manager's ``auth_handler``: a ``PVEAuthCookie`` ticket (cookie, or in the
Authorization header) wins over an ``Authorization: PVEAPIToken=USER@REALM!ID=SECRET``
header; no credentials → 401 "No ticket"; bad ones → 401 "Authentication failed!".
Writes with a ticket need the ``CSRFPreventionToken`` header ("Permission denied - invalid
csrf token"); tokens never do. ``/access/ticket`` needs no authentication.

Permission checks port ``RPCEnvironment::exec_api2_perm_check`` ("and", "or", "perm" with
``any`` and ``require_param``; ``user`` "all"/"world"). Privileges come from the ACL the
lab configures: one role per principal on ``/`` (propagating), tokens with privilege
separation (their own role, not the user's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lab.pve.state import ApiError

ADMINISTRATOR = frozenset({
    "Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate",
    "Datastore.Audit", "Group.Allocate", "Mapping.Audit", "Mapping.Modify", "Mapping.Use",
    "Permissions.Modify", "Pool.Allocate", "Pool.Audit", "Realm.Allocate",
    "Realm.AllocateUser", "SDN.Allocate", "SDN.Audit", "SDN.Use", "Sys.AccessNetwork",
    "Sys.Audit", "Sys.Console", "Sys.Incoming", "Sys.Modify", "Sys.PowerMgmt",
    "Sys.Syslog", "User.Modify", "VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone",
    "VM.Config.CDROM", "VM.Config.CPU", "VM.Config.Cloudinit", "VM.Config.Disk",
    "VM.Config.HWType", "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options",
    "VM.Console", "VM.GuestAgent.Audit", "VM.GuestAgent.FileRead",
    "VM.GuestAgent.FileWrite", "VM.GuestAgent.FileSystemMgmt", "VM.GuestAgent.Unrestricted",
    "VM.Migrate", "VM.PowerMgmt", "VM.Replicate", "VM.Snapshot", "VM.Snapshot.Rollback",
})
AUDITOR = frozenset({"Datastore.Audit", "Mapping.Audit", "Pool.Audit", "SDN.Audit",
                     "Sys.Audit", "VM.Audit", "VM.GuestAgent.Audit"})
TOKEN_HEADER = re.compile(r"^PVEAPIToken=(?P<user>[^!\s]+)!(?P<token>[^=\s]+)=(?P<secret>\S+)$")


@dataclass(frozen=True)
class Principal:
    """The authenticated caller; ``token`` is None for a ticket session."""

    user: str
    token: str | None
    privileges: frozenset[str]

    @property
    def userid(self) -> str:
        return f"{self.user}!{self.token}" if self.token else self.user


@dataclass
class Realm:
    """Users, passwords, tokens and their privileges; tickets handed out so far."""

    passwords: dict[str, str] = field(default_factory=dict)
    user_privs: dict[str, frozenset[str]] = field(default_factory=dict)
    tokens: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)  # id → secret
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def login(self, username: str, password: str, now: int) -> dict[str, str]:
        """``POST /access/ticket``: a signed ticket and its CSRF token, or 401."""
        expected = self.passwords.get(username)
        if expected is None or not hmac.compare_digest(expected, password):
            raise ApiError(401, "authentication failure")
        plain = f"PVE:{username}:{now:08X}"
        return {"username": username, "ticket": f"{plain}::{self._sign(plain)}",
                "CSRFPreventionToken": self._csrf(username, now), "clustername": "lab"}

    def _sign(self, text: str) -> str:
        digest = hmac.new(self.key, text.encode(), hashlib.sha256).digest()
        return base64.b64encode(digest).decode()

    def _csrf(self, username: str, stamp: int) -> str:
        return f"{stamp:08X}:{self._sign(f'{stamp:08X}:{username}')[:43]}"

    def from_ticket(self, ticket: str, csrf: str | None, write: bool) -> Principal:
        plain, _, signature = ticket.partition("::")
        parts = plain.split(":")
        if len(parts) != 3 or not hmac.compare_digest(self._sign(plain), signature):
            raise ApiError(401, "Authentication failed!")
        user = parts[1]
        if write and not (csrf and hmac.compare_digest(csrf, self._csrf(user, int(parts[2], 16)))):
            raise ApiError(401, "Permission denied - invalid csrf token")
        return Principal(user, None, self.user_privs.get(user, frozenset()))

    def from_token(self, header: str) -> Principal:
        found = TOKEN_HEADER.match(header)
        if not found:
            raise ApiError(401, "Authentication failed!")
        tokenid = f"{found['user']}!{found['token']}"
        known = self.tokens.get(tokenid)
        if known is None or not hmac.compare_digest(known[0], found["secret"]):
            raise ApiError(401, "Authentication failed!")
        return Principal(found["user"], found["token"], known[1])


def authenticate(realm: Realm, headers: Mapping[str, str], cookies: Mapping[str, str],
                 method: str) -> Principal:
    """The caller of a request, or the 401 PVE answers."""
    auth_header = headers.get("authorization", "")
    ticket = cookies.get("PVEAuthCookie")
    if not ticket and auth_header.startswith("PVEAuthCookie="):
        ticket = auth_header.split("=", 1)[1]
    if ticket:
        return realm.from_ticket(ticket, headers.get("csrfpreventiontoken"), method != "GET")
    if auth_header.startswith("PVEAPIToken="):
        return realm.from_token(auth_header)
    raise ApiError(401, "No ticket")


def perm_error(what: str = "") -> ApiError:
    """``raise_perm_exc``: 403 "Permission check failed (<what>)"."""
    return ApiError(403, f"Permission check failed ({what})" if what else
                    "Permission check failed")


def check_permissions(rules: Mapping[str, Any], caller: Principal | None,
                      params: Mapping[str, Any]) -> None:
    """``check_api2_permissions`` for a schema ``permissions`` entry."""
    if rules.get("user") == "world":
        return
    if caller is None:
        raise perm_error("user != null")
    if rules.get("user") == "all":
        return
    if "check" not in rules:
        raise perm_error()
    _run_check(rules["check"], caller, params, noerr=False)


def _run_check(check: Sequence[Any], caller: Principal, params: Mapping[str, Any],
               noerr: bool) -> bool:
    test = check[0]
    if test == "and":
        return all(_run_check(sub, caller, params, noerr=False) for sub in check[1:])
    if test == "or":
        if any(_run_check(sub, caller, params, noerr=True) for sub in check[1:]):
            return True
        if noerr:
            return False
        raise perm_error()
    if test == "perm":
        return _perm(check, caller, params, noerr)
    raise perm_error(f"unsupported check {test!r}")


def _perm(check: Sequence[Any], caller: Principal, params: Mapping[str, Any],
          noerr: bool) -> bool:
    path_template, privs = check[1], list(check[2])
    options = dict(zip(check[3::2], check[4::2], strict=False))
    needed = options.get("require_param")
    if needed and params.get(needed) is None:
        if noerr:
            return False
        raise perm_error()
    path = re.sub(r"\{(\w+)\}", lambda m: str(params.get(m.group(1), "")), path_template)
    path = "/" + "/".join(p for p in path.split("/") if p)
    held = [p for p in privs if p in caller.privileges]
    ok = bool(held) if options.get("any") else len(held) == len(privs)
    if ok or noerr:
        return ok
    missing = "|".join(privs) if options.get("any") else next(
        p for p in privs if p not in caller.privileges)
    raise perm_error(f"{path}, {missing}")


def require(caller: Principal, path: str, *privs: str) -> None:
    """An in-handler check (``$rpcenv->check``) for calls whose schema says ``user: all``."""
    for priv in privs:
        if priv not in caller.privileges:
            raise perm_error(f"{path}, {priv}")
