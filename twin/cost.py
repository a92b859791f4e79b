"""The cost model of DeepMigration (section III and the reward of section V.C).

Every formula of the project lives here once: queueing delay, the SLA test of eq. (1), the
per-flow migration cost of eq. (2), the resource cost C_R = R·ΔN, the ω threshold penalties
and the buffer occupancy that constraint (5) bounds. Functions are vectorised over flows so
baselines, the exact solver, the policy and the simulator all score moves the same way.
"""
from __future__ import annotations

import numpy as np

from twin.params import CostParams, Thresholds
from twin.state import ClusterState


def queueing_delay_ms(queue_packets: np.ndarray, capacity_pps: np.ndarray) -> np.ndarray:
    """la_q of a FIFO instance: the time it needs to drain the packets already queued."""
    return 1000.0 * np.asarray(queue_packets, dtype=float) / np.asarray(capacity_pps, dtype=float)


def batch_migration_ms(n_flows: np.ndarray | int, params: CostParams) -> np.ndarray:
    """Wall time of one OpenNF move of n flows between a pair of instances (0 for no flow)."""
    n = np.asarray(n_flows, dtype=float)
    return np.where(n > 0, params.migration_base_ms + params.migration_per_flow_ms * n, 0.0)


def migration_latency_ms(state: ClusterState, flows: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """la_ij^f of each moved flow: the state's per-pair latency from its instance to `dst`."""
    return state.migration_ms[state.assignment[flows], dst]


def sla_slack_ms(state: ClusterState, flows: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """LA^f − la_p_j − la_q_j − la_ij^f: eq. (1) holds exactly when this is >= 0."""
    arrival_ms = (migration_latency_ms(state, flows, dst) + state.processing_ms[dst]
                  + queueing_delay_ms(state.queue[dst], state.capacity[dst]))
    return state.sla_ms[flows] - arrival_ms


def sla_holds(state: ClusterState, flows: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Eq. (1) for each (flow, destination) pair."""
    return sla_slack_ms(state, flows, dst) >= 0.0


def flow_migration_cost(state: ClusterState, flows: np.ndarray, dst: np.ndarray,
                        params: CostParams) -> np.ndarray:
    """C_ij^f of eq. (2) for moving each flow to its destination.

    Queues are those of the state before the move, so the costs are the constants of the
    integer program (3)-(6); the packets a move adds to the destination queue are bounded
    by constraint (5) instead.
    """
    flows = np.asarray(flows, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    src = state.assignment[flows]
    la_ij = state.migration_ms[src, dst]
    la_p = state.processing_ms[dst]
    la_q_dst = queueing_delay_ms(state.queue[dst], state.capacity[dst])
    la_q_src = queueing_delay_ms(state.queue[src], state.capacity[src])
    within_sla = sla_holds(state, flows, dst)
    met = params.beta * (la_ij + la_p + la_q_dst - la_q_src)
    violated = params.delta + params.beta * (la_ij + la_p + la_q_dst - state.sla_ms[flows])
    return np.where(within_sla, met, violated)


def migrated_buffer_packets(state: ClusterState, flows: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """size_f of constraint (5): packets of each moved flow that wait at the destination during its move."""
    return state.rate[flows] * migration_latency_ms(state, flows, dst) / 1000.0


def buffer_occupancy(state: ClusterState, flows: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Queue of every instance plus the packets buffered for flows moved onto it (constraint (5))."""
    incoming = np.bincount(np.asarray(dst, dtype=np.int64), weights=migrated_buffer_packets(state, flows, dst),
                           minlength=state.n_instances)
    return state.queue + incoming


def resource_cost(delta_instances: int, params: CostParams) -> float:
    """C_R = R·ΔN: starting instances costs, stopping them earns."""
    return params.resource_cost * delta_instances


def threshold_penalty(utilisation: np.ndarray, active: np.ndarray, thresholds: Thresholds,
                      params: CostParams) -> float:
    """ω·(l_j − Th_high) for each active instance above Th_high plus ω·(Th_low − l_j) below Th_low."""
    u = np.asarray(utilisation, dtype=float)[np.asarray(active, dtype=bool)]
    over = np.clip(u - thresholds.high, 0.0, None).sum()
    under = np.clip(thresholds.low - u, 0.0, None).sum()
    return float(params.omega * (over + under))


def load_variance(utilisation: np.ndarray, active: np.ndarray) -> float:
    """var(l_1..l_N) over the active instances, the load-balancing trigger and objective."""
    u = np.asarray(utilisation, dtype=float)[np.asarray(active, dtype=bool)]
    return float(u.var()) if u.size else 0.0
