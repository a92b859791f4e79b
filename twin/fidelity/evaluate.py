"""The fidelity benchmark (issue 18, section 2): each twin rolled out from every held-out origin with the
recorded actions, its prediction of the k-th period compared with the raw measured value.

One record per (twin, k, metric): `{twin, k, metric, mae, mape, n}`. The metrics, for step k from origin t
(docs/twin.md, "Fidelity"): `utilisation` and `queue` of each instance active in state t+k; `drops` of each
of those instances during period t+k-1; `migration_ms` of each done move of period t+k-1; and period
t+k-1's measured cost components (`migration`, `resource`, `threshold_penalty`). MAPE is taken over the
samples whose measured value is not 0 (null when there is none); MAE and n over all.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from twin.fidelity.episode import COST_COMPONENTS, SPLITS, Episode, episodes_of
from twin.fidelity.twins import ConstantRateTwin, FlowTwin, Step, Twin
from twin.generative import checkpoint as generative_checkpoint
from twin.generative.rollout import load_twin as generative_twin
from twin.records import SHIPPED_SPLIT, Recording, RecordingError, load
from twin.residual import checkpoint as residual_checkpoint
from twin.residual.twin import ResidualTwin

METRICS = ("utilisation", "queue", "drops", "migration_ms", *COST_COMPONENTS)
WINDOWS = (1, 2, 3, 5, 8, 13, 21)
"""Candidate windows of the constant-rate floor."""
SPLIT_FILE = "split.json"
def _residual_twin(path: Path | None, base: FlowTwin) -> Twin:
    return ResidualTwin.load(path, base=base, params=base.params, thresholds=base.thresholds)


LEARNED_TWINS: dict[str, tuple[Path, Callable[[Path | None, FlowTwin], Twin]]] = {
    "generative": (generative_checkpoint.DEFAULT_CHECKPOINT, lambda path, _base: generative_twin(path)),
    "residual": (residual_checkpoint.DEFAULT_MODEL, _residual_twin),
}
"""Learned twins by kind (`dm-twin fit --kind`): the shipped checkpoint and what loads one into a Twin, given
the flow twin that answers what the learned one does not predict (move durations, the migration cost)."""


def learned_twins(models: dict[str, Path], base: FlowTwin) -> list[Twin]:
    """The learned twins of the checkpoints named (kind: path), and of every kind not named whose shipped
    checkpoint exists."""
    return [loader(models.get(kind), base) for kind, (shipped, loader) in LEARNED_TWINS.items()
            if kind in models or shipped.is_file()]


# --- data ---------------------------------------------------------------------------------------------
def load_dataset(path: str | os.PathLike, default_split: str) -> list[Episode]:
    """The episodes of a recording, or of every recording in a directory of them.

    Each period's split label comes from the dataset's `split.json` ({"train": [names], ...}), else from the
    shipped dataset's split (`twin.records.SHIPPED_SPLIT`, by recording name), else from the recording's
    meta.json `split` (a label, or {label: [[first, last), ...]]}), else `default_split`.
    """
    root = Path(path)
    if not root.is_dir():
        raise RecordingError(f"{root}: not a directory")
    if (root / "meta.json").exists():
        return _episodes(load(root), default_split, root.name)
    names = sorted(p.name for p in root.iterdir() if (p / "meta.json").exists())
    if not names:
        raise RecordingError(f"{root}: not a recording (no meta.json) and holds no recordings")
    assigned = _split_file(root, names)
    episodes = []
    for name in names:
        episodes += _episodes(load(root / name), assigned.get(name, default_split), name)
    return episodes


def _split_file(root: Path, names: Sequence[str]) -> dict[str, str]:
    path = root / SPLIT_FILE
    if not path.exists():
        return {name: label for label, members in SHIPPED_SPLIT.items() for name in members if name in names}
    try:
        split = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RecordingError(f"{path}: not readable JSON: {error}") from None
    if not isinstance(split, dict) or not set(split) <= set(SPLITS) \
            or not all(isinstance(v, list) for v in split.values()):
        raise RecordingError(f"{path}: must map {', '.join(SPLITS)} to lists of recording names")
    assigned = {name: label for label, members in split.items() for name in members}
    unknown = set(assigned) - set(names)
    if unknown:
        raise RecordingError(f"{path}: names {min(unknown)!r}, which is no recording in {root}")
    return assigned


def _episodes(recording: Recording, default_split: str, name: str) -> list[Episode]:
    split = recording.meta.get("split", default_split)
    if isinstance(split, dict):
        labels = np.full(recording.n_periods, default_split, dtype=object)
        for label, ranges in split.items():
            for first, last in ranges:
                labels[first:last] = label
        split = labels
    elif split not in SPLITS:
        raise RecordingError(f"{recording.directory}/meta.json: split {split!r} is not one of {', '.join(SPLITS)}")
    return episodes_of(recording, split, name)


# --- evaluation ---------------------------------------------------------------------------------------
def collect(twin: Twin, episodes: Iterable[Episode], ks: Sequence[int], split: str,
            on_origin: Callable[[], None] = lambda: None) -> dict[tuple[int, str], tuple[list, list]]:
    """(predicted, measured) samples per (k, metric) of one twin over every origin of `split`."""
    out: dict[tuple[int, str], tuple[list, list]] = {(k, m): ([], []) for k in ks for m in METRICS}
    longest = max(ks)
    for episode in episodes:
        for t in origins(episode, split, min(ks)):
            horizon = _horizon(episode, t, split, longest)
            steps = twin.rollout(episode.past(t), [episode.action(t + j) for j in range(horizon)])
            for k in ks:
                if k <= horizon:
                    _compare(episode, t, k, steps[k - 1], out)
            on_origin()
    return out


def origins(episode: Episode, split: str, k: int) -> list[int]:
    """The origins t whose periods t..t+k all belong to `split`."""
    inside = episode.split == split
    return [t for t in range(episode.n_periods - k) if inside[t:t + k + 1].all()]


def _horizon(episode: Episode, t: int, split: str, longest: int) -> int:
    horizon = 0
    while horizon < longest and t + horizon + 1 < episode.n_periods and episode.split[t + horizon + 1] == split:
        horizon += 1
    return horizon


def _compare(episode: Episode, t: int, k: int, step: Step, out) -> None:
    state, period = t + k, t + k - 1
    active = episode.active[state]
    pairs = {"utilisation": (step.utilisation, episode.utilisation[state]),
             "queue": (step.queue, episode.queue[state]),
             "drops": (step.drops, episode.drops[period]),
             "migration_ms": (step.migration_ms, episode.durations(period))}
    for metric, (predicted, measured) in pairs.items():
        keep = np.isfinite(measured) & (active if metric != "migration_ms" else True)
        out[(k, metric)][0].extend(np.asarray(predicted)[keep].tolist())
        out[(k, metric)][1].extend(np.asarray(measured)[keep].tolist())
    for name in COST_COMPONENTS:
        if np.isfinite(episode.costs[name][period]):
            out[(k, name)][0].append(step.costs[name])
            out[(k, name)][1].append(float(episode.costs[name][period]))


def errors(predicted: Sequence[float], measured: Sequence[float]) -> dict:
    """MAE over all samples, MAPE over those measured non-zero (None without any), n."""
    p, y = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    if not y.size:
        return {"mae": None, "mape": None, "n": 0}
    nonzero = np.abs(y) > 1e-9
    mape = float(np.mean(np.abs(p - y)[nonzero] / np.abs(y[nonzero]))) if nonzero.any() else None
    return {"mae": float(np.mean(np.abs(p - y))), "mape": mape, "n": int(y.size)}


def records(name: str, samples) -> list[dict]:
    return [{"twin": name, "k": k, "metric": metric, **errors(*pair)} for (k, metric), pair in samples.items()]


def choose_windows(episodes: Sequence[Episode], split: str = "validation") -> dict[str, int]:
    """The constant-rate floor's window per metric: the one of `WINDOWS` with the least one-period MAE on
    `split` (1 where `split` has no origin)."""
    scores: dict[str, dict[int, float]] = {m: {} for m in ConstantRateTwin.METRICS}
    for w in WINDOWS:
        samples = collect(ConstantRateTwin(dict.fromkeys(ConstantRateTwin.METRICS, w)), episodes, [1], split)
        for metric in ConstantRateTwin.METRICS:
            mae = errors(*samples[(1, metric)])["mae"]
            if mae is not None:
                scores[metric][w] = mae
    return {metric: (min(s, key=s.get) if s else 1) for metric, s in scores.items()}
