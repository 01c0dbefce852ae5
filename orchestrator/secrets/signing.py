"""Signed hooks (scheme v2): HMAC-SHA256 over what the request does, in both directions.

The sender puts in three headers:

- ``X-Orchestrator-Timestamp``: the Unix time, in seconds;
- ``X-Orchestrator-Request-Id``: an id of its choosing, new for every request
  (1-80 of ``A-Z a-z 0-9 _ . : -``; a UUID does);
- ``X-Orchestrator-Signature``: ``sha256=<hex>`` of HMAC-SHA256(secret, m) where
  m = "v2\\nMETHOD\\nPATH\\nTIMESTAMP\\nREQUEST_ID\\n" followed by the raw body.

PATH is the path as sent, with ``?query`` if there is one. Signing the
method and path means a signature captured on its way to one service's
command is worthless at another's; signing the request id lets the
receiver refuse a replay by its id, so two different requests with the
same body in the same second are both taken. A request is taken only when
some active secret (several may be, for rotation) gives the same digest,
compared in constant time, and its timestamp is at most 300 s old and at
most 60 s ahead. The v1 scheme ("timestamp.body") is not accepted: it
could be replayed at another path. Secrets never appear in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from urllib.parse import urlsplit

TIMESTAMP_HEADER = "X-Orchestrator-Timestamp"
REQUEST_ID_HEADER = "X-Orchestrator-Request-Id"
SIGNATURE_HEADER = "X-Orchestrator-Signature"
SCHEME = "v2"
MAX_AGE_SECONDS = 300
MAX_AHEAD_SECONDS = 60
UNIX_TIME = re.compile(r"^[0-9]{1,12}$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")


class SignatureError(Exception):
    """A request whose signature, timestamp or request id cannot be trusted."""


def message(method: str, path: str, timestamp: int, request_id: str, body: bytes) -> bytes:
    """The bytes signed: everything that says what the request does, then its body."""
    head = f"{SCHEME}\n{method.upper()}\n{path}\n{timestamp}\n{request_id}\n"
    return head.encode() + body


def sign(
    secret: bytes, method: str, path: str, timestamp: int, request_id: str, body: bytes
) -> str:
    signed = message(method, path, timestamp, request_id, body)
    return "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()


def signed_headers(
    secret: bytes,
    method: str,
    path: str,
    timestamp: int,
    body: bytes,
    request_id: str | None = None,
) -> dict[str, str]:
    """The three headers of a signed request; a fresh request id unless one is given."""
    rid = request_id or uuid.uuid4().hex
    return {
        TIMESTAMP_HEADER: str(timestamp),
        REQUEST_ID_HEADER: rid,
        SIGNATURE_HEADER: sign(secret, method, path, timestamp, rid, body),
    }


def target(url: str) -> str:
    """The PATH a sender signs for ``url``: its path as sent, with ``?query`` if any."""
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def verify(
    secrets: Sequence[bytes],
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    now: datetime,
) -> str:
    """The request id of a request signed by one of ``secrets``; else a SignatureError."""
    timestamp, request_id, signature = (
        headers.get(name) for name in (TIMESTAMP_HEADER, REQUEST_ID_HEADER, SIGNATURE_HEADER)
    )
    if not timestamp or not signature or not request_id:
        raise SignatureError("missing signature, timestamp or request id header")
    if not REQUEST_ID.match(request_id):
        raise SignatureError("the request id is not 1-80 of A-Z a-z 0-9 _ . : -")
    sent = _fresh(timestamp, now)
    digests = [sign(s, method, path, sent, request_id, body) for s in secrets]
    if not any(hmac.compare_digest(d, signature) for d in digests):
        raise SignatureError("signature does not match (scheme v2: method, path, time, id, body)")
    return request_id


def _fresh(timestamp: str, now: datetime) -> int:
    if not UNIX_TIME.match(timestamp):
        raise SignatureError("the timestamp is not a Unix time in seconds")
    sent = int(timestamp)
    age = now.timestamp() - sent
    if age > MAX_AGE_SECONDS:
        raise SignatureError(f"stale: signed {int(age)} s ago (at most {MAX_AGE_SECONDS})")
    if -age > MAX_AHEAD_SECONDS:
        raise SignatureError(f"dated {int(-age)} s in the future (at most {MAX_AHEAD_SECONDS})")
    return sent
