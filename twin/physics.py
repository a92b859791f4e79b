"""What the testbed does that the controller's view does not say, as `twin.sim.BatchedTwin` steps it: each
instance's service rate and buffer (the fluid queue's μ and B), the share κ of the counted load that reaches
the NF, the moves' durations and how new flows land.

`Physics()` is the hand-set twin (`fluid`): the configured capacity and buffer, κ = 1, la_ij of the twin's
`migration_ms` and OFM's batch time, round-robin steering. `twin.choice.calibrate` sets the testbed's fitted
values (`calibrated`; docs/twin.md, "The closed loop").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Physics:
    service: torch.Tensor | None = None
    """[B, N] μ of the fluid queue, packets/s (None: the configured capacity)."""
    buffer: torch.Tensor | None = None
    """[B, N] B of the fluid queue, packets (None: the configured buffer; constraint (5) always uses that)."""
    arrival_ratio: float = 1.0
    """κ: the queue is fed κ·load."""
    move_a_ms: torch.Tensor | None = None
    move_b_ms: torch.Tensor | None = None
    """[B, N, N] a and b of a move's a + b·n (None: la_ij of `migration_ms`, OFM's batch time)."""
    move_drain_factor: float = 0.0
    """c: a move also takes c × the drain wait of its batch (`batch_wait_ms`)."""
    move_batch: str = "period"
    """n of a + b·n: the moves of the period ('period') or of the pair ('pair')."""
    least_utilised_share: float = 0.0
    """φ: the share of a step's new flows that land on the least utilised instance, the rest dealt round robin."""

    def queue(self, capacity: torch.Tensor, buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, B) of the fluid queue, given the configured capacity and buffer."""
        return (capacity if self.service is None else self.service), (buffer if self.buffer is None else self.buffer)

    def move_ms(self, pair: torch.Tensor, moved: torch.Tensor, wait_ms: torch.Tensor, n: int) -> torch.Tensor:
        """[B, F] the fitted duration a + b·n + c·w of each flow's move (`pair` = src·N + dst): the moves of one
        period, run together on the testbed, each take that long. `wait_ms`: each flow's drain wait
        (`flow_wait_ms`); w is the largest over the episode's moved flows."""
        if self.move_batch == "period":
            count = moved.sum(-1, keepdim=True).expand_as(pair)
        else:
            counts = torch.zeros(pair.shape[0], n * n, dtype=torch.long, device=pair.device)
            count = counts.scatter_add_(1, pair, moved.long()).gather(1, pair)
        n_moves = count.clamp(min=1).to(wait_ms.dtype)
        # OFM's a + b·n (twin.cost.batch_migration_ms) with the pair's fitted a and b
        return (self.move_a_ms.flatten(1).gather(1, pair) + self.move_b_ms.flatten(1).gather(1, pair) * n_moves
                + self.move_drain_factor * batch_wait_ms(wait_ms, moved, -1, keepdim=True))


def flow_wait_ms(rate_pps, la_q_ms, drain_packets=None, capacity_pps=None):
    """How long a move's export waits for the flow's packets still queued at its source (the source serves them
    first; controller_app.execution): the source's `drain_packets` (its report) at `capacity_pps`, in ms, where
    reported (finite); else the expectation la_q · P(a packet of the flow is queued) = la_q·(1 − e^(−r·la_q)),
    a flow of rate r at a FIFO of queueing delay la_q having its last packet near the tail when it has one.
    numpy arrays or torch tensors."""
    xp = torch if isinstance(la_q_ms, torch.Tensor) else np
    expected = la_q_ms * -xp.expm1(-rate_pps * la_q_ms / 1000.0)
    if drain_packets is None:
        return expected
    reported = xp.isfinite(drain_packets)
    return xp.where(reported, 1000.0 * xp.nan_to_num(drain_packets) / capacity_pps, expected)


def batch_wait_ms(wait_ms, moved, axis: int = -1, keepdim: bool = False):
    """w of a batch: the largest drain wait of its moved flows (0 without any). The moves of a period export
    one after another while every source drains at once, so the batch waits for its slowest drain."""
    if isinstance(wait_ms, torch.Tensor):
        return torch.where(moved, wait_ms, 0.0).amax(axis, keepdim=keepdim)
    return np.where(moved, wait_ms, 0.0).max(axis=axis, keepdims=keepdim, initial=0.0)
