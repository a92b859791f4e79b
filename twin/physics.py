"""What the testbed does that the controller's view does not say, as `twin.sim.BatchedTwin` steps it: each
instance's service rate and buffer (the fluid queue's μ and B), the share κ of the counted load that reaches
the NF, the moves' durations and how new flows land.

`Physics()` is the hand-set twin (`fluid`): the configured capacity and buffer, κ = 1, la_ij of the twin's
`migration_ms` and OFM's batch time, round-robin steering. `twin.choice.calibrate` sets the testbed's fitted
values (`calibrated`; docs/twin.md, "The closed loop").
"""
from __future__ import annotations

from dataclasses import dataclass

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
    """c: a move also takes c × its source's queueing delay."""
    move_batch: str = "period"
    """n of a + b·n: the moves of the period ('period') or of the pair ('pair')."""
    least_utilised_share: float = 0.0
    """φ: the share of a step's new flows that land on the least utilised instance, the rest dealt round robin."""

    def queue(self, capacity: torch.Tensor, buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, B) of the fluid queue, given the configured capacity and buffer."""
        return (capacity if self.service is None else self.service), (buffer if self.buffer is None else self.buffer)

    def move_ms(self, pair: torch.Tensor, moved: torch.Tensor, drain_ms: torch.Tensor, n: int) -> torch.Tensor:
        """[B, F] the fitted duration a + b·n + c·la_q(source) of each flow's move (`pair` = src·N + dst): the
        moves of one period, run together on the testbed, each take that long. `drain_ms`: la_q of its source."""
        if self.move_batch == "period":
            count = moved.sum(-1, keepdim=True).expand_as(pair)
        else:
            counts = torch.zeros(pair.shape[0], n * n, dtype=torch.long, device=pair.device)
            count = counts.scatter_add_(1, pair, moved.long()).gather(1, pair)
        n_moves = count.clamp(min=1).to(drain_ms.dtype)
        # OFM's a + b·n (twin.cost.batch_migration_ms) with the pair's fitted a and b
        return (self.move_a_ms.flatten(1).gather(1, pair) + self.move_b_ms.flatten(1).gather(1, pair) * n_moves
                + self.move_drain_factor * drain_ms)
