"""The speed-ups of issue 19's decision-time goals decide as the code they replaced: OFM's load balancing on
Python floats against the numpy loop it replaced, the look-ahead's batched candidate windows against PyG's
collation of one window per candidate, and the residual twin's GN block (edge update on the nodes, tanh from a
sigmoid, both edge means in one pass) against PyG's MetaLayer on the same weights, within float32 rounding (the
policy network keeps MetaLayer's rounding, so its decisions stay bit for bit; test_gn.py pins it to the
concatenated-input network), and the base twin's inputs and the twin's edge encoding bit for bit."""
from __future__ import annotations

from dataclasses import replace
from unittest.mock import patch

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.nn import MetaLayer

from gnn_policy.base import Problem
from gnn_policy.baselines import OFM
from gnn_policy.gn import EdgeUpdate, GlobalUpdate, GNBlock, NodeUpdate, from_sigmoid
from gnn_policy.plan import Plan
from tests.strategies import cluster_states, moves
from twin.fidelity.twins import flow_means
from twin.params import Thresholds
from twin.residual.features import (
    StatePast,
    candidate_windows,
    collate,
    indexed_move,
    origin_of_state,
    window,
)
from twin.residual.model import Member, ResidualConfig
from twin.scenario import ScenarioKind

TH = Thresholds(high=0.6, low=0.1)


def ofm_load_balance_reference(state) -> tuple[list[int], list[int]]:
    """OFM's load balancing as it was written before the speed-up (numpy per pick): the moves it makes."""
    plan = Plan(state)
    active = state.active_indices
    u = state.utilisation
    average = float(u[active].mean())
    heavy, light = active[u[active] > average], active[u[active] < average]
    picks: list[int] = []
    for s in heavy[np.argsort(-u[heavy], kind="stable")].tolist():
        flows = state.flows_on(s)
        slack = (state.sla_ms[flows][:, None] - state.processing_ms[light][None, :]
                 - state.migration_ms[s, light][None, :])
        flows = flows[(slack >= 0.0).any(axis=1)]
        remaining = float(state.load_pps[s])
        for f in flows[np.lexsort((flows, -state.rate[flows]))].tolist():
            if (remaining - state.rate[f]) / state.capacity[s] >= average:
                picks.append(f)
                remaining -= state.rate[f]
    picks_arr = np.array(picks, dtype=np.int64)
    picks_arr = picks_arr[np.lexsort((picks_arr, -state.rate[picks_arr]))]
    pair_flows, pair_light = np.repeat(picks_arr, light.size), np.tile(light, picks_arr.size)
    sla_ok = (state.migration_ms[state.assignment[pair_flows], pair_light]
              <= state.sla_ms[pair_flows] - state.processing_ms[pair_light]).reshape(-1, light.size)
    packets = plan.buffer_packets(pair_flows, pair_light).reshape(-1, light.size)
    need = plan.ofm_need(pair_flows, pair_light).reshape(-1, light.size)
    for i, (f, r) in enumerate(zip(picks_arr.tolist(), state.rate[picks_arr].tolist())):
        ok = sla_ok[i] & (plan.utilisation_after(light, r) <= average)
        ok &= plan.ofm_fits(light, need[i]) & plan.buffer_fits(light, packets[i])
        if ok.any():
            candidates = np.flatnonzero(ok)
            k = int(candidates[np.lexsort((light[candidates], plan.utilisation[light[candidates]]))[0]])
            plan.move(f, int(light[k]), float(packets[i, k]), float(need[i, k]))
    action = plan.action()
    return action.flows.tolist(), action.dst.tolist()


@settings(max_examples=150, deadline=None)
@given(state=st.one_of(cluster_states(max_instances=8, max_flows=60),
                       cluster_states(max_instances=8, max_flows=60, roomy_buffers=False)))
def test_ofm_load_balancing_makes_the_moves_of_the_numpy_loop_it_replaced(state):
    decision = OFM().decide(Problem.of(state, TH).as_scenario(ScenarioKind.LOAD_BALANCE))
    u = state.utilisation[state.active]
    if state.active.sum() < 2 or not ((u > u.mean()).any() and (u < u.mean()).any()):
        assert decision.feasible and decision.action.flows.size == 0
        return
    flows, dst = ofm_load_balance_reference(state)
    assert (decision.action.flows.tolist(), decision.action.dst.tolist()) == (flows, dst)
    assert decision.feasible == bool(flows)


@settings(max_examples=40, deadline=None)
@given(state=cluster_states(max_instances=6, max_flows=30), data=st.data(), horizon=st.integers(1, 3))
def test_candidate_windows_are_the_collated_windows_of_each_candidate(state, data, horizon):
    origin, n = origin_of_state(state, 2), state.n_instances
    flags = st.lists(st.booleans(), min_size=n, max_size=n).map(np.array)

    def move():
        return replace(indexed_move(state, data.draw(moves(state))), started=data.draw(flags) & ~state.active,
                       stopped=data.draw(flags))
    candidates = [[move() for _ in range(data.draw(st.integers(0, horizon)))] for _ in range(data.draw(st.integers(1, 4)))]
    with_base = data.draw(st.booleans())
    bases = [np.random.default_rng(k).random((n, horizon, 3)) if with_base else None for k in range(len(candidates))]
    together = candidate_windows(origin, candidates, horizon, bases)
    collated = collate([window(origin, one, horizon, base=base) for one, base in zip(candidates, bases)])
    for name in ("x", "static", "edge_index", "latency", "node_steps", "edge_steps", "base", "batch"):
        assert torch.equal(getattr(together, name), getattr(collated, name)), name


def test_tanh_from_a_sigmoid_is_torch_tanh_within_float32_rounding():
    z = torch.cat([torch.linspace(-60.0, 60.0, 20001), torch.linspace(-1e-3, 1e-3, 2001)])
    assert (from_sigmoid(2.0 * z) - torch.tanh(z)).abs().max() < 3e-7
    assert torch.isfinite(from_sigmoid(torch.tensor([-1e30, 1e30]))).all()


def test_the_twins_gn_block_is_metalayers_function_on_batched_graphs():
    torch.manual_seed(0)
    hidden, sizes = 8, (5, 3)
    modules = EdgeUpdate(hidden), NodeUpdate(hidden), GlobalUpdate(hidden)
    edges = [torch.nonzero(~torch.eye(n, dtype=torch.bool)).t() + sum(sizes[:g]) for g, n in enumerate(sizes)]
    edge_index = torch.cat(edges, dim=1)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x, u = 3.0 * torch.randn(sum(sizes), hidden), torch.randn(len(sizes), hidden)
    edge = torch.randn(edge_index.size(1), hidden)
    with torch.no_grad():
        fast, plain = GNBlock(*modules)(x, edge_index, edge, u, batch), MetaLayer(*modules)(x, edge_index, edge, u, batch)
        single = GNBlock(*modules)(x[:5], edges[0], edge[:20], u[:1], None)
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(single, (plain[0][:5], plain[1][:20], plain[2][:1])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_twins_gn_block_takes_the_edge_means_of_metalayer_on_any_graph():
    """The fused edge means (one product, sums per receiver, graph sums from them) on irregular graphs: nodes
    without incoming edges, unequal in-degrees, a graph without edges."""
    torch.manual_seed(1)
    hidden, sizes = 8, (6, 4, 1)
    modules = EdgeUpdate(hidden), NodeUpdate(hidden), GlobalUpdate(hidden)
    pairs = [torch.tensor([[0, 0, 1, 2, 2, 5], [1, 2, 2, 1, 0, 0]]), torch.tensor([[3, 1], [2, 2]]),
             torch.zeros((2, 0), dtype=torch.long)]
    edge_index = torch.cat([p + sum(sizes[:g]) for g, p in enumerate(pairs)], dim=1)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x, u = torch.randn(sum(sizes), hidden), torch.randn(len(sizes), hidden)
    edge = torch.randn(edge_index.size(1), hidden)
    with torch.no_grad():
        fast, plain = GNBlock(*modules)(x, edge_index, edge, u, batch), MetaLayer(*modules)(x, edge_index, edge, u, batch)
        alone = GNBlock(*modules)(x[-1:], pairs[2], edge[:0], u[-1:], None)
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(alone, (plain[0][-1:], plain[1][:0], plain[2][-1:])):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def flow_means_reference(past, window: int) -> np.ndarray:
    """`twin.fidelity.twins.flow_means` as it was before the one-state shortcut."""
    state = past.state()
    tables = [past.flow_table(s) for s in range(max(past.t - window + 1, 0), past.t + 1)]
    known, inverse = np.unique(np.concatenate([t["flow"] for t in tables]), return_inverse=True)
    means = np.bincount(inverse, weights=np.concatenate([t["rate"] for t in tables])) / np.bincount(inverse)
    return means[np.searchsorted(known, np.asarray(state.flow_ids, dtype=object))] if state.n_flows else means[:0]


@settings(max_examples=40, deadline=None)
@given(state=cluster_states(max_instances=6, max_flows=40), window=st.integers(1, 10))
def test_the_base_twins_inputs_on_a_bare_state_are_those_of_the_code_replaced(state, window):
    """A one-state `flow_means` is the general formula bit for bit, and a derived state keeps id lookups that
    equal fresh ones."""
    past = StatePast(state)
    assert np.array_equal(flow_means(past, window), flow_means_reference(past, window))
    lookups = state.flow_index, state.instance_index
    changed = state.with_changes(rate=state.rate * 2.0, queue=state.queue)
    assert (changed.flow_index, changed.instance_index) == lookups
    assert changed.flow_index == {f: k for k, f in enumerate(changed.flow_ids)}
    renamed = state.with_changes(flow_ids=tuple(f"x{f}" for f in state.flow_ids))
    assert renamed.flow_index == {f"x{f}": k for k, f in enumerate(state.flow_ids)}


@settings(max_examples=20, deadline=None)
@given(state=cluster_states(max_instances=5, max_flows=30), data=st.data(), horizon=st.integers(2, 4))
def test_encoding_the_idle_periods_edges_once_predicts_what_encoding_each_period_does(state, data, horizon):
    torch.manual_seed(0)
    member = Member(ResidualConfig(base=()))
    candidates = [[indexed_move(state, data.draw(moves(state)))] for _ in range(data.draw(st.integers(1, 3)))]
    batch = candidate_windows(origin_of_state(state, member.config.history), candidates, horizon,
                              [None] * len(candidates))
    with torch.no_grad():
        once = member(batch)
        with patch.object(torch, "equal", lambda a, b: False):
            every = member(batch)
    assert torch.equal(once, every)
