"""Trace-driven episodes: per-bin rates from the packets, arrivals and departures, sizing, seeding."""

import numpy as np
import pytest
import torch

from tests.pcap_builder import Frame, ethernet, udp, write_pcap
from trace_replay.episodes import build_episodes
from trace_replay.flows import read_flows
from trace_replay.generate import sample_path
from trace_replay.pcap import iter_packet_batches
from trace_replay.scenarios import Sizing
from twin.scenario import ScenarioKind
from twin.sim import BatchedTwin

PCAP = sample_path()
SHAPE = {"n_episodes": 6, "n_steps": 30, "n_instances": 5, "max_flows": 120}


@pytest.fixture(scope="module")
def table():
    return read_flows(PCAP)


@pytest.fixture(scope="module")
def batch(table):
    return build_episodes(PCAP, table=table, seed=3, n_standby=1, **SHAPE)


def test_shapes_and_storage(batch):
    b, t, f, n = SHAPE["n_episodes"], SHAPE["n_steps"], SHAPE["max_flows"], SHAPE["n_instances"] + 1
    assert batch.rate.shape == (b, t, f) and batch.rate.dtype == np.float32
    assert batch.capacity.shape == (b, n) and batch.initially_active.sum(1).tolist() == [n - 1] * b
    assert np.allclose(batch.buffer, batch.capacity * Sizing().buffer_ms / 1000.0)
    assert ((batch.sla_ms >= 70.0) & (batch.sla_ms <= 110.0)).all()


def test_rates_are_the_packets_of_each_bin(table, batch):
    """Rebuild episode 0's counts packet by packet from the trace and compare."""
    b, bin_s = 0, batch.step_s
    ids = {flow_id: slot for slot, flow_id in enumerate(batch.flow_ids[b]) if flow_id}
    records = table.records
    endpoints = {}
    for flow_id, slot in ids.items():
        r = records[int(flow_id[1:])]
        key = (int(r["proto"]),) + tuple(
            sorted([(int(r["src_ip"]), int(r["src_port"])), (int(r["dst_ip"]), int(r["dst_port"]))])
        )
        endpoints[key] = slot
    expected = np.zeros(batch.rate.shape[1:])
    for packets in iter_packet_batches(PCAP):
        for p in packets[packets["is_ipv4"]]:
            key = (int(p["proto"]),) + tuple(
                sorted([(int(p["src_ip"]), int(p["src_port"])), (int(p["dst_ip"]), int(p["dst_port"]))])
            )
            step = int(np.floor((p["ts"] - batch.start_s[b]) / bin_s))
            if key in endpoints and 0 <= step < batch.n_steps:
                expected[step, endpoints[key]] += 1
    assert np.allclose(batch.rate[b] * bin_s, expected)


def test_flows_are_live_between_their_first_and_last_packet(table, batch):
    records = table.records
    for b in range(batch.n_episodes):
        for slot, flow_id in enumerate(batch.flow_ids[b]):
            if not flow_id:
                assert batch.arrival[b, slot] == batch.n_steps and not batch.rate[b, :, slot].any()
                continue
            first, last = records[int(flow_id[1:])][["first_ts", "last_ts"]].tolist()
            bins = np.floor((np.array([first, last]) - batch.start_s[b]) / batch.step_s)
            first_bin, last_bin = np.clip(bins, 0, batch.n_steps - 1).astype(int).tolist()
            assert batch.arrival[b, slot] == first_bin
            assert batch.departure[b, slot] == last_bin + 1
            outside = np.ones(batch.n_steps, bool)
            outside[batch.arrival[b, slot] : batch.departure[b, slot]] = False
            assert not batch.rate[b, outside, slot].any()


def test_the_twin_replays_arrivals_departures_and_rates(batch):
    twin = BatchedTwin.from_episodes(batch)
    for t in range(batch.n_steps - 1):
        live = torch.as_tensor(batch.live(t))
        assert torch.equal(twin.flow_live, live)
        assert torch.equal(twin.assignment >= 0, live)
        assert torch.equal(twin.flow_rate, torch.where(live, torch.as_tensor(batch.rate[:, t]).double(), 0.0))
        assert twin.active.gather(1, twin.assignment.clamp(min=0))[live].all()
        result = twin.step(
            twin.assignment.clone(), torch.zeros_like(twin.active), torch.zeros_like(twin.active)
        )
        assert result.done.all() == (t == batch.n_steps - 2)
    assert twin.state(0).time_s == pytest.approx(batch.start_s[0] + (batch.n_steps - 1) * batch.step_s)


def test_new_flows_go_to_the_least_utilised_active_instances_first(batch):
    """Arrivals are dealt out over the active instances in order of the utilisation the others make."""
    twin = BatchedTwin.from_episodes(batch)
    twin.step(twin.assignment.clone(), torch.zeros_like(twin.active), torch.zeros_like(twin.active))
    arrived = torch.as_tensor(batch.arrival == 1)
    staying = twin.flow_live & ~arrived
    load = torch.zeros_like(twin.capacity).scatter_add_(
        1, twin.assignment.clamp(min=0), torch.where(staying, twin.flow_rate, 0.0)
    )
    utilisation = torch.where(twin.active, load / twin.capacity, torch.inf)
    for b in range(batch.n_episodes):
        n_new = int(arrived[b].sum())
        if n_new:
            coolest = torch.argsort(utilisation[b], stable=True)[: min(n_new, int(twin.active[b].sum()))]
            assert set(twin.assignment[b, arrived[b]].tolist()) == set(coolest.tolist())


def test_heavy_flows_are_left_out(batch):
    live_steps = np.maximum(batch.departure - np.minimum(batch.arrival, batch.departure), 1)
    mean_rate = batch.rate.sum(axis=1) / live_steps
    assert (mean_rate <= Sizing().max_flow_share * batch.capacity[:, :1] + 1e-6).all()


def test_scenarios_come_and_go_over_an_episode(table):
    batch = build_episodes(PCAP, table=table, seed=0, n_episodes=8, n_steps=40, n_instances=10)
    twin = BatchedTwin.from_episodes(batch)
    seen = set()
    for _ in range(batch.n_steps - 1):
        seen.update(twin.scenario_kinds())
        twin.step(twin.assignment.clone(), torch.zeros_like(twin.active), torch.zeros_like(twin.active))
    assert {ScenarioKind.SCALE_OUT, ScenarioKind.SCALE_IN} <= seen


def test_seeded(table):
    one, same = (build_episodes(PCAP, table=table, seed=11, **SHAPE) for _ in range(2))
    other = build_episodes(PCAP, table=table, seed=12, **SHAPE)
    for name in ("rate", "arrival", "departure", "sla_ms", "capacity", "flow_ids", "start_s"):
        assert np.array_equal(getattr(one, name), getattr(same, name))
    assert not np.array_equal(one.start_s, other.start_s)
    rewards = []
    for episodes in (one, same):
        twin = BatchedTwin.from_episodes(episodes)
        generator = torch.Generator().manual_seed(0)
        trajectory = []
        for _ in range(10):
            dst = torch.where(
                twin.flow_live & (torch.rand(twin.assignment.shape, generator=generator) < 0.2),
                torch.randint(0, SHAPE["n_instances"], twin.assignment.shape, generator=generator),
                twin.assignment,
            )
            trajectory.append(
                twin.step(dst, torch.zeros_like(twin.active), torch.zeros_like(twin.active)).reward
            )
        rewards.append(torch.stack(trajectory))
    assert torch.equal(*rewards)


def test_speed_packs_more_trace_into_each_step(table):
    """At speed 2 a step of 0.05 s replays the same 0.1 trace seconds as a 0.1 s step at speed 1."""
    normal = build_episodes(PCAP, table=table, seed=5, **SHAPE)
    fast = build_episodes(PCAP, table=table, seed=5, speed=2.0, **{**SHAPE, "bin_s": 0.05})
    assert fast.step_s == pytest.approx(normal.step_s / 2)
    assert np.allclose(fast.rate, 2 * normal.rate)
    assert np.array_equal(fast.start_s, normal.start_s)


def test_speed_compresses_a_window_into_fewer_steps(table):
    """A 1 s step at speed 5 holds the packets of 5 trace seconds."""
    slow = build_episodes(PCAP, table=table, seed=2, n_episodes=2, n_steps=50, n_instances=4, bin_s=1.0,
                          max_flows=20_000)
    fast = build_episodes(PCAP, table=table, seed=2, n_episodes=2, n_steps=10, n_instances=4, bin_s=1.0,
                          max_flows=20_000, speed=5.0)
    assert fast.step_s == 1.0 and fast.rate.sum() > 3 * slow.rate[:, :10].sum()


@pytest.mark.parametrize("bin_s", [1.0, 0.1])
@pytest.mark.parametrize("n_instances", [1, 6, 20])
def test_no_episode_degenerates_at_any_bin_or_cluster_size(table, bin_s, n_instances):
    """The set-up of the issue (1 s bins, 400 flows) used to leave every episode without a flow."""
    batch = build_episodes(PCAP, table=table, seed=0, n_episodes=4, n_steps=120, n_instances=n_instances,
                           n_standby=4, bin_s=bin_s, max_flows=400)
    kept = (batch.flow_ids != "").sum(axis=1)
    assert (kept >= 0.5 * 400 * 0.9).all()
    assert (batch.rate.sum(axis=(1, 2)) > 0).all()
    live_steps = np.maximum(batch.departure - np.minimum(batch.arrival, batch.departure), 1)
    largest = (batch.rate.sum(axis=1) / live_steps).max(axis=1)
    assert np.allclose(batch.capacity.min(axis=1), batch.capacity.max(axis=1))
    assert (batch.capacity[:, 0] >= largest / Sizing().max_flow_share - 1e-6).all()
    utilisation = batch.rate.sum(axis=2).mean(axis=1) / (n_instances * batch.capacity[:, 0])
    assert (utilisation <= 0.5 + 1e-6).all() and (utilisation > 0.01).all()


def _burst_trace(path, starts):
    """One UDP flow per start time: 10 packets within 10 ms."""
    frames = [Frame(start + k * 0.001, ethernet(udp("10.0.0.1", 10_000 + n, "10.0.0.2", 53, 40)))
              for n, start in enumerate(starts) for k in range(10)]
    return write_pcap(path, frames)


def test_a_window_whose_every_flow_is_heavy_keeps_half_of_them(tmp_path):
    """One short burst per second: each flow alone exceeds 10 % of an instance sized on the mean load."""
    pcap = _burst_trace(tmp_path / "bursts.pcap", [float(s) for s in range(40)])
    batch = build_episodes(pcap, seed=0, n_episodes=3, n_steps=20, n_instances=2, bin_s=1.0, max_flows=100)
    for b in range(batch.n_episodes):
        in_window = int(((np.arange(40) >= np.floor(batch.start_s[b])) &
                         (np.arange(40) < batch.start_s[b] + 20)).sum())
        kept = int((batch.flow_ids[b] != "").sum())
        assert kept >= in_window // 2 and kept > 0
        assert batch.capacity[b, 0] == pytest.approx(10.0 / Sizing().max_flow_share)


def test_a_window_without_flows_is_refused_naming_it(tmp_path):
    pcap = _burst_trace(tmp_path / "gap.pcap", [0.0, 100.0])
    with pytest.raises(ValueError, match=r"episode 0 \(trace window .* s\) holds no flow"):
        build_episodes(pcap, seed=0, n_episodes=1, n_steps=10, n_instances=2, bin_s=1.0)


@pytest.mark.parametrize(
    "arguments,message",
    [
        ({"n_steps": 10_000, "bin_s": 1.0}, "shorter than an episode"),
        ({"n_steps": 1}, "n_steps must be at least 2"),
        ({"n_episodes": 0}, "n_episodes must be at least 1"),
        ({"bin_s": 0.0}, "bin_s and speed must be positive"),
        ({"speed": -1.0}, "bin_s and speed must be positive"),
        ({"target_utilisation": (0.5, 0.2)}, "target_utilisation"),
    ],
)
def test_bad_arguments_are_named(table, arguments, message):
    with pytest.raises(ValueError, match=message):
        build_episodes(PCAP, table=table, seed=0, **{**SHAPE, **arguments})
