"""The controller's twin deviation on recorded testbed periods, and how often its fallback would engage.

Replays each recording of a split through the controller's own estimate (controller_app.deviation:
`DeviationEstimator`, `Fallback`) with the twin predicting every period from the recorded past and the
recorded action (twin.fidelity's `past(t)` and `action(t)`), as the live controller does. Prints, per twin,
the percentiles of the cluster's deviation (the largest per-instance EWMA of |predicted − measured|) and, for
each candidate bound, the share of periods the fallback would be on. docs/twin.md ("Deviation as a signal")
chooses the default bound on the validation recording with it and reports the test one.

    python benchmarks/deviation_bound.py --split validation
"""
from __future__ import annotations

import argparse

import numpy as np

from controller_app.deviation import DeviationConfig, DeviationEstimator, Fallback
from twin.choice import FLOW_TWINS, flow_twin
from twin.fidelity.episode import episodes_of
from twin.records import load, shipped

BOUNDS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def deviation_series(episode, twin, horizon_s: float) -> list[float | None]:
    """The cluster's deviation after each period's comparison (None before the first)."""
    estimator, series = DeviationEstimator(horizon_s), []
    for t in range(episode.n_periods - 1):
        predicted = twin.rollout(episode.past(t), [episode.action(t)])[0].utilisation
        measured = episode.state(t + 1)
        active = np.flatnonzero(measured.active)
        estimator.update(tuple(measured.instance_ids[k] for k in active), predicted[active],
                         measured.utilisation[active], episode.step_s(t))
        series.append(estimator.cluster)
    return series


def fallback_share(series: list[list[float | None]], config: DeviationConfig) -> float:
    on = total = 0
    for one in series:
        fallback = Fallback()
        for value in one:
            fallback.update(value, config)
            on, total = on + fallback.active, total + 1
    return on / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    parser.add_argument("--twins", default="default,calibrated")
    args = parser.parse_args()
    episodes = [e for path in shipped(args.split) for e in episodes_of(load(path), args.split, path.name)]
    config = DeviationConfig()
    print(f"split {args.split}: {len(episodes)} episodes, {sum(e.n_periods for e in episodes)} periods; "
          f"horizon_s {config.horizon_s}, release {config.release}, hold_periods {config.hold_periods}")
    for name in args.twins.split(","):
        if name not in FLOW_TWINS:
            parser.error(f"unknown twin {name!r}; known: {', '.join(FLOW_TWINS)}")
        twin = flow_twin(name)
        series = [deviation_series(e, twin, config.horizon_s) for e in episodes]
        values = np.array([v for one in series for v in one if v is not None])
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        print(f"{name:>10}: cluster deviation p50 {p50:.3f}  p90 {p90:.3f}  p99 {p99:.3f}  max {values.max():.3f}")
        shares = "  ".join(f"{bound:g}: {fallback_share(series, DeviationConfig(bound=bound)):.1%}"
                           for bound in BOUNDS)
        print(f"{'':>10}  fallback on, by bound: {shares}")


if __name__ == "__main__":
    main()
