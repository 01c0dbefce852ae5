"""Keeping secrets out of logs, the journal, the audit trail and errors.

Anything stored or printed passes through ``redact``: values under a key
that names a secret are replaced, credentials embedded in URLs
(``scheme://user:password@host``, ``?password=...``) lose their password, so do credential
headers an endpoint echoes (``Authorization: ...``, a Proxmox
``PVEAPIToken=user!id=secret``), and every secret
this process has resolved (``register_secret``, called by
``orchestrator.secrets.credentials``) is masked wherever it appears, so a driver
error quoting a password by accident is scrubbed too.
"""

from __future__ import annotations

import re
from typing import Any

# Key names that hold secrets, as whole words of a snake_case name: "password",
# "ssh_key", "api_token", but not "passes" or "keyboard".
SECRET_KEYS = re.compile(
    r"(^|[_-])(pass|password|passwd|passphrase|secret|token|key|credentials?|auth|authorization)"
    r"($|[_-])",
    re.IGNORECASE,
)
URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", re.IGNORECASE)
# Credentials an endpoint echoes back in an error, even ones this process never
# resolved: an HTTP credential header's value, a Proxmox API token's secret part.
HEADER_CREDENTIAL = re.compile(
    r"(?P<name>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<value>(?![\s\"']*PVEAPIToken=)[^\r\n\"',}]+)",
    re.IGNORECASE,
)
# A secret passed as a URI's query parameter (a libvirt URI's ``?password=``).
QUERY_SECRET = re.compile(r"(?P<name>[?&;](?:password|passwd|pass|secret|token)=)[^&;\s'\"]+", re.I)
PVE_TOKEN = re.compile(r"(?P<name>PVEAPIToken=[^=\s\"']+=)[^\s\"',}]+")
MASK = "***"
# Shorter values would mask ordinary words; real secrets are longer.
MIN_REGISTERED_LENGTH = 6

_registered: set[str] = set()


def register_secret(value: str) -> None:
    if len(value) >= MIN_REGISTERED_LENGTH:
        _registered.add(value)
        _registered.update(line for line in value.splitlines() if len(line) >= 16)


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: MASK if _secret_key(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    text = URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = QUERY_SECRET.sub(lambda m: f"{m.group('name')}{MASK}", text)
    text = PVE_TOKEN.sub(lambda m: f"{m.group('name')}{MASK}", text)
    text = HEADER_CREDENTIAL.sub(lambda m: f"{m.group('name')}{MASK}", text)
    for secret in sorted(_registered, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _secret_key(key: object) -> bool:
    return isinstance(key, str) and key != "idempotency_key" and bool(SECRET_KEYS.search(key))
