"""Custom HTTP reason phrases under uvicorn's h11 protocol.

PVE reports errors in the status line ("400 Parameter verification failed.", "500 VM is
locked (backup)") and clients such as proxmoxer read them from there. uvicorn writes the
standard phrase from ``h11_impl.STATUS_PHRASES``; this swaps that table for one that
answers with the phrase the application set for the current request (a context variable:
the app's ``send`` runs in the request's own task, so requests never see each other's).
"""

from __future__ import annotations

from contextvars import ContextVar

from uvicorn.protocols.http import h11_impl

_REASON: ContextVar[str | None] = ContextVar("pve_reason", default=None)


class _Phrases(dict[int, bytes]):
    def __getitem__(self, status: int) -> bytes:
        reason = _REASON.get()
        if reason is None:
            return super().__getitem__(status)
        return reason.encode("latin-1", "replace")


def set_reason(reason: str) -> None:
    """The phrase for the response about to start; one line, as a status line must be."""
    _REASON.set(" ".join(reason.split()))


def install() -> None:
    if not isinstance(h11_impl.STATUS_PHRASES, _Phrases):
        h11_impl.STATUS_PHRASES = _Phrases(h11_impl.STATUS_PHRASES)
