"""The NF instances as the controller knows them: their control channel and what they last reported."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from controller_app.config import NFDescription
from twin.flow import FiveTuple


class NFChannel(Protocol):
    """The NF control channel (mininet_topos.nf_channel.NFClient); keys are canonical 5-tuples; failures raise."""

    def report(self) -> dict: ...
    def hold(self, key: FiveTuple) -> Any: ...
    def export(self, key: FiveTuple, quiet_ms: float) -> Any:
        """Once none of the flow's packets is queued or came for `quiet_ms` ms, remove and return its state."""
    def import_(self, key: FiveTuple, state: Any) -> Any:
        """Merge `state`, what another NF's `export` returned for the flow (None: nothing), into this NF's."""
    def acknowledge(self, key: FiveTuple, transfer: str) -> Any:
        """The state this NF exported as `transfer` was imported elsewhere: it may drop the copy it keeps."""
    def release(self, key: FiveTuple) -> Any: ...
    def activate(self) -> Any: ...
    def deactivate(self) -> Any: ...


@dataclass
class NFRuntime:
    desc: NFDescription
    channel: NFChannel
    active: bool
    alive: bool = False
    """Whether the NF answered its last report; none is until its first answer, so no flow is steered
    to an instance whose process has not come up yet."""
    last_report: dict | None = None
    last_error: str = ""
    missed_reports: int = 0
    """Consecutive periods whose report timed out; while above 0 (and alive) the NF is stalled."""
    flows_with_state: set[str] = field(default_factory=set)
    """Flow ids of the per-flow state the NF reported last."""
    queued: dict[str, tuple[int, int]] | None = None
    """Flow id -> (packets queued, drain_packets) of the flows with frames in the NF's buffer at its last report
    (the report's `queued`); None when the NF does not report it."""

    @property
    def id(self) -> str:
        return self.desc.instance

    @property
    def stalled(self) -> bool:
        """Alive, but its last report timed out: no new flow lands on it and no move touches it, while its
        flows stay (their queued packets would be overtaken elsewhere) until it answers or is declared dead."""
        return self.alive and self.missed_reports > 0

    @property
    def usable(self) -> bool:
        return self.alive and self.active and not self.stalled

    @property
    def capacity_pps(self) -> float:
        """The capacity the NF reports, or the cluster description's until it has reported one."""
        reported = (self.last_report or {}).get("capacity_pps")
        return float(reported) if reported else self.desc.capacity_pps
