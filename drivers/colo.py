"""A colocated box as the lifecycle sees a machine: the customer's own hardware behind a port.

The box is the customer's; the provider holds only its uplink, a port of a
router or switch (``Uplink``). So every lifecycle word is about that port:

    inspect    the port's real state: down means suspended (network cut);
               down with the "terminated" description means terminated
    create     open the port (its addresses are routed by the assign step)
    suspend    shut the port (port_down, or cut_network: the same here)
    resume     open it again; its routes come back with it
    archive    shut the port and say so in its description; nothing is wiped
    restore    open it again
    purge      refused: colocation hardware is never wiped; the lifecycle
               hands it to an operator instead (hand_over)
    bind       route exactly the service's addresses to the port

Nothing is kept here: the port's state and description on the device are
the state, read every time.
"""

from __future__ import annotations

from drivers.base import (
    Capability,
    ComputeDriver,
    MachineSpec,
    Observed,
    Outcome,
    PermanentError,
    Power,
    ServiceRef,
    Unsupported,
    Uplink,
)

CUT_METHODS = frozenset({"port_down", "cut_network"})
TERMINATED = "terminated, hardware kept"


class ColoCompute(ComputeDriver):
    capabilities = frozenset(
        {
            Capability.CREATE,
            Capability.SUSPEND_PORT_DOWN,
            Capability.SUSPEND_CUT_NETWORK,
            Capability.ARCHIVE,
            Capability.RESTORE,
            Capability.BIND_ADDRESSES,
        }
    )
    behind_uplink = True

    def __init__(self, uri: str = "", *, uplink: Uplink) -> None:
        """``uri`` is unused (a colocated box has no API of its own); the uplink is everything."""
        self.uplink = uplink

    def inspect(self, ref: ServiceRef) -> Observed:
        state = self.uplink.network.port_state(self.uplink.router, self.uplink.port)
        if not state.up and state.description.endswith(TERMINATED):
            return Observed(Power.ABSENT, archived=True, data_present=True)
        return Observed(
            Power.RUNNING, network_cut=not state.up, data_present=True, addresses=state.routes
        )

    def create(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        outcome = self._open(ref)
        if spec.addresses:
            self.bind_addresses(ref, spec.addresses)
        return outcome

    def suspend(self, ref: ServiceRef, method: str) -> Outcome:
        if method not in CUT_METHODS:
            raise Unsupported(f"a colocated box is suspended by port_down, not {method}")
        return self._port(ref, False, f"{ref.name}: suspended")

    def resume(self, ref: ServiceRef) -> Outcome:
        return self._open(ref)

    def archive(self, ref: ServiceRef) -> Outcome:
        """Terminate: the port stays shut and says why; the customer's disks are theirs."""
        return self._port(ref, False, f"{ref.name}: {TERMINATED}")

    def restore(self, ref: ServiceRef, spec: MachineSpec) -> Outcome:
        return self.create(ref, spec)

    def purge(self, ref: ServiceRef) -> Outcome:
        raise PermanentError(
            f"{ref.name} is colocated hardware, the customer's own: it is never wiped; "
            "the lifecycle hands it to an operator instead (hand_over)"
        )

    def bind_addresses(self, ref: ServiceRef, addresses: tuple[str, ...]) -> Outcome:
        return self.uplink.network.route(self.uplink.router, self.uplink.port, addresses)

    def _open(self, ref: ServiceRef) -> Outcome:
        return self._port(ref, True, ref.name)

    def _port(self, ref: ServiceRef, up: bool, description: str) -> Outcome:
        outcome = self.uplink.network.set_port(
            self.uplink.router, self.uplink.port, up, description
        )
        return Outcome(outcome.changed, self.inspect(ref), outcome.detail, outcome.evidence)


__all__ = ["ColoCompute"]
