"""The lab's BMC servers built on pyghmi's server side (ipmi_sim is the other kind).

    python -m lab.bmcs vbmc DOMAIN PORT PASSWORD_FILE [LIBVIRT_URI]
        virtualbmc in front of a libvirt guest, as Ironic's test setups run it
    python -m lab.bmcs farm FIRST_PORT COUNT PASSWORD_FILE
        COUNT lightweight BMCs on consecutive loopback ports, power kept in memory
        (the benchmark's 500 BMCs)
    python -m lab.bmcs zero PORT PASSWORD_FILE
        a BMC that offers only cipher suite 0 (no authentication, no integrity)
    python -m lab.bmcs hang PORT PASSWORD_FILE
        a BMC that powers on, but hangs for good on a power off or shutdown
        (as wedged BMCs do): every request after it goes unanswered

The password comes from a file, never from the command line. Each prints
"ready" on stdout once its sockets are bound, then serves until killed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from pyghmi.ipmi import bmc
from pyghmi.ipmi.private import serversession

USER = "admin"


class FarmBmc(bmc.Bmc):
    """A BMC whose box is a bit of memory: enough to measure the client side."""

    def __init__(self, password: str, port: int) -> None:
        super().__init__({USER: password}, port=port, address="127.0.0.1")
        self.powered = False
        self.boot = "default"

    def get_boot_device(self) -> str:
        return self.boot

    def set_boot_device(self, bootdevice: str) -> None:
        self.boot = bootdevice

    def get_power_state(self) -> str:
        return "on" if self.powered else "off"

    def power_on(self) -> None:
        self.powered = True

    def power_off(self) -> None:
        self.powered = False

    def power_shutdown(self) -> None:
        self.powered = False

    def power_cycle(self) -> None:
        self.powered = True


class HangingBmc(FarmBmc):
    def power_off(self) -> None:
        time.sleep(10**6)

    def power_shutdown(self) -> None:
        time.sleep(10**6)


class _ZeroSuiteSession(serversession.ServerSession):
    def create_open_session_response(self, request: Any) -> bytearray:
        response: bytearray = super().create_open_session_response(request)
        for offset in (16, 24, 32):  # authentication, integrity, confidentiality: none
            response[offset] = 0
        return response


class ZeroSuiteBmc(FarmBmc):
    """Answers every Open Session request with cipher suite 0's algorithms (none, none, none)."""

    def sessionless_data(self, data: Any, sockaddr: Any) -> None:
        packet = bytearray(data)
        if len(packet) > 16 and packet[4] == 6 and packet[5] == 16:
            _ZeroSuiteSession(
                self.authdata, self.kg, sockaddr, self.serversocket, packet[16:], self.uuid,
                bmc=self,
            )
            return
        super().sessionless_data(data, sockaddr)


def _password(path: str) -> str:
    return Path(path).read_text().strip()


def main(argv: list[str]) -> None:
    kind, *args = argv
    if kind == "vbmc":
        from virtualbmc.vbmc import VirtualBMC

        domain, port, password_file, *uri = args
        VirtualBMC(
            USER, _password(password_file), int(port), "127.0.0.1", domain,
            uri[0] if uri else "qemu:///system",
        )
    elif kind == "farm":
        first, count, password_file = args
        password = _password(password_file)
        for port in range(int(first), int(first) + int(count)):
            FarmBmc(password, port)
    elif kind == "hang":
        port, password_file = args
        HangingBmc(_password(password_file), int(port))
    elif kind == "zero":
        port, password_file = args
        ZeroSuiteBmc(_password(password_file), int(port))
    else:
        raise SystemExit(__doc__)
    print("ready", flush=True)
    serve()


def serve() -> None:
    """pyghmi's server loop, kept alive past the one packet it cannot route.

    Under load a client's retransmission can reach a server session that has
    no ``sessionless_data`` handler; pyghmi raises AttributeError out of its
    loop, which would silence every BMC of this process. The packet is
    already dequeued, so dropping it is what a real BMC would do.
    """
    while True:
        try:
            bmc.Bmc.listen(timeout=30)
        except AttributeError as exc:
            print(f"lab.bmcs: dropped a packet pyghmi cannot route ({exc})", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
