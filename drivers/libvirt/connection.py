"""libvirt's error boundary and one connection per driver, reopened when found dead.

libvirt's errors cross into ours in one place, ``translated``; a call that
fails because the connection died is temporary, whatever code libvirt gave.
Nothing happens at import: libvirt's default error printer is silenced, and
its event loop (which keepalive needs) started, on the first connection.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import libvirt

from drivers.base import PermanentError, TemporaryError, Unsupported

TEMPORARY_CODES = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
}
UNSUPPORTED_CODES = {libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED}
CALLS_PER_CLIENT = 5  # libvirtd serves 5 calls at once per client


@contextmanager
def translated(action: str) -> Iterator[None]:
    """The libvirt error boundary: every libvirt call of the driver runs inside it.

    libvirt's message is kept as it is; whoever stores or shows it redacts it
    (a URI in it may carry a password).
    """
    try:
        yield
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        message = f"{action}: {exc.get_error_message()}"
        if code in UNSUPPORTED_CODES:
            raise Unsupported(message) from exc
        if code in TEMPORARY_CODES:
            raise TemporaryError(message, delay=10.0) from exc
        raise PermanentError(message) from exc


def is_test_uri(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] == "test"


def alive(connection: libvirt.virConnect) -> bool:
    try:
        return bool(connection.isAlive())
    except libvirt.libvirtError:
        return False


class Connection:
    """One connection to ``uri``, at most ``CALLS_PER_CLIENT`` calls on it at once."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.current: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._calls = threading.BoundedSemaphore(CALLS_PER_CLIENT)

    def get(self) -> libvirt.virConnect:
        """The open connection, reopened when found dead."""
        with self._lock:
            if self.current is not None and alive(self.current):
                return self.current
            if self.current is not None:
                with suppress(libvirt.libvirtError):
                    self.current.close()
            with translated(f"connect to {self.uri}"):
                self.current = _open(self.uri)
            return self.current

    @contextmanager
    def call(self, action: str) -> Iterator[libvirt.virConnect]:
        """A bounded call on a live connection; a dead connection makes any failure temporary."""
        with self._calls:
            connection = self.get()
            try:
                with translated(action):
                    yield connection
            except PermanentError as exc:
                if alive(connection):
                    raise
                raise TemporaryError(f"{exc} (connection lost)", delay=5.0) from exc


_setup = threading.Lock()
_events_running = False
_handler_set = False


def _open(uri: str) -> libvirt.virConnect:
    """Remote connections get keepalive, so a dead libvirtd is noticed in seconds, not hours."""
    _silence_errors()
    if uri.startswith("test:"):
        return libvirt.open(uri)
    _run_event_loop()
    connection = libvirt.open(uri)
    connection.setKeepAlive(5, 3)
    return connection


def _silence_errors() -> None:
    """libvirt prints every error to stderr by default; ours are raised, not printed."""
    global _handler_set
    with _setup:
        if not _handler_set:
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _handler_set = True


def _run_event_loop() -> None:
    """libvirt's keepalive needs its event loop turning in some thread; one per process."""
    global _events_running
    with _setup:
        if _events_running:
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_turn_events, name="libvirt-events", daemon=True).start()
        _events_running = True


def _turn_events() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()
