"""Trace-driven episodes for the batched twin simulator (`twin.sim.BatchedTwin.from_episodes`).

An episode is a seeded window of a trace cut into equal time bins, one per simulator step. Its
flows are the trace's flows that overlap the window (a seeded sample of at most `max_flows`), each
in its own slot; a flow is live from the bin of its first packet to the bin of its last, and its
rate in a bin is the packets it sent there per second. Rates therefore rise, fall and stop as in
the trace, which is what makes overload, underload and imbalance come and go over an episode.

Flows come from the trace's `FlowTable`; the per-bin packet counts from one streaming pass over
the packets, so memory is the episode arrays (B·T·F rates, stored as float32) plus one packet batch.
Instances are sized per episode so that the active ones run at a seeded target utilisation on
average, with buffers and the heavy-flow rule of the scenario builders' `Sizing`, bounded so that it
never empties a window (docs/twin.md, "Trace-driven episodes"). A window with nothing to replay is
refused with a `ValueError` naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from trace_replay.flows import FlowTable, PairIndex, flow_keys, read_flows
from trace_replay.pcap import iter_packet_batches
from trace_replay.scenarios import FlowPool, Sizing
from twin.flow import FIVE_TUPLE_DTYPE
from twin.params import CostParams


@dataclass(frozen=True, eq=False)
class EpisodeBatch:
    """B episodes of T steps over F flow slots and N instances (arrays lead with the episode)."""

    rate: np.ndarray
    """[B, T, F] float32 packets per simulated second of each slot's flow in each step (0 when not live)."""
    arrival: np.ndarray
    """[B, F] first step at which the slot's flow is live (T for an empty slot)."""
    departure: np.ndarray
    """[B, F] first step at which it no longer is (T when it outlives the window)."""
    sla_ms: np.ndarray
    """[B, F] LA^f, drawn uniformly from the cost parameters' SLA range."""
    byte_rate: np.ndarray
    """[B, F] the flow's mean byte rate over its lifetime in the trace."""
    five_tuple: np.ndarray
    """[B, F] FIVE_TUPLE_DTYPE."""
    flow_ids: np.ndarray
    """[B, F] object array of flow ids ("f<index in the flow table>", "" for an empty slot)."""
    capacity: np.ndarray
    """[B, N] packets/s."""
    buffer: np.ndarray
    """[B, N] packets."""
    initially_active: np.ndarray
    """[B, N] bool."""
    start_s: np.ndarray
    """[B] trace timestamp at which each episode's window opens."""
    step_s: float
    """Simulated seconds per step (`bin_s`); each step replays `bin_s · speed` trace seconds."""
    source: str

    def __post_init__(self) -> None:
        b, t, f = self.rate.shape
        n = self.capacity.shape[1] if self.capacity.ndim == 2 else -1
        for name, shape in (
            ("arrival", (b, f)),
            ("departure", (b, f)),
            ("sla_ms", (b, f)),
            ("byte_rate", (b, f)),
            ("five_tuple", (b, f)),
            ("flow_ids", (b, f)),
            ("capacity", (b, n)),
            ("buffer", (b, n)),
            ("initially_active", (b, n)),
            ("start_s", (b,)),
        ):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")
        if t < 2:
            raise ValueError(f"an episode needs at least 2 steps, got {t}")
        if not self.initially_active.any(axis=1).all():
            raise ValueError("every episode needs at least one initially active instance")

    @property
    def n_episodes(self) -> int:
        return self.rate.shape[0]

    @property
    def n_steps(self) -> int:
        return self.rate.shape[1]

    @property
    def n_flow_slots(self) -> int:
        return self.rate.shape[2]

    @property
    def n_instances(self) -> int:
        return self.capacity.shape[1]

    def live(self, step: int) -> np.ndarray:
        """[B, F] slots whose flow is live at `step`."""
        return (self.arrival <= step) & (step < self.departure)


def build_episodes(
    pcap: str | os.PathLike,
    *,
    n_episodes: int,
    n_steps: int,
    n_instances: int,
    seed: int,
    table: FlowTable | None = None,
    n_standby: int = 0,
    max_flows: int = 400,
    bin_s: float = 0.1,
    speed: float = 1.0,
    target_utilisation: tuple[float, float] = (0.25, 0.5),
    sizing: Sizing = Sizing(),
    params: CostParams = CostParams(),
    window_start_s: float | None = None,
    capacity_pps: float | None = None,
    buffer_packets: float | None = None,
) -> EpisodeBatch:
    """Cut `n_episodes` seeded windows of `n_steps` steps of `bin_s` simulated seconds out of a trace.

    `table` is the trace's flow table if already read (it must be built without an idle timeout,
    so that a 5-tuple names one flow). `speed` is trace seconds per simulated second, as
    `dm-demo --speed`: each step replays `bin_s · speed` trace seconds, so 5 packs five times the
    trace into each step (rates ×5). Each episode's instances are equal, sized so that the
    `n_instances` active ones run on average at a target utilisation drawn from
    `target_utilisation`; `n_standby` more wait stopped. Raises ValueError naming the episode and its
    window when a window holds no flow or no packet. The testbed's set-up instead (one window beside
    dm-demo): `window_start_s` (trace seconds after the first packet) fixes every window, `capacity_pps`
    and `buffer_packets` the instances, which then keep every flow, as the testbed replays them all.
    """
    _check_shape(n_episodes, n_steps, n_instances, n_standby, max_flows, bin_s, speed, target_utilisation)
    table = read_flows(pcap) if table is None else table
    records = table.records
    _require(len(records) > 0, f"trace {table.source} holds no flows")
    rng = np.random.default_rng(seed)

    trace_bin_s = bin_s * speed
    window_s = n_steps * trace_bin_s
    first, last = float(records["first_ts"].min()), float(records["last_ts"].max())
    _require(
        last - first >= window_s,
        f"trace {table.source} lasts {last - first:.1f} s, shorter than an episode of {n_steps} x {bin_s} s"
        f" at speed {speed:g} ({window_s:g} trace seconds)",
    )
    start_s = _window_starts(rng, (first, last), window_s, n_episodes, window_start_s, table.source)
    windows = _Windows(
        start_s=start_s,
        flows=[_select_flows(records, start, start + window_s, max_flows, rng) for start in start_s],
        bin_s=trace_bin_s,
        n_steps=n_steps,
        max_flows=max_flows,
    )
    rate = _count_packets(pcap, table, windows) / bin_s
    _require_traffic(rate, windows)
    arrival, departure = _live_steps(records, windows)

    target = rng.uniform(*target_utilisation, n_episodes)
    heavy = _heavy_flows(rate, arrival, departure, n_instances, target, sizing.max_flow_share, windows) \
        if capacity_pps is None else np.zeros(rate.shape[::2], dtype=bool)
    rate[np.broadcast_to(heavy[:, None, :], rate.shape)] = 0.0
    arrival[heavy], departure[heavy] = n_steps, n_steps
    five_tuple, byte_rate, flow_ids = _slot_flows(table, windows, heavy)

    capacity = _instance_capacity(rate, arrival, departure, (n_instances, n_standby), target, sizing, capacity_pps)
    return EpisodeBatch(
        rate=rate.astype(np.float32),
        arrival=arrival,
        departure=departure,
        sla_ms=rng.uniform(params.sla_min_ms, params.sla_max_ms, (n_episodes, max_flows)),
        byte_rate=byte_rate,
        five_tuple=five_tuple,
        flow_ids=flow_ids,
        capacity=capacity,
        buffer=capacity * sizing.buffer_ms / 1000.0 if buffer_packets is None else np.full_like(capacity, buffer_packets),
        initially_active=np.broadcast_to(np.arange(capacity.shape[1]) < n_instances, capacity.shape).copy(),
        start_s=start_s,
        step_s=bin_s,
        source=table.source,
    )


def _instance_capacity(rate: np.ndarray, arrival: np.ndarray, departure: np.ndarray, counts: tuple[int, int],
                       target: np.ndarray, sizing: Sizing, capacity_pps: float | None) -> np.ndarray:
    """[B, N] every instance's capacity: `capacity_pps`, or sized for the episode's target utilisation of the
    (active, standby) `counts`' active ones."""
    n_active, n_standby = counts
    per_instance = (np.full(rate.shape[0], float(capacity_pps)) if capacity_pps is not None else
                    _fitting_capacity(rate, arrival, departure, n_active, target, sizing.max_flow_share))
    return np.repeat(per_instance[:, None], n_active + n_standby, axis=1)


def _window_starts(rng: np.random.Generator, span: tuple[float, float], window_s: float, n_episodes: int,
                   fixed_s: float | None, source: str) -> np.ndarray:
    """[B] trace timestamps the windows open at: seeded draws, or all `fixed_s` after the first packet (the
    draws are made either way, so that a seed's flows and SLAs do not depend on it)."""
    first, last = span
    start_s = rng.uniform(first, last - window_s, n_episodes)
    if fixed_s is None:
        return start_s
    _require(0 <= fixed_s <= last - first - window_s,
             f"window start {fixed_s:g} s: the trace {source} has {last - first:.1f} s, so an episode of "
             f"{window_s:g} trace seconds starts at 0 to {last - first - window_s:.1f} s")
    return np.full(n_episodes, first + fixed_s)


@dataclass(frozen=True)
class _Windows:
    """The episodes' windows in the trace and the flows each one replays, one slot per flow."""

    start_s: np.ndarray
    """[B] trace timestamp at which each window opens."""
    flows: list[np.ndarray]
    """Per episode, the table indices of its flows in slot order (at most `max_flows`)."""
    bin_s: float
    """Trace seconds per step."""
    n_steps: int
    max_flows: int


def _check_shape(
    n_episodes: int,
    n_steps: int,
    n_instances: int,
    n_standby: int,
    max_flows: int,
    bin_s: float,
    speed: float,
    target_utilisation: tuple[float, float],
) -> None:
    """Refuse, naming the argument, an episode shape `build_episodes` cannot fill."""
    _require(n_episodes >= 1, f"n_episodes must be at least 1, got {n_episodes}")
    _require(n_steps >= 2, f"n_steps must be at least 2, got {n_steps}")
    _require(
        n_instances >= 1 and n_standby >= 0,
        f"need n_instances >= 1 and n_standby >= 0, got {n_instances} and {n_standby}",
    )
    _require(max_flows >= 1, f"max_flows must be at least 1, got {max_flows}")
    _require(
        bin_s > 0 and speed > 0, f"bin_s and speed must be positive, got {bin_s} and {speed}"
    )
    low, high = target_utilisation
    _require(
        0 < low <= high, f"target_utilisation must be an interval within (0, inf), got {target_utilisation}"
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _select_flows(
    records: np.ndarray, start: float, end: float, max_flows: int, rng: np.random.Generator
) -> np.ndarray:
    """Table indices of at most `max_flows` flows overlapping [start, end), in arrival order."""
    overlapping = np.flatnonzero((records["first_ts"] < end) & (records["last_ts"] >= start))
    if overlapping.size > max_flows:
        overlapping = np.sort(rng.choice(overlapping, max_flows, replace=False))
    return overlapping


def _bin_of(ts: np.ndarray, start: float, bin_s: float, n_steps: int) -> np.ndarray:
    """Step whose bin holds each timestamp, clipped to the window."""
    return np.clip(np.floor((ts - start) / bin_s), 0, n_steps - 1).astype(np.int64)


def _live_steps(records: np.ndarray, windows: _Windows) -> tuple[np.ndarray, np.ndarray]:
    """[B, F] arrival and departure step of each slot's flow (both T for an empty slot)."""
    n_steps, bin_s = windows.n_steps, windows.bin_s
    arrival = np.full((len(windows.flows), windows.max_flows), n_steps, dtype=np.int64)
    departure = np.full((len(windows.flows), windows.max_flows), n_steps, dtype=np.int64)
    for b, flows in enumerate(windows.flows):
        start = windows.start_s[b]
        arrival[b, : flows.size] = _bin_of(records["first_ts"][flows], start, bin_s, n_steps)
        departure[b, : flows.size] = _bin_of(records["last_ts"][flows], start, bin_s, n_steps) + 1
    return arrival, departure


def _slot_flows(
    table: FlowTable, windows: _Windows, heavy: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[B, F] five-tuple, byte rate and id of each slot's flow; empty for empty slots and heavy flows."""
    pool = FlowPool.from_table(table)
    shape = (len(windows.flows), windows.max_flows)
    five_tuple = np.zeros(shape, dtype=FIVE_TUPLE_DTYPE)
    byte_rate = np.zeros(shape)
    flow_ids = np.full(shape, "", dtype=object)
    for b, flows in enumerate(windows.flows):
        kept = ~heavy[b, : flows.size]
        five_tuple[b, : flows.size][kept] = pool.five_tuple[flows][kept]
        byte_rate[b, : flows.size][kept] = pool.byte_rate[flows][kept]
        flow_ids[b, : flows.size][kept] = [f"f{k}" for k in flows[kept].tolist()]
    return five_tuple, byte_rate, flow_ids


def _count_packets(pcap: str | os.PathLike, table: FlowTable, windows: _Windows) -> np.ndarray:
    """[B, T, F] packets of each episode's flows per bin, in one streaming pass over the trace (IPv4
    and IPv6 packets, keyed with the table's address book)."""
    selected, start_s, bin_s = windows.flows, windows.start_s, windows.bin_s
    n_steps, max_flows = windows.n_steps, windows.max_flows
    wanted = np.unique(np.concatenate(selected))
    key_lo, key_hi = flow_keys(table.records[wanted], table.addresses)
    if np.unique(np.stack([key_lo, key_hi]), axis=1).shape[1] != wanted.size:
        raise ValueError(
            "the flow table holds several flows of one 5-tuple; build it without an idle timeout"
        )
    index = PairIndex()
    index.add(key_lo, key_hi, wanted.astype(np.int64))
    n_episodes = len(selected)
    counts = np.zeros(n_episodes * n_steps * max_flows, dtype=np.float64)
    for packets in iter_packet_batches(pcap, addresses=table.addresses):
        packets = packets[packets["is_ipv4"] | packets["is_ipv6"]]
        flow = index.get(*flow_keys(packets))
        known = flow >= 0
        packets, flow = packets[known], flow[known]
        for b, flows in enumerate(selected):
            step = np.floor((packets["ts"] - start_s[b]) / bin_s)
            slot = np.searchsorted(flows, flow)
            inside = (step >= 0) & (step < n_steps) & (slot < flows.size)
            inside[inside] &= flows[slot[inside]] == flow[inside]
            cell = (b * n_steps + step[inside].astype(np.int64)) * max_flows + slot[inside]
            np.add.at(counts, cell, 1.0)
    return counts.reshape(n_episodes, n_steps, max_flows)


MAX_HEAVY_SHARE = 0.5
"""The heavy-flow rule leaves out at most this share of the flows that send packets in a window."""


def _require_traffic(rate: np.ndarray, windows: _Windows) -> None:
    """Refuse a window with nothing to replay, naming the episode and where its window lies."""
    for b, flows in enumerate(windows.flows):
        start, end = windows.start_s[b], windows.start_s[b] + windows.n_steps * windows.bin_s
        where = f"episode {b} (trace window {start:.3f}-{end:.3f} s)"
        _require(flows.size > 0, f"{where} holds no flow; choose another seed or a longer window")
        _require(rate[b].any(), f"{where}: its {flows.size} flows send no packet inside it")


def _mean_rate_while_live(rate: np.ndarray, arrival: np.ndarray, departure: np.ndarray) -> np.ndarray:
    """[B, F] each slot's mean rate over the steps its flow is live."""
    return rate.sum(axis=1) / np.maximum(departure - np.minimum(arrival, departure), 1)


def _heavy_flows(
    rate: np.ndarray,
    arrival: np.ndarray,
    departure: np.ndarray,
    n_active: int,
    target: np.ndarray,
    max_flow_share: float,
    windows: _Windows,
) -> np.ndarray:
    """[B, F] flows whose mean rate while live exceeds `max_flow_share` of an instance (the builders' rule).

    Leaving flows out shrinks the instances sized on the rest, so the rule is reapplied until no kept
    flow is heavy, but it leaves out at most MAX_HEAVY_SHARE of the window's flows that send packets in
    it, the heaviest first: in a sparse or bursty window every flow can look heavy and the cascade would
    empty it.
    """
    mean_rate = _mean_rate_while_live(rate, arrival, departure)
    heavy = np.zeros(mean_rate.shape, dtype=bool)
    for b, flows in enumerate(windows.flows):
        limit = int(MAX_HEAVY_SHARE * np.count_nonzero(mean_rate[b]))
        by_rate = np.argsort(-mean_rate[b, : flows.size], kind="stable")
        while True:
            kept_rate = np.where(heavy[b], 0.0, rate[b])[None]
            share = max_flow_share * _capacity(kept_rate, n_active, target[b : b + 1])[0]
            newly = ~heavy[b] & (mean_rate[b] > share)
            if not newly.any():
                break
            room = limit - int(heavy[b].sum())
            if int(newly.sum()) > room:
                heavy[b, [k for k in by_rate if newly[k]][:room]] = True
                break
            heavy[b] |= newly
    return heavy


def _capacity(rate: np.ndarray, n_active: int, target: np.ndarray) -> np.ndarray:
    """[B] capacity of one instance such that the active ones average `target` utilisation."""
    return rate.sum(axis=2).mean(axis=1) / (n_active * target)


def _fitting_capacity(
    rate: np.ndarray,
    arrival: np.ndarray,
    departure: np.ndarray,
    n_active: int,
    target: np.ndarray,
    max_flow_share: float,
) -> np.ndarray:
    """[B] the target-utilisation capacity of the kept flows, raised where needed so that the largest
    kept flow is at most `max_flow_share` of an instance (then the episode runs below its target)."""
    largest = _mean_rate_while_live(rate, arrival, departure).max(axis=1)
    return np.maximum(_capacity(rate, n_active, target), largest / max_flow_share)
