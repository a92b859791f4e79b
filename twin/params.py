"""Parameters of the cost model and the scenario thresholds.

Defaults follow OFM (Sun et al., JSAC 2018), the measurements DeepMigration builds on:
OpenNF moves n flows in about 39.2 + 2.95·n ms, Prads-like NFs add 50 ms of processing
latency, and per-flow SLAs are drawn uniformly from 70 to 110 ms. The penalty weights are
in the cost model's unit, the millisecond of latency (docs/model.md explains the choice).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from twin._numbers import check_numbers


class ParamsError(ValueError):
    """A cost parameter or threshold that is not a finite number in its range; the message names it."""


@dataclass(frozen=True)
class CostParams:
    """δ, β, R and ω of the paper plus the latency model they are applied to."""

    delta: float = 100.0
    """δ: basic penalty of one SLA violation (eq. 2), in ms-equivalents."""
    beta: float = 1.0
    """β: weight of each millisecond of latency in eq. (2)."""
    resource_cost: float = 1000.0
    """R: cost of one more active instance (C_R = R·ΔN); removing one earns R."""
    omega: float = 100_000.0
    """ω: penalty per unit of utilisation beyond Th_high or below Th_low, per instance."""
    migration_base_ms: float = 39.2
    """Fixed part of the OpenNF move time measured by OFM."""
    migration_per_flow_ms: float = 2.95
    """Per-flow part of the OpenNF move time measured by OFM."""
    processing_ms: float = 50.0
    """la_p: processing latency of an NF instance."""
    sla_min_ms: float = 70.0
    sla_max_ms: float = 110.0

    def __post_init__(self) -> None:
        for f in fields(self):
            check_numbers(f"cost parameter {f.name}", getattr(self, f.name), error=ParamsError)
        if self.sla_max_ms < self.sla_min_ms:
            raise ParamsError(f"sla_max_ms {self.sla_max_ms} is below sla_min_ms {self.sla_min_ms}")

    @property
    def single_flow_migration_ms(self) -> float:
        """la_ij of one flow: the OpenNF time of a batch of one."""
        return self.migration_base_ms + self.migration_per_flow_ms


@dataclass(frozen=True)
class Thresholds:
    """Th_high, Th_low (utilisations, fractions of capacity) and Th_var (variance of utilisation)."""

    high: float = 0.6
    low: float = 0.1
    var: float = 0.01

    def __post_init__(self) -> None:
        for f in fields(self):
            check_numbers(f"threshold {f.name}", getattr(self, f.name), error=ParamsError)
        if not 0.0 <= self.low < self.high <= 1.0:
            raise ParamsError(f"thresholds need 0 <= low < high <= 1, got low={self.low}, high={self.high}")
