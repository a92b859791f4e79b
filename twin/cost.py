"""The cost model of DeepMigration (section III and the reward of section V.C).

Every formula of the project lives here once: queueing delay, the SLA test of eq. (1), the
per-flow migration cost of eq. (2), the OpenNF batch time, the buffer occupancy that constraint
(5) bounds, the resource cost C_R = R·ΔN, the ω threshold penalties and the load variance.

Two layers keep it one model for every consumer:

* the **formulas** take plain arrays, numpy arrays or torch tensors alike, and broadcast over
  any leading dimensions (the batched twin simulator passes [B, F] and [B, N] tensors);
* the **state functions** (`flow_migration_cost`, `buffer_occupancy`, ...) gather the operands of
  a `ClusterState` and call the formulas; baselines, the exact solver and `apply` use these.
"""

from __future__ import annotations

import sys
from types import ModuleType

import numpy as np

from twin.params import CostParams, Thresholds
from twin.state import ClusterState


def _namespace(*arrays) -> ModuleType:
    """torch when any operand is a tensor, numpy otherwise: the formulas run unchanged on either.

    torch is looked up among the imported modules, so numpy-only callers never pay for importing it.
    """
    torch = sys.modules.get("torch")
    if torch is not None and any(isinstance(a, torch.Tensor) for a in arrays):
        return torch
    return np


def _as_float(array):
    """numpy operands become float arrays; tensors keep their dtype and device."""
    return array if _namespace(array) is not np else np.asarray(array, dtype=float)


# --- formulas over plain arrays ----------------------------------------------------------------


def queueing_delay_ms(queue_packets, capacity_pps):
    """la_q of a FIFO instance: the time it needs to drain the packets already queued."""
    return 1000.0 * _as_float(queue_packets) / _as_float(capacity_pps)


def batch_migration_ms(n_flows, params: CostParams):
    """Wall time of one OpenNF move of n flows between a pair of instances (0 for no flow)."""
    n = _as_float(n_flows)
    return _namespace(n).where(n > 0, params.migration_base_ms + params.migration_per_flow_ms * n, 0.0)


def sla_slack(la_ij, la_p_dst, la_q_dst, sla_ms):
    """LA^f − la_ij − la_p_j − la_q_j: eq. (1) holds exactly when this is >= 0."""
    return sla_ms - (la_ij + la_p_dst + la_q_dst)


def moved_flow_cost(la_ij, la_p_dst, la_q_dst, la_q_src, sla_ms, params: CostParams):
    """C_ij^f of eq. (2) from its latencies in ms.

    β·(arrival − la_q_i) within the SLA, δ + β·(arrival − LA^f) beyond it, where arrival is
    la_ij + la_p_j + la_q_j.
    """
    arrival = la_ij + la_p_dst + la_q_dst
    within_sla = sla_slack(la_ij, la_p_dst, la_q_dst, sla_ms) >= 0.0
    met = params.beta * (arrival - la_q_src)
    violated = params.delta + params.beta * (arrival - sla_ms)
    return _namespace(within_sla).where(within_sla, met, violated)


def packets_buffered_during_move(rate_pps, la_ij):
    """size_f of constraint (5): packets of a flow that arrive during its move and wait at the destination."""
    return rate_pps * la_ij / 1000.0


def largest_rate_buffered(free_packets, la_ij):
    """The rate whose `packets_buffered_during_move` over `la_ij` (> 0) fills `free_packets` exactly."""
    return free_packets * 1000.0 / la_ij


def resource_cost(delta_instances, params: CostParams):
    """C_R = R·ΔN: starting instances costs, stopping them earns."""
    return params.resource_cost * delta_instances


def threshold_penalties(utilisation, active, thresholds: Thresholds, params: CostParams):
    """ω·(l_j − Th_high) above Th_high plus ω·(Th_low − l_j) below Th_low, summed over the active.

    Reduces the last axis: utilisation [..., N] and active [..., N] give one penalty per leading index.
    """
    u = _as_float(utilisation)
    xp = _namespace(u)
    beyond = xp.clip(u - thresholds.high, min=0.0) + xp.clip(thresholds.low - u, min=0.0)
    return params.omega * xp.where(active, beyond, 0.0).sum(-1)


def utilisation_variance(utilisation, active):
    """var(l_j) over the active instances (last axis): the load-balancing trigger and objective.

    0 when no instance is active.
    """
    u = _as_float(utilisation)
    xp = _namespace(u)
    count = active.sum(-1)
    safe_count = xp.clip(count, min=1)
    mean = xp.where(active, u, 0.0).sum(-1) / safe_count
    deviation = xp.where(active, u - mean[..., None], 0.0)
    return (deviation * deviation).sum(-1) / safe_count


# --- the same formulas applied to a ClusterState -------------------------------------------------


def migration_latency_ms(state: ClusterState, flows: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """la_ij^f of each moved flow: the state's per-pair latency from its instance to `dst`."""
    return state.migration_ms[state.assignment[flows], dst]


def sla_slack_ms(state: ClusterState, flows: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Eq. (1)'s slack for each (flow, destination) pair of the state."""
    return sla_slack(
        migration_latency_ms(state, flows, dst),
        state.processing_ms[dst],
        queueing_delay_ms(state.queue[dst], state.capacity[dst]),
        state.sla_ms[flows],
    )


def sla_holds(state: ClusterState, flows: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Eq. (1) for each (flow, destination) pair."""
    return sla_slack_ms(state, flows, dst) >= 0.0


def flow_migration_cost(
    state: ClusterState, flows: np.ndarray, dst: np.ndarray, params: CostParams
) -> np.ndarray:
    """C_ij^f of eq. (2) for moving each flow to its destination.

    Queues are those of the state before the move, so the costs are the constants of the
    integer program (3)-(6); the packets a move adds to the destination queue are bounded
    by constraint (5) instead.
    """
    flows = np.asarray(flows, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    src = state.assignment[flows]
    return moved_flow_cost(
        state.migration_ms[src, dst],
        state.processing_ms[dst],
        queueing_delay_ms(state.queue[dst], state.capacity[dst]),
        queueing_delay_ms(state.queue[src], state.capacity[src]),
        state.sla_ms[flows],
        params,
    )


def migrated_buffer_packets(state: ClusterState, flows: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """size_f of constraint (5) for each moved flow of the state."""
    return packets_buffered_during_move(state.rate[flows], migration_latency_ms(state, flows, dst))


def buffer_occupancy(state: ClusterState, flows: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Queue of every instance plus the packets buffered for flows moved onto it (constraint (5))."""
    incoming = np.bincount(
        np.asarray(dst, dtype=np.int64),
        weights=migrated_buffer_packets(state, flows, dst),
        minlength=state.n_instances,
    )
    return state.queue + incoming


def threshold_penalty(
    utilisation: np.ndarray, active: np.ndarray, thresholds: Thresholds, params: CostParams
) -> float:
    """The ω penalties of one cluster, as a number."""
    return float(threshold_penalties(utilisation, np.asarray(active, dtype=bool), thresholds, params))


def load_variance(utilisation: np.ndarray, active: np.ndarray) -> float:
    """The utilisation variance of one cluster's active instances, as a number."""
    return float(utilisation_variance(utilisation, np.asarray(active, dtype=bool)))
