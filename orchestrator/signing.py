"""Signed hooks: HMAC-SHA256 over "timestamp.raw-body", in both directions.

The sender puts the Unix time in ``X-Orchestrator-Timestamp`` and
``sha256=<hex>`` of HMAC-SHA256(secret, f"{timestamp}.{body}") in
``X-Orchestrator-Signature``. A request is taken only when some active
secret (several may be, for rotation) gives the same digest, compared in
constant time, and its timestamp is at most 300 s old and at most 60 s
ahead. Secrets never appear in an error.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime

TIMESTAMP_HEADER = "X-Orchestrator-Timestamp"
SIGNATURE_HEADER = "X-Orchestrator-Signature"
MAX_AGE_SECONDS = 300
MAX_AHEAD_SECONDS = 60


class SignatureError(Exception):
    """A request whose signature or timestamp cannot be trusted."""


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signed_headers(secret: bytes, timestamp: int, body: bytes) -> dict[str, str]:
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}


def verify(
    secrets: Sequence[bytes],
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: datetime,
) -> None:
    if not timestamp or not signature:
        raise SignatureError("missing signature or timestamp header")
    try:
        sent = int(timestamp)
    except ValueError:
        raise SignatureError("the timestamp is not a Unix time") from None
    age = now.timestamp() - sent
    if age > MAX_AGE_SECONDS:
        raise SignatureError(f"stale: signed {int(age)} s ago (at most {MAX_AGE_SECONDS})")
    if -age > MAX_AHEAD_SECONDS:
        raise SignatureError(f"dated {int(-age)} s in the future (at most {MAX_AHEAD_SECONDS})")
    matches = [hmac.compare_digest(sign(s, sent, body), signature) for s in secrets]
    if not any(matches):
        raise SignatureError("signature does not match")
