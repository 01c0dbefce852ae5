"""IPMI power for dedicated boxes, through pyghmi (IPMI 2.0 / RMCP+ over UDP).

pyghmi speaks IPMI in Python, so a BMC password never lands on a command
line (ipmitool's ``-P`` would put it in ``ps``). One ``Command`` per BMC is
kept and reused (pyghmi itself keeps one session per BMC alive); many BMCs
are driven at once from a thread pool; each BMC gets one command at a time,
at least ``min_interval`` apart (cheap BMCs drop packets when rushed); each
call has a deadline, after which the BMC is marked dead for ``dead_for``
seconds so that one dead BMC never holds up the others, and its step is
retried later by the executor. A call past its deadline is abandoned: its
session is marked broken and the BMC gets a fresh lock, so the retry logs in
anew instead of queueing behind a command that may never come back.

Cipher suites: 17 (RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128) is
proposed first, 3 (the SHA1 equivalents) accepted; anything else, suite 0
(no authentication, no integrity) above all, and IPMI 1.5 sessions (no
integrity at all) are refused before a password-derived code is sent.

Why the session is patched (``_negotiate``): pyghmi's client proposes suite
17 and then "takes it for granted that the responder accepted" its proposal
(its own comment in ``_got_rmcp_response``). virtualbmc, whose server side
is pyghmi's ``serversession``, ignores the proposal and answers the Open
Session request with suite 3's algorithms, so the client computes a 32-byte
SHA256 code where the BMC sent a 20-byte SHA1 one, and login fails "in
RAKP2". ipmitool reads the algorithms the BMC chose and succeeds. The IPMI
2.0 spec (13.17) says the BMC's Open Session Response names the algorithms
for the session; we read them as ipmitool does, adopt suite 3 when the BMC
chose it, and refuse any other choice.

The patch reaches into pyghmi's private session (``_got_rmcp_response``,
``_get_session_challenge``, ``initting_sessions``, ``attemptedhash``...),
which any release may change. It was proven on the versions of
``PROVEN_PYGHMI`` (pyproject pins the same range); on any other the driver
refuses to start, loudly, rather than patch what it does not know.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import StrEnum
from importlib import metadata
from typing import Any, TypeVar

from pyghmi import exceptions as pyghmi_exceptions
from pyghmi.ipmi import command as ipmi_command
from pyghmi.ipmi.private import session as ipmi_session

from drivers.base import (
    Capability,
    Observed,
    Outcome,
    PermanentError,
    Power,
    PowerDriver,
    Secret,
    TemporaryError,
)

T = TypeVar("T")

# The pyghmi releases the session patch was proven on, [lowest, above-highest).
PROVEN_PYGHMI = ((1, 6, 19), (1, 7))
PATCHED = ("_got_rmcp_response", "_get_session_challenge", "initting_sessions")
# (authentication, integrity, confidentiality) algorithm numbers of IPMI 2.0 table 22-19.
SUITES: dict[tuple[int, int, int], int] = {(3, 4, 1): 17, (1, 1, 1): 3}
ACCEPTED_SUITES = frozenset(SUITES.values())


class BootDevice(StrEnum):
    DISK = "disk"
    PXE = "pxe"
    RESCUE = "rescue"


# What each boot device is in IPMI's boot flags. A rescue system comes over
# the network (the PXE server chooses the rescue image), as Ironic's rescue does.
IPMI_BOOT = {BootDevice.DISK: "hd", BootDevice.PXE: "network", BootDevice.RESCUE: "network"}
BOOT_SELECTORS = {0: "default", 1: "pxe", 2: "disk", 3: "disk-safe", 5: "cdrom", 6: "bios"}


@dataclass(frozen=True)
class Bmc:
    address: str
    port: int
    user: str
    password: Secret

    def __str__(self) -> str:
        return f"BMC {self.address}:{self.port}"


class IpmiPower(PowerDriver):
    """Power, boot device and identify for the BMCs of many boxes, by inventory host name."""

    capabilities = frozenset({Capability.SUSPEND_POWER_OFF})

    def __init__(
        self,
        bmcs: dict[str, Bmc],
        *,
        timeout: float = 20.0,
        min_interval: float = 0.1,
        dead_for: float = 60.0,
        workers: int = 64,
    ) -> None:
        _install_negotiation()
        self._bmcs = bmcs
        self._timeout = timeout
        self._min_interval = min_interval
        self._dead_for = dead_for
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ipmi")
        self._locks = {host: threading.Lock() for host in bmcs}
        self._last: dict[str, float] = {}
        self._dead_until: dict[str, float] = {}
        self._commands: dict[str, Any] = {}

    def power_state(self, host: str) -> Power:
        state = self._call(host, "power status", lambda c: c.get_power()["powerstate"])
        return Power.RUNNING if state == "on" else Power.OFF

    def set_power(self, host: str, power: Power) -> Outcome:
        """On or off (hard); level-triggered: nothing is sent when the box already is so."""
        if power not in (Power.RUNNING, Power.OFF):
            raise PermanentError(f"IPMI cannot make a box {power}")
        before = self.power_state(host)
        if before == power:
            return Outcome(False, Observed(before), f"{host} already {power}")
        word = "on" if power == Power.RUNNING else "off"
        self._call(host, f"power {word}", lambda c: c.set_power(word, wait=False))
        return Outcome(True, Observed(power), f"{host} powered {word}")

    def soft_off(self, host: str) -> Outcome:
        """ACPI shutdown request; the OS decides, so the caller waits and falls back to off."""
        if self.power_state(host) == Power.OFF:
            return Outcome(False, Observed(Power.OFF), f"{host} already off")
        self._call(host, "soft off", lambda c: c.set_power("shutdown", wait=False))
        return Outcome(True, Observed(Power.RUNNING), f"{host} asked to shut down")

    def cycle(self, host: str) -> Outcome:
        """Chassis power cycle (off, then on after the BMC's interval); refused when off."""
        self._call(host, "power cycle", lambda c: _raw(c, 0x00, 0x02, (0x02,)))
        return Outcome(True, Observed(Power.RUNNING), f"{host} power cycled")

    def boot_device(self, host: str) -> str:
        """The boot device selector of the boot flags (IPMI 28.13, parameter 5).

        Read from the selector bits whatever the "valid" bit says: ipmi_sim
        never sets it, and an override this driver set is what matters.
        """
        response = self._call(host, "get boot device", lambda c: _raw(c, 0x00, 0x09, (5, 0, 0)))
        selector = (response["data"][3] >> 2) & 0x0F
        return BOOT_SELECTORS.get(selector, f"selector {selector}")

    def set_boot_device(self, host: str, device: BootDevice, persistent: bool = True) -> Outcome:
        wanted = IPMI_BOOT[device]
        self._call(
            host, f"boot device {device}", lambda c: c.set_bootdev(wanted, persist=persistent)
        )
        return Outcome(True, Observed(self.power_state(host)), f"{host} boots from {device}")

    def identify(self, host: str, seconds: int = 15) -> Outcome:
        self._call(host, "identify", lambda c: c.set_identify(on=True, duration=seconds))
        return Outcome(True, Observed(self.power_state(host)), f"{host} identifying {seconds}s")

    def negotiated_suite(self, host: str) -> int:
        """The cipher suite of the live session (17 or 3), for the operator and the tests."""
        session = self._call(host, "session", lambda c: c.ipmi_session)
        return 17 if session.currhashlib is hashlib.sha256 else 3

    def close(self) -> None:
        for host in list(self._commands):
            self._forget(host)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _call(self, host: str, what: str, operation: Callable[[Any], T]) -> T:
        bmc = self._bmc(host)
        if time.monotonic() < self._dead_until.get(host, 0.0):
            raise TemporaryError(
                f"{_who(bmc, host)}: no answer recently (set aside for {self._dead_for:g}s); "
                "not tried",
                30.0,
            )
        future = self._pool.submit(self._serialised, host, bmc, what, operation)
        try:
            return future.result(timeout=self._timeout)
        except FutureTimeout:
            self._dead_until[host] = time.monotonic() + self._dead_for
            self._abandon(host)
            raise TemporaryError(
                f"{_who(bmc, host)}: {what} got no answer within {self._timeout:g}s",
                self._dead_for,
            ) from None
        except TemporaryError:
            self._dead_until[host] = time.monotonic() + self._dead_for
            raise

    def _serialised(self, host: str, bmc: Bmc, what: str, operation: Callable[[Any], T]) -> T:
        with self._locks[host]:
            wait = self._last.get(host, 0.0) + self._min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                return operation(self._command(host, bmc))
            except pyghmi_exceptions.IpmiException as exc:
                self._forget(host)
                raise _driver_error(bmc, host, what, exc) from None
            except (TypeError, AttributeError, KeyError) as exc:
                # pyghmi's shared sessions can be caught half-way through a
                # re-login by another thread; a fresh session on the retry cures it.
                self._abandon(host)
                raise TemporaryError(f"{_who(bmc, host)}: {what}: session lost ({exc})") from None
            finally:
                self._last[host] = time.monotonic()

    def _command(self, host: str, bmc: Bmc) -> Any:
        command = self._commands.get(host)
        if command is None or command.ipmi_session.broken or not command.ipmi_session.logged:
            _drop_pending_logins(bmc)
            command = ipmi_command.Command(
                bmc=bmc.address,
                userid=bmc.user,
                password=bmc.password.reveal(),
                port=bmc.port,
                keepalive=True,
            )
            self._commands[host] = command
        return command

    def _abandon(self, host: str) -> None:
        """Leave a wedged call behind: its worker ends on pyghmi's own timeout."""
        self._locks[host] = threading.Lock()
        command = self._commands.pop(host, None)
        if command is not None:  # a broken session is never handed out again by pyghmi
            command.ipmi_session.broken = True
        _drop_pending_logins(self._bmcs[host])

    def _forget(self, host: str) -> None:
        command = self._commands.pop(host, None)
        if command is not None and not command.ipmi_session.broken:
            with contextlib.suppress(Exception):  # the session is being dropped anyway
                command.ipmi_session.logout()

    def _bmc(self, host: str) -> Bmc:
        try:
            return self._bmcs[host]
        except KeyError:
            raise PermanentError(f"no BMC known for {host}") from None


def _drop_pending_logins(bmc: Bmc) -> None:
    """Forget pyghmi's half-made sessions to this BMC, so the next login is a fresh one.

    pyghmi hands a new ``Command`` any session still logging in to the same
    BMC; one left over from an abandoned call or a logout never completes,
    and every later login would join it and wait for ever.
    """
    pending = ipmi_session.Session.initting_sessions
    for key in [k for k in list(pending) if (k[0], k[3]) == (bmc.address, bmc.port)]:
        stale = pending.pop(key, None)
        if stale is not None:
            stale.broken = True


def _raw(command: Any, netfn: int, code: int, data: tuple[int, ...]) -> dict[str, Any]:
    response: dict[str, Any] = command.raw_command(netfn=netfn, command=code, data=data)
    if "error" in response:
        raise pyghmi_exceptions.IpmiException(response["error"], response.get("code", 0))
    return response


# Failures that retrying will not cure; anything else (pyghmi's "timeout", a
# bare None when a login got no answer) is taken as a BMC that may answer later.
PERMANENT_WORDS = (
    "cipher suite", "ipmi 1.5", "password", "invalid data field", "unrecognized",
    "insufficient privilege", "invalid command", "unsupported",
)


def _who(bmc: Bmc, host: str) -> str:
    return str(bmc) if host == f"{bmc.address}:{bmc.port}" else f"{bmc} of {host}"


def _driver_error(bmc: Bmc, host: str, what: str, exc: Exception) -> Exception:
    text = str(exc) if str(exc) not in ("", "None") else "no answer"
    message = f"{_who(bmc, host)}: {what} failed: {text}"
    if any(word in text.lower() for word in PERMANENT_WORDS):
        return PermanentError(message)
    return TemporaryError(message, 60.0)


_installed = threading.Lock()


def _require_proven_pyghmi(version: str) -> None:
    """Refuse a pyghmi whose private session this driver's patch was never proven on."""
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:3])
    low, high = PROVEN_PYGHMI
    missing = [name for name in PATCHED if not hasattr(ipmi_session.Session, name)]
    if not low <= numbers < high or missing:
        proven = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
        raise PermanentError(
            f"pyghmi {version} is not a version the IPMI session patch was proven on "
            f"({proven}{'; it lacks ' + ', '.join(missing) if missing else ''}): refusing "
            "to patch it; install a proven pyghmi"
        )


def _install_negotiation() -> None:
    """Make pyghmi's client honour the BMC's choice of cipher suite (see the module's text)."""
    _require_proven_pyghmi(metadata.version("pyghmi"))
    with _installed:
        session_class = ipmi_session.Session
        if getattr(session_class, "_orchestrator_negotiates", False):
            return
        original_response = session_class._got_rmcp_response
        session_class._got_rmcp_response = _negotiate(original_response)
        session_class._get_session_challenge = _refuse_ipmi15
        session_class._orchestrator_negotiates = True


def _negotiate(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def got_rmcp_response(self: Any, data: Any) -> Any:
        if _is_our_success(self, data):
            chosen = (data[16] & 0x3F, data[24] & 0x3F, data[32] & 0x3F)
            suite = SUITES.get(chosen)
            if suite is None:
                self.onlogon({"error": f"BMC chose cipher suite algorithms {chosen}: refused "
                              f"(only cipher suites 17 and 3 are accepted)"})
                return -9
            if suite == 3 and self.attemptedhash == 256:
                self.attemptedhash = 1
                self.currhashlib, self.currhashlen = hashlib.sha1, 12
        return original(self, data)

    return got_rmcp_response


def _is_our_success(session: Any, data: Any) -> bool:
    return (
        len(data) >= 36
        and data[1] == 0
        and data[0] == session.rmcptag
        and session.sessioncontext not in (None, "ESTABLISHED")
    )


def _refuse_ipmi15(self: Any) -> None:
    self.onlogon({"error": "BMC offers only IPMI 1.5 sessions (no integrity): refused"})


__all__ = ["ACCEPTED_SUITES", "Bmc", "BootDevice", "IpmiPower"]
