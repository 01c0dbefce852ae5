"""Keeping secrets out of logs, the journal, the audit trail and errors.

Anything stored or printed passes through ``redact``: values under a key
that names a secret are replaced, and credentials embedded in URLs
(``scheme://user:password@host``) lose their password.
"""

from __future__ import annotations

import re
from typing import Any

SECRET_KEYS = re.compile(r"(pass(word)?|secret|token|key|credential|auth)", re.IGNORECASE)
URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", re.IGNORECASE)
MASK = "***"


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: MASK if _secret_key(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    return URL_PASSWORD.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)


def _secret_key(key: object) -> bool:
    return isinstance(key, str) and key != "idempotency_key" and bool(SECRET_KEYS.search(key))
