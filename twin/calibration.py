"""The calibrated twin's parameters and their fit to recorded data (issue 18, section 3; the outer loop of
`001_16737d162f4cc0f3.txt`: data the testbed records calibrates the twin by least squares, eq. (7)).

What is fitted, each by least squares on the training periods (docs/twin.md, "Fidelity"):

- per instance: the service rate (as a ratio to the configured capacity) and the buffer (as a ratio to the
  configured one) of the fluid queue (`twin.sim.fluid_queue`), on the next period's queue and drops given
  the packets the NF received; the processing latency la_p, on the sink's per-flow delays less the
  queueing delay;
- per instance pair: a move's duration a + b·n + c·w, n the moves that ran together (the period's batch, or
  the pair's, whichever fits the training moves better) and w the batch's drain wait: OpenNF's export waits
  for the source to serve the flow's packets still queued there, which the NF reports per flow
  (`drain_packets`; `twin.fidelity.twins.moved_flow_waits`), and the batch waits for its slowest drain
  (c is pooled over all pairs).
  Pairs with moves in fewer than `MIN_PAIR_BATCHES` periods, or a single batch size, use the pooled fit.
  The loss (squared, absolute, or relative to the duration) and per-pair vs pooled a and b are chosen on the
  validation moves' MAPE (`choose_moves`), together with the pace term (`twin.move_pace`): a + b·n times
  ρ^β, ρ how much slower than predicted the controller's recent batches ran (β fitted on the training moves);
- the arrivals the queue sees: κ, the packets an NF receives per packet of its flows' load as the switch
  counters measure it;
- the traffic: a flow's next rate α·r + γ·m + δ (r its last rate, m its mean over `RATE_MEMORY` periods;
  0 once it has left); the load of new flows, the mean of the last `arrival_window` periods'; and the
  share φ of it that lands on the least utilised instance (the rest spread evenly: how new flows are steered).

Parameters are saved as JSON with a `version`; `load_params` checks every field and names what is wrong.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from trace_replay.files import write_text
from twin import cost, move_pace
from twin.fidelity.episode import Episode
from twin.fidelity.twins import RATE_MEMORY, flow_means, moved_flow_waits, moved_load
from twin.physics import batch_wait_ms
from twin.sim import fluid_queue

VERSION = 3
"""3: the pace term `move_pace_window`, `move_pace_exponent`; 2: `move_drain_factor` multiplies the batch's drain
wait of its moved flows (1: the source's la_q)."""
KIND = "dm-twin calibrated fluid twin"
MIN_PAIR_BATCHES = 5
ARRIVAL_WINDOWS = (1, 3, 10, 30)
_RATIOS = np.unique(np.append(np.geomspace(0.05, 5.0, 241), 1.0))


class CalibrationError(ValueError):
    """A parameter file that cannot be used, or data that cannot be fitted; the message names the problem."""


@dataclass(frozen=True)
class InstanceFit:
    service_ratio: float = 1.0
    buffer_ratio: float = 1.0
    processing_ms: float = 50.0
    samples: int = 0


@dataclass(frozen=True)
class MoveFit:
    a_ms: float = 39.2
    b_ms: float = 2.95
    samples: int = 0


@dataclass(frozen=True)
class CalibratedParams:
    instances: dict[str, InstanceFit] = field(default_factory=dict)
    pooled_instance: InstanceFit = InstanceFit()
    moves: dict[str, MoveFit] = field(default_factory=dict)
    """Keyed "src->dst"."""
    pooled_move: MoveFit = MoveFit()
    batch: str = "period"
    """n of a move's a + b·n: the moves of its period (`period`) or of its pair in the period (`pair`)."""
    move_drain_factor: float = 0.0
    """c: ms a move takes per ms of its batch's drain wait (the exports wait for the sources to serve the moved
    flows' queued packets; `twin.physics.batch_wait_ms`)."""
    move_pace_window: int = 0
    move_pace_exponent: float = 0.0
    """A move's a + b·n is scaled by ρ^β, ρ the pace of the last `move_pace_window` batches without a drain wait
    measured before the decision (`twin.move_pace`; window 0: off)."""
    rate_persistence: float = 1.0
    rate_reversion: float = 0.0
    rate_base_pps: float = 0.0
    """α, γ, δ: a flow's next rate is α·(its last rate) + γ·(its mean over RATE_MEMORY periods) + δ."""
    arrival_window: int = 10
    least_utilised_share: float = 0.0
    arrival_ratio: float = 1.0
    """κ: packets/s an instance's NF receives per packet/s of its flows' load as the switch counters measure
    it (the fluid queue is fed κ·load)."""
    constant_rate_windows: dict[str, int] = field(default_factory=dict)
    fitted_on: dict = field(default_factory=dict)

    def instance(self, instance_id: str) -> InstanceFit:
        return self.instances.get(instance_id, self.pooled_instance)

    def move(self, src: str, dst: str) -> MoveFit:
        return self.moves.get(f"{src}->{dst}", self.pooled_move)

    def to_json(self) -> dict:
        return {"version": VERSION, "kind": KIND, **asdict(self)}


def save_params(params: CalibratedParams, path: str | os.PathLike) -> None:
    """Write the parameters whole (a failed write leaves the previous file as it was)."""
    write_text(path, json.dumps(params.to_json(), indent=1, allow_nan=False) + "\n")


def load_params(path: str | os.PathLike) -> CalibratedParams:
    """Read and check a parameter file; CalibrationError naming the file and the field otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CalibrationError(f"{path}: not a readable JSON parameter file: {error}") from None
    try:
        return params_from_json(data)
    except CalibrationError as error:
        raise CalibrationError(f"{path}: {error}") from None


def params_from_json(data) -> CalibratedParams:
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise CalibrationError(f"not a calibrated-twin parameter file (kind must be {KIND!r})")
    if data.get("version") != VERSION:
        raise CalibrationError(f"version {data.get('version')!r}, this code reads version {VERSION} only "
                               "(fit it again with dm-twin calibrate)")
    fields = {f for f in CalibratedParams.__dataclass_fields__}
    missing = fields - set(data)
    if missing:
        raise CalibrationError(f"missing field {min(missing)!r}")
    return CalibratedParams(
        instances={k: _fit(InstanceFit, v, f"instances.{k}") for k, v in _mapping(data, "instances").items()},
        pooled_instance=_fit(InstanceFit, data["pooled_instance"], "pooled_instance"),
        moves={k: _fit(MoveFit, v, f"moves.{k}") for k, v in _mapping(data, "moves").items()},
        pooled_move=_fit(MoveFit, data["pooled_move"], "pooled_move"),
        batch=_choice(data, "batch", ("period", "pair")),
        move_drain_factor=_number(data, "move_drain_factor", 0.0, 1e3),
        move_pace_window=int(_number(data, "move_pace_window", 0, 1000)),
        move_pace_exponent=_number(data, "move_pace_exponent", 0.0, 10.0),
        rate_persistence=_number(data, "rate_persistence", 0.0, 1.0),
        rate_reversion=_number(data, "rate_reversion", 0.0, 1.0),
        rate_base_pps=_number(data, "rate_base_pps", 0.0, 1e9),
        arrival_window=int(_number(data, "arrival_window", 1, 10_000)),
        least_utilised_share=_number(data, "least_utilised_share", 0.0, 1.0),
        arrival_ratio=_number(data, "arrival_ratio", 0.0, 1e3),
        constant_rate_windows={k: int(_number(_mapping(data, "constant_rate_windows"), k, 1, 10_000))
                               for k in _mapping(data, "constant_rate_windows")},
        fitted_on=_mapping(data, "fitted_on"))


def _mapping(data: dict, name: str) -> dict:
    if not isinstance(data.get(name), dict):
        raise CalibrationError(f"field {name!r} must be an object")
    return data[name]


def _number(data: dict, name: str, low: float, high: float, where: str = "") -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise CalibrationError(f"field '{where}{name}' must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _choice(data: dict, name: str, allowed: tuple[str, ...]) -> str:
    if data.get(name) not in allowed:
        raise CalibrationError(f"field {name!r} must be one of {', '.join(allowed)}, got {data.get(name)!r}")
    return data[name]


def _fit(kind: type, value, where: str):
    if not isinstance(value, dict) or set(value) != set(kind.__dataclass_fields__):
        raise CalibrationError(f"field {where!r} must hold exactly {', '.join(kind.__dataclass_fields__)}")
    limits = {"service_ratio": (1e-6, 1e6), "buffer_ratio": (1e-6, 1e6), "processing_ms": (0.0, 1e6),
              "a_ms": (0.0, 1e7), "b_ms": (0.0, 1e7), "samples": (0, 1e12)}
    numbers = {name: _number(value, name, *limits[name], where=f"{where}.") for name in value}
    numbers["samples"] = int(numbers["samples"])
    return kind(**numbers)


# --- fitting ----------------------------------------------------------------------------------------------
def fit(episodes: Sequence[Episode], split: str = "train", choose_on: str = "validation") -> CalibratedParams:
    """Least-squares fit of every parameter on the periods of `episodes` labelled `split`; the move model's loss
    is chosen on the periods labelled `choose_on` (on `split` where there are none)."""
    transitions = _transitions(episodes, split)
    if not transitions:
        raise CalibrationError(f"no two consecutive {split} periods to fit on")
    moves, batch, drain, (pace_window, pace_exponent), move_choice = choose_moves(
        transitions, _transitions(episodes, choose_on))
    instances = fit_instances(transitions)
    persistence, reversion, base = fit_rates(transitions)
    window, share = fit_arrivals(transitions)
    arrival_ratio = fit_arrival_ratio(transitions)
    return CalibratedParams(
        instances=instances, pooled_instance=_pooled_instance(instances), moves=moves[0],
        pooled_move=moves[1], batch=batch, move_drain_factor=drain, move_pace_window=pace_window,
        move_pace_exponent=pace_exponent, rate_persistence=persistence,
        rate_reversion=reversion, rate_base_pps=base,
        arrival_window=window, least_utilised_share=share, arrival_ratio=arrival_ratio,
        fitted_on={"recordings": sorted({e.name for e, _ in transitions}),
                   "transitions": len(transitions), **move_choice})


def _transitions(episodes: Sequence[Episode], split: str) -> list[tuple[Episode, int]]:
    return [(e, t) for e in episodes for t in range(e.n_periods - 1) if e.split[t] == split and e.split[t + 1] == split]


MOVE_LOSSES = ("squared", "absolute", "relative")
"""The losses the move model is fitted under: squared error (eq. (7)), absolute error, and absolute error
relative to the measured duration (the MAPE the benchmark reports). Each is fitted with and without per-pair a
and b; the variant with the least duration MAPE on the validation periods is kept (`choose_moves`)."""


@dataclass(frozen=True)
class _MoveRows:
    """One row per measured move: its pair "src->dst", n under both batch definitions, its batch's drain wait w
    (ms) at the state, the duration, its period (recording/period), its source's queueing delay la_q (ms), and
    its episode and period index apart (for the pace of the batches before it)."""

    pairs: np.ndarray
    n: dict[str, np.ndarray]
    wait: np.ndarray
    y: np.ndarray
    periods: np.ndarray
    la_q: np.ndarray
    episode: np.ndarray
    period: np.ndarray

    @classmethod
    def of(cls, transitions) -> _MoveRows:
        rows = []
        for episode, t in transitions:
            action, durations = episode.action(t), episode.durations(t)
            state, ids = episode.state(t), episode.instance_ids
            waits = moved_flow_waits(episode.flow_table(t), state, action)
            wait = float(batch_wait_ms(waits, np.ones(waits.size, bool)))
            la_q = cost.queueing_delay_ms(state.queue, state.capacity)
            pair = action.src * len(ids) + action.dst
            n_pair = np.bincount(pair)[pair] if pair.size else np.empty(0)
            for k in np.flatnonzero(np.isfinite(durations)):
                rows.append((f"{ids[action.src[k]]}->{ids[action.dst[k]]}", action.n_run, n_pair[k],
                             wait, durations[k], f"{episode.name}/{episode.first + t}", la_q[action.src[k]],
                             f"{episode.name}/{episode.first}", t))
        column = [np.array([r[c] for r in rows], dtype=object if c in (0, 5, 7) else float) for c in range(9)]
        return cls(column[0], {"period": column[1], "pair": column[2]}, *column[3:8], column[8].astype(int))

    def history(self, per_move: np.ndarray, window: int) -> np.ndarray:
        """[rows] the mean log pace of the last `window` batches without a drain wait before each row's
        (`move_pace`; NaN: none); `per_move` the predicted a + b·n."""
        logs = {}
        for key in set(zip(self.episode[self.wait == 0].tolist(), self.period[self.wait == 0].tolist())):
            inside = (self.episode == key[0]) & (self.period == key[1])
            logs[key] = move_pace.batch_log_ratio(self.y[inside], per_move[inside])
        return move_pace.history_log_ratios(self.episode, self.period, logs, window)

    def predict(self, fits: dict[str, MoveFit], pooled: MoveFit, batch: str, drain_factor: float) -> np.ndarray:
        fit_ = [fits.get(pair, pooled) for pair in self.pairs]
        return np.array([f.a_ms for f in fit_]) + np.array([f.b_ms for f in fit_]) * self.n[batch] \
            + drain_factor * self.wait


def choose_moves(train, validation, losses: Sequence[str] = MOVE_LOSSES) -> tuple[tuple, str, float, tuple, dict]:
    """The move model fitted on `train` under each loss of `losses`, each with every pace window of
    `move_pace.PACE_WINDOWS` (β fitted on `train`); the variant of least duration MAPE on `validation` (on
    `train` where `validation` has no measured move; a pace must gain `move_pace.MIN_GAIN`): (fits, pooled), batch, drain factor, (pace window, β) and
    the choice's record (loss, chosen_on, MAPE per loss without the pace and per loss and window with it)."""
    train_rows = _MoveRows.of(train)
    if not train_rows.y.size:
        return ({}, MoveFit()), "period", 0.0, (0, 0.0), {}
    rows, chosen_on = (_MoveRows.of(validation), "validation") if validation else (train_rows, "train")
    if not rows.y.size:
        rows, chosen_on = train_rows, "train"
    scores, fitted, paces = {}, {}, {}
    for loss, per_pair in itertools.product(losses, (True, False)):
        name = f"{loss}{'' if per_pair else ', pooled'}"
        fitted[name] = fit_moves(train_rows, loss, per_pair)
        for window, exponent, predicted in paced_variants(train_rows, rows, *fitted[name]):
            paces[name, window] = (window, exponent)
            scores[name, window] = float(np.mean(np.abs(predicted - rows.y) / rows.y))
    name, window = min(scores, key=lambda key: scores[key] + (move_pace.MIN_GAIN if key[1] else 0.0))
    return (*fitted[name], paces[name, window], {
        "move_loss": name, "move_loss_chosen_on": chosen_on,
        "move_mape": {k: round(v, 4) for (k, w), v in scores.items() if w == 0},
        "move_mape_paced": {f"{k}, pace {w}": round(v, 4) for (k, w), v in scores.items() if w > 0}})


def paced_variants(train_rows: _MoveRows, rows: _MoveRows, fits_pooled: tuple, batch: str, drain: float):
    """(window, β, predicted durations of `rows`) for every pace window, β fitted on `train_rows`."""
    train_per_move, per_move = (r.predict(*fits_pooled, batch, 0.0) for r in (train_rows, rows))
    for window in move_pace.PACE_WINDOWS:
        exponent = move_pace.fit_exponent(train_per_move, drain * train_rows.wait, train_rows.y,
                                          train_rows.history(train_per_move, window)) if window else 0.0
        paced = move_pace.apply(per_move, rows.history(per_move, window), exponent)
        yield window, exponent, paced + drain * rows.wait


def fit_moves(rows: _MoveRows, loss: str = "squared",
              per_pair: bool = True) -> tuple[tuple[dict[str, MoveFit], MoveFit], str, float]:
    """(per-pair fits, pooled fit), the batch definition and the drain factor c of a move's duration
    a + b·n + c·w (w: the batch's drain wait), under `loss` (one of `MOVE_LOSSES`). The pooled fit takes all three with
    non-negative coefficients; with `per_pair`, a pair with moves in at least `MIN_PAIR_BATCHES` periods and two
    batch sizes gets its own a and b (c pooled). Both batch definitions are fitted; the one with the smaller training loss wins."""
    if loss not in MOVE_LOSSES:
        raise CalibrationError(f"move loss {loss!r} is not one of {', '.join(MOVE_LOSSES)}")
    best = None
    for batch in ("period", "pair"):
        n = rows.n[batch]
        a, b, c = _fit_linear(np.column_stack([np.ones_like(n), n, rows.wait]), rows.y, loss)
        pooled, fits = MoveFit(float(a), float(b), rows.y.size), {}
        for pair in np.unique(rows.pairs):
            mask = rows.pairs == pair
            if per_pair and np.unique(rows.periods[mask]).size >= MIN_PAIR_BATCHES \
                    and np.unique(n[mask]).size > 1:
                pa, pb = _fit_linear(np.column_stack([np.ones(mask.sum()), n[mask]]),
                                     rows.y[mask] - c * rows.wait[mask], loss, rows.y[mask])
                fits[pair] = MoveFit(float(pa), float(pb), int(mask.sum()))
        residual = _loss(rows.predict(fits, pooled, batch, float(c)), rows.y, loss)
        if best is None or residual < best[0]:
            best = (residual, (fits, pooled), batch, float(c))
    return best[1], best[2], best[3]


def _loss(predicted: np.ndarray, measured: np.ndarray, loss: str) -> float:
    miss = predicted - measured
    if loss == "squared":
        return float((miss ** 2).sum())
    return float((np.abs(miss) / (measured if loss == "relative" else 1.0)).sum())


def _fit_linear(x: np.ndarray, y: np.ndarray, loss: str, scale: np.ndarray | None = None,
                iterations: int = 60) -> np.ndarray:
    """Non-negative coefficients of x·β ≈ y under `loss`: `_nnls` for the squared error; for the absolute and
    relative ones, iteratively reweighted least squares (weights 1 / |residual|, times 1 / `scale` (default y)
    for the relative one), each step an exact `_nnls`."""
    beta = _nnls(x, y)
    if loss == "squared":
        return beta
    base = 1.0 / np.abs(y if scale is None else scale).clip(1e-9) if loss == "relative" else np.ones_like(y)
    floor = 1e-6 * max(float(np.abs(y).mean()), 1e-9)
    for _ in range(iterations):
        root = np.sqrt(base / np.maximum(np.abs(x @ beta - y), floor))
        beta = _nnls(x * root[:, None], y * root)
    return beta


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients, exactly: the best of the unconstrained fits over every
    subset of the (few) columns whose coefficients come out non-negative (the others held at 0)."""
    best = (float((y ** 2).sum()), np.zeros(x.shape[1]))
    for subset in itertools.product((False, True), repeat=x.shape[1]):
        keep = np.array(subset)
        if not keep.any():
            continue
        coefficients, *_ = np.linalg.lstsq(x[:, keep], y, rcond=None)
        if (coefficients >= 0).all():
            beta = np.zeros(x.shape[1])
            beta[keep] = coefficients
            residual = float(((x @ beta - y) ** 2).sum())
            if residual < best[0] - 1e-12 * max(best[0], 1.0):
                best = (residual, beta)
    return best[1]


def _grid_fit(loss: _QueueLoss, services: np.ndarray, buffers: np.ndarray) -> tuple[float, float]:
    """The (service, buffer) ratios of least loss on the grid; among those
    within a hair of it (a parameter the data does not determine, e.g. the buffer of an instance that never
    dropped), the pair nearest (1, 1), the configured values."""
    losses = np.stack([loss(torch.tensor(services), b) for b in buffers], axis=1)
    flat = np.argwhere(losses <= losses.min() * (1 + 1e-9) + 1e-12)
    distance = np.abs(np.log(services[flat[:, 0]])) + np.abs(np.log(buffers[flat[:, 1]]))
    best = flat[np.argmin(distance)]
    return float(services[best[0]]), float(buffers[best[1]])


def fit_arrival_ratio(transitions) -> float:
    """κ by least squares through the origin: the packets each active instance received during a period
    (per second) against its flows' load as the next state measures it (1 without packet counters)."""
    load, arrived = [], []
    for episode, t in transitions:
        known = episode.active[t + 1] & np.isfinite(episode.packets_in[t])
        load.append((episode.utilisation[t + 1] * episode.capacity[t + 1])[known])
        arrived.append(episode.packets_in[t][known] / episode.step_s(t))
    x, y = np.concatenate(load), np.concatenate(arrived)
    return float(x @ y / (x @ x)) if x.size and x @ x > 0 else 1.0


def fit_instances(transitions) -> dict[str, InstanceFit]:
    """Service and buffer ratios (grid least squares through `fluid_queue`, then a finer grid around the
    best), and la_p, per instance."""
    samples: dict[str, list] = {}
    for episode, t in transitions:
        step = episode.step_s(t)
        arrived = np.where(np.isfinite(episode.packets_in[t]), episode.packets_in[t] / step,
                           episode.utilisation[t + 1] * episode.capacity[t + 1])
        for j, instance in enumerate(episode.instance_ids):
            if episode.active[t + 1, j]:
                samples.setdefault(instance, []).append(
                    (episode.queue[t, j], arrived[j], episode.capacity[t, j], episode.buffer[t, j], step,
                     episode.queue[t + 1, j], episode.drops[t, j]))
    fits = {}
    ratio_step = _RATIOS[1] / _RATIOS[0]
    for instance, rows in samples.items():
        loss = _QueueLoss(*(torch.tensor(np.array(c, dtype=float)) for c in zip(*rows)))
        service, buffer = _grid_fit(loss, _RATIOS, _RATIOS)
        service, buffer = _grid_fit(loss, np.geomspace(service / ratio_step, service * ratio_step, 41),
                                    np.geomspace(buffer / ratio_step, buffer * ratio_step, 41))
        fits[instance] = InstanceFit(service, buffer, 0.0, len(rows))
    delays: dict[str, list] = {}
    for episode, t in transitions:
        _delay_samples(episode, t, fits, delays)
    processing = {instance: _weighted_mean(delays.get(instance)) for instance in fits}
    return {instance: replace(fit_, processing_ms=max(
        _configured_processing(transitions, instance) if processing[instance] is None else processing[instance],
        0.0)) for instance, fit_ in fits.items()}


@dataclass(frozen=True)
class _QueueLoss:
    """Squared error of the fluid queue's next queue and drops over one instance's samples, as a function
    of its service and buffer ratios (drops not measured do not count)."""

    queue: torch.Tensor
    arrived: torch.Tensor
    capacity: torch.Tensor
    buffer: torch.Tensor
    step_s: torch.Tensor
    queue_next: torch.Tensor
    drops: torch.Tensor

    def __call__(self, services: torch.Tensor, buffer_ratio: float) -> np.ndarray:
        """[S] losses for the service ratios `services` [S] at one buffer ratio."""
        after, dropped = fluid_queue(self.queue, self.arrived, services[:, None] * self.capacity,
                                     buffer_ratio * self.buffer, self.step_s)
        miss = torch.where(torch.isfinite(self.drops), dropped - torch.nan_to_num(self.drops), 0.0)
        return ((after - self.queue_next) ** 2 + miss ** 2).sum(-1).numpy()


def _weighted_mean(samples: list | None) -> float | None:
    return float(np.average(samples[0], weights=samples[1])) if samples else None


def _configured_processing(transitions, instance: str) -> float:
    episode = next(e for e, _ in transitions if instance in e.instance_ids)
    return float(episode.processing_ms[0, episode.instance_ids.index(instance)])


def _delay_samples(episode: Episode, t: int, fits: dict[str, InstanceFit], out: dict[str, list]) -> None:
    """The sink's delay of each flow not moved in period t, less its instance's queueing delay (the period's
    mean queue at the fitted service rate): samples of la_p, weighted by packets."""
    flows = episode.flow_table(t)
    measured = np.isfinite(flows["delay_ms"]) & (np.nan_to_num(flows["delay_packets"]) > 0)
    measured &= ~np.isin(flows["flow"], episode.action(t).flows)
    if not measured.any():
        return
    mean_queue = (episode.queue[t] + episode.queue[t + 1]) / 2.0
    service = episode.capacity[t] * np.array([fits[i].service_ratio if i in fits else 1.0
                                              for i in episode.instance_ids])
    la_q = cost.queueing_delay_ms(mean_queue, service)[flows["instance"]]
    for k in np.flatnonzero(measured):
        entry = out.setdefault(episode.instance_ids[flows["instance"][k]], [[], []])
        entry[0].append(flows["delay_ms"][k] - la_q[k])
        entry[1].append(flows["delay_packets"][k])


def _pooled_instance(fits: dict[str, InstanceFit]) -> InstanceFit:
    if not fits:
        return InstanceFit()
    weights = np.array([f.samples for f in fits.values()], dtype=float) + 1e-12
    mean = {name: float(np.average([getattr(f, name) for f in fits.values()], weights=weights))
            for name in ("service_ratio", "buffer_ratio", "processing_ms")}
    return InstanceFit(**mean, samples=int(weights.sum()))


def fit_rates(transitions) -> tuple[float, float, float]:
    """α, γ, δ of a flow's next rate α·r + γ·m + δ (non-negative least squares over every flow of every
    transition; a flow gone by the next period counts with rate 0). δ, a rate every flow keeps, lets the
    fit keep the total: most flows of a bursty trace send nothing in most periods, so without it the
    squared error of the few bursts would pull the fit, and the predicted total, towards zero."""
    features, targets = [], []
    for episode, t in transitions:
        past, following = episode.past(t), episode.flow_table(t + 1)
        state = past.state()
        if not state.n_flows:
            continue
        later = dict(zip(following["flow"].tolist(), following["rate"].tolist()))
        features.append(np.column_stack([state.rate, flow_means(past, RATE_MEMORY), np.ones(state.n_flows)]))
        targets.append(np.array([later.get(f, 0.0) for f in state.flow_ids]))
    if not features:
        return 1.0, 0.0, 0.0
    x, y = np.concatenate(features), np.concatenate(targets)
    alpha, gamma, delta = _nnls(x, y)
    return float(min(alpha, 1.0)), float(min(gamma, 1.0)), float(delta)


def new_load(episode: Episode, t: int) -> np.ndarray:
    """[N] load at state t of the flows that were not in state t-1 (all of them at t = 0)."""
    now = episode.flow_table(t)
    fresh = ~np.isin(now["flow"], episode.flow_table(t - 1)["flow"]) if t > 0 else np.ones(now["flow"].size, bool)
    return np.bincount(now["instance"][fresh], weights=now["rate"][fresh], minlength=len(episode.instance_ids))


def fit_arrivals(transitions) -> tuple[int, float]:
    """The window of the new-load estimate (least squares over `ARRIVAL_WINDOWS`) and φ, the share of new
    load steered to the least utilised instance (least squares, in [0, 1])."""
    errors = dict.fromkeys(ARRIVAL_WINDOWS, 0.0)
    numerator = denominator = 0.0
    series: dict[int, np.ndarray] = {}
    for episode, t in transitions:
        if id(episode) not in series:
            series[id(episode)] = np.array([new_load(episode, s) for s in range(episode.n_periods)])
        loads = series[id(episode)]
        total = loads.sum(-1)
        for w in ARRIVAL_WINDOWS:
            errors[w] += float((total[max(t - w + 1, 1):t + 1].mean() if t >= 1 else 0.0) - total[t + 1]) ** 2
        active = episode.active[t + 1]
        if total[t + 1] <= 0 or active.sum() < 2:
            continue
        state = episode.state(t)
        after = (state.load_pps + moved_load(state, episode.action(t))) / state.capacity
        least = np.zeros_like(after)
        least[np.argmin(np.where(active, after, np.inf))] = 1.0
        spread = total[t + 1] * (least - 1.0 / active.sum())
        numerator += float((spread * (loads[t + 1] - total[t + 1] / active.sum()))[active].sum())
        denominator += float((spread ** 2)[active].sum())
    share = min(max(numerator / denominator, 0.0), 1.0) if denominator > 0 else 0.0
    return min(errors, key=errors.get), share
