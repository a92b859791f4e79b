"""Which remedy a cluster needs: scale-out, scale-in, load balancing or nothing.

Section III writes the triggers on the summed load (Σ l_j ≥ Th_high, Σ l_j ≤ Th_low) while the
experiments count overloaded and underloaded *instances* against the same thresholds. We read
them together (docs/model.md): the triggers are per instance, on utilisation l_j, and the summed
form is the cluster-level load judgment of the double GNN, which decides how many instances
must be active. Scale-out wins over scale-in and load balancing because overload is what breaks
SLAs; scale-in needs the rest of the cluster to absorb an instance without crossing Th_high.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from twin.cost import load_variance
from twin.params import Thresholds
from twin.state import ClusterState


class ScenarioKind(str, enum.Enum):
    NONE = "none"
    SCALE_OUT = "scale_out"
    SCALE_IN = "scale_in"
    LOAD_BALANCE = "lb"


@dataclass(frozen=True)
class Scenario:
    kind: ScenarioKind
    overloaded: tuple[int, ...]
    """Active instances with l_j >= Th_high."""
    underloaded: tuple[int, ...]
    """Active instances with l_j <= Th_low."""
    cluster_utilisation: float
    """Σ load / Σ capacity over active instances."""
    variance: float
    instances_needed: int
    """The load judgment: fewest instances that carry the whole load at or below Th_high."""


def instances_needed(state: ClusterState, thresholds: Thresholds) -> int:
    """Fewest instances, the active ones first and the largest first, whose capacity at Th_high covers the load.

    Falls back to every instance of the cluster when even that is not enough.
    """
    order = np.lexsort((-state.capacity, ~state.active))
    usable = np.cumsum(state.capacity[order]) * thresholds.high
    total = state.load_pps.sum()
    if total <= 0:
        return 1
    enough = np.flatnonzero(usable >= total - 1e-9)
    return int(enough[0]) + 1 if enough.size else state.n_instances


def drainable(state: ClusterState, thresholds: Thresholds) -> tuple[int, ...]:
    """The active instances a scale-in could stop, coldest first: as many of the coldest as the load judgment
    lets go (active − `instances_needed`), so that the others carry the whole load at or below Th_high.

    The stabilizer's scale-in need is "the load fits on fewer instances" (section III's summed trigger), which
    can hold with no instance under Th_low; these are then the instances a policy drains.
    """
    active = state.active_indices
    spare = active.size - instances_needed(state, thresholds)
    if spare <= 0:
        return ()
    order = active[np.lexsort((active, state.utilisation[active]))]
    return tuple(order[:spare].tolist())


def detect(state: ClusterState, thresholds: Thresholds) -> Scenario:
    """Classify the state; the instance lists are sorted by utilisation, hottest/coldest first."""
    active = state.active
    u = state.utilisation
    active_idx = np.flatnonzero(active)
    overloaded = active_idx[u[active_idx] >= thresholds.high]
    underloaded = active_idx[u[active_idx] <= thresholds.low]
    overloaded = overloaded[np.argsort(-u[overloaded], kind="stable")]
    underloaded = underloaded[np.argsort(u[underloaded], kind="stable")]
    capacity = state.capacity[active].sum()
    variance = load_variance(u, active)
    needed = instances_needed(state, thresholds)

    if overloaded.size:
        kind = ScenarioKind.SCALE_OUT
    elif underloaded.size and active_idx.size > 1 and needed < active_idx.size:
        kind = ScenarioKind.SCALE_IN
    elif variance >= thresholds.var and active_idx.size > 1:
        kind = ScenarioKind.LOAD_BALANCE
    else:
        kind = ScenarioKind.NONE
    return Scenario(kind, tuple(overloaded.tolist()), tuple(underloaded.tolist()),
                    float(state.load_pps[active].sum() / capacity) if capacity > 0 else math.inf,
                    variance, needed)
