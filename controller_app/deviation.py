"""The twin's deviation as a signal (issue 18, section 4; paper 003, eq. (14)).

Paper 003 gives its agent, per edge server, the deviation f̂ between the server's true state and its twin's
estimate, signed, as an input of the state S_t = {d, f, f̂, Q(t)} (eq. (14)). Here the server is an NF instance
and its state the utilisation. Every period t the controller's twin (`twin.choice.flow_twin`: the fidelity
benchmark's `default`, `fluid` or `calibrated` twin) predicts the utilisation of period t+1 from what the
controller saw (the states up to t, `LiveHistory`) and the action it executed in t; at t+1 the prediction
is compared with the measured utilisation of every instance active in both periods. Per instance two EWMAs
of time constant `horizon_s` run over that residual, predicted − measured:

- `twin_deviation`, the signed mean: f̂ of eq. (14), shown in the REST state and /metrics and given to the
  policy (`ClusterState.twin_deviation`, the optional node feature of `gnn_policy.graph`);
- `twin_deviation_abs`, the mean of |predicted − measured|: how far off the twin is, whichever way. A twin
  that errs both ways has a small f̂ and a large magnitude; the fallback watches the magnitude.

The cluster's deviation is the largest magnitude over the instances. When it stays above `bound` for
`hold_periods` periods the controller falls back to the stabilized baseline (`fallback_policy` behind the
stabilizer) and says so in its decision records; it returns to the configured policy once the deviation
stayed below `release` × `bound` for `hold_periods` periods (the hysteresis). docs/twin.md ("Deviation as a
signal") gives the defaults and why.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from gnn_policy.registry import POLICY_NAMES
from gnn_policy.stabilizer import RateEstimator
from twin.choice import FLOW_TWINS
from twin.fidelity.episode import state_flow_table
from twin.state import ClusterState

if TYPE_CHECKING:
    from controller_app.decisions import DecisionRecord
    from twin.fidelity.episode import RecordedAction
    from twin.fidelity.twins import FlowTwin

LOG = logging.getLogger(__name__)
HISTORY = 32
"""States the live history keeps: the calibrated twin reads up to its new-load window (at most 30) + 1."""


class DeviationError(ValueError):
    """A deviation setting that cannot be used; `field` names it."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class DeviationConfig:
    """The deviation estimate's settings (the controller config's `deviation` object)."""

    twin: str = "calibrated"
    """The twin that predicts (twin.choice.FLOW_TWINS): the shipped calibrated one fits the testbed best."""
    horizon_s: float = 5.0
    """The EWMAs' time constant, as the stabilizer's load estimate."""
    bound: float | None = 2.0
    """Fall back when the cluster's deviation (utilisation) stays above this; None: never."""
    release: float = 0.75
    """Return when the cluster's deviation stays below release × bound (hysteresis)."""
    hold_periods: int = 3
    """How many consecutive periods "stays" means, both ways."""
    fallback_policy: str = "ofm"
    """The baseline fallen back to, always behind the stabilizer."""

    def __post_init__(self) -> None:
        if self.twin not in FLOW_TWINS:
            raise DeviationError(f"twin must be one of {', '.join(FLOW_TWINS)}, not {self.twin!r}", "twin")
        if not _number(self.horizon_s) or self.horizon_s <= 0:
            raise DeviationError(f"horizon_s must be a finite number > 0, not {self.horizon_s!r}", "horizon_s")
        if self.bound is not None and (not _number(self.bound) or self.bound <= 0):
            raise DeviationError(f"bound must be a finite number > 0 (a utilisation), or null for no fallback, "
                                 f"not {self.bound!r}", "bound")
        if not _number(self.release) or not 0 < self.release <= 1:
            raise DeviationError(f"release must be a fraction of the bound in (0, 1], not {self.release!r}",
                                 "release")
        if isinstance(self.hold_periods, bool) or not isinstance(self.hold_periods, int) or self.hold_periods < 1:
            raise DeviationError(f"hold_periods must be an integer >= 1, not {self.hold_periods!r}", "hold_periods")
        if self.fallback_policy not in POLICY_NAMES:
            raise DeviationError(f"unknown fallback_policy {self.fallback_policy!r}; known: "
                                 f"{', '.join(POLICY_NAMES)}", "fallback_policy")

    def to_dict(self) -> dict:
        return asdict(self)

    def updated(self, changes: Any) -> DeviationConfig:
        """This config with `changes` (a JSON object of some fields) applied and checked."""
        if not isinstance(changes, dict):
            raise DeviationError("the deviation settings must be a JSON object")
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            raise DeviationError(f"unknown deviation setting {unknown[0]!r}", unknown[0])
        return replace(self, **changes)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- the estimate -------------------------------------------------------------------------------------------
class DeviationEstimator:
    """Per instance, the EWMAs of predicted − measured (signed) and of its magnitude; an instance not compared
    in a period (stopped, or new) is forgotten and starts afresh (the stabilizer's `RateEstimator`, by id)."""

    def __init__(self, horizon_s: float):
        self.signed = RateEstimator("ewma", horizon_s, calibrated=False)
        self.magnitude = RateEstimator("ewma", horizon_s, calibrated=False)

    def update(self, instance_ids: tuple[str, ...], predicted: np.ndarray, measured: np.ndarray,
               period_s: float) -> None:
        residual = np.asarray(predicted, dtype=float) - np.asarray(measured, dtype=float)
        self.signed.update(instance_ids, residual, period_s)
        self.magnitude.update(instance_ids, np.abs(residual), period_s)

    def deviation(self, instance_id: str) -> float | None:
        return self.signed.ewma.get(instance_id)

    def deviation_abs(self, instance_id: str) -> float | None:
        return self.magnitude.ewma.get(instance_id)

    @property
    def cluster(self) -> float | None:
        """The largest magnitude over the instances (None before the first comparison)."""
        return max(self.magnitude.ewma.values(), default=None)


class Fallback:
    """Whether to fall back: `update` once per period with the cluster's deviation (None: not known, which
    neither counts for nor against)."""

    def __init__(self) -> None:
        self.active = False
        self.streak = 0
        """Consecutive periods on the far side of the current threshold (above the bound, or below the release)."""

    def update(self, deviation: float | None, config: DeviationConfig) -> bool:
        """Take in one period; whether the state changed."""
        if config.bound is None:
            changed, self.active, self.streak = self.active, False, 0
            return changed
        if deviation is None:
            return False
        across = deviation < config.release * config.bound if self.active else deviation > config.bound
        self.streak = self.streak + 1 if across else 0
        if self.streak >= config.hold_periods:
            self.active, self.streak = not self.active, 0
            return True
        return False


# --- what the twin may read ---------------------------------------------------------------------------------
class LiveHistory:
    """The controller's last states, of one instance set (a change of the set starts it afresh)."""

    def __init__(self, keep: int = HISTORY):
        self.states: deque[ClusterState] = deque(maxlen=keep)

    def add(self, state: ClusterState) -> None:
        if self.states and self.states[-1].instance_ids != state.instance_ids:
            self.states.clear()
        self.states.append(state)

    def past(self, period_s: float) -> LivePast:
        """What a twin may read now (a new object each time: a twin may cache per `Past`)."""
        return LivePast(tuple(self.states), period_s)


class LivePast:
    """A `LiveHistory` as a twin's `Past` (twin.fidelity.episode): states 0..t. The live controller keeps no
    per-period packet counters or move durations here: `drops` and `packets_in` are NaN (not measured) and
    `durations` empty; none of the twins it runs derives the utilisation from them."""

    def __init__(self, states: tuple[ClusterState, ...], period_s: float):
        self.states, self.period_s = states, period_s

    @property
    def t(self) -> int:
        return len(self.states) - 1

    @property
    def instance_ids(self) -> tuple[str, ...]:
        return self.states[-1].instance_ids

    @property
    def capacity(self) -> np.ndarray:
        return self.states[-1].capacity

    @property
    def buffer(self) -> np.ndarray:
        return self.states[-1].buffer

    def state(self, t: int | None = None) -> ClusterState:
        return self.states[self._known(t)]

    def flow_table(self, t: int | None = None) -> dict[str, np.ndarray]:
        return state_flow_table(self.state(t))

    def queue(self, since: int) -> np.ndarray:
        return np.stack([s.queue for s in list(self.states)[max(since, 0):]])

    def drops(self, since: int) -> np.ndarray:
        return np.full((max(self.t - max(since, 0), 0), len(self.instance_ids)), np.nan)

    packets_in = drops

    def durations(self, since: int) -> tuple[np.ndarray, list]:
        return np.empty(0), []

    def _known(self, t: int | None) -> int:
        t = self.t if t is None else t
        if not 0 <= t <= self.t:
            raise IndexError(f"state {t} is not known at origin {self.t}")
        return t


def executed_action(state: ClusterState, record: DecisionRecord | None) -> RecordedAction:
    """What period t carried out, as the twin takes it: the done moves and the instances started and stopped
    (nothing when nothing was executed)."""
    from twin.fidelity.episode import RecordedAction

    n, index = state.n_instances, state.instance_index
    runs = [] if record is None else [r for r in record.migrations
                                      if r.outcome.value == "done" and r.src in index and r.dst in index]
    started, stopped = np.zeros(n, bool), np.zeros(n, bool)
    if record is not None:
        started[[index[i] for i in record.started if i in index]] = True
        stopped[[index[i] for i in record.stopped if i in index]] = True
    ran = 0 if record is None else sum(r.started_at is not None for r in record.migrations)
    return RecordedAction(tuple(r.flow for r in runs), np.array([index[r.src] for r in runs], dtype=np.int64),
                          np.array([index[r.dst] for r in runs], dtype=np.int64), started, stopped, ran)


# --- the controller's part ----------------------------------------------------------------------------------
class DeviationMonitor:
    """Once per period: `measure` the state the controller built (compare it with last period's prediction),
    then, after the decision, `predict` the next period from it and the executed action."""

    def __init__(self, config: DeviationConfig, make_twin: Callable[[str], FlowTwin]):
        self.config = config
        self._make_twin = make_twin
        self._twin: FlowTwin | None = None
        self.estimator = DeviationEstimator(config.horizon_s)
        self.fallback = Fallback()
        self.history = LiveHistory()
        self._predicted: tuple[tuple[str, ...], np.ndarray] | None = None
        self.period_s = 1.0
        self.last_error = ""

    def reconfigure(self, config: DeviationConfig) -> None:
        """New settings: another twin or horizon starts the estimate afresh; the fallback state carries on."""
        if (config.twin, config.horizon_s) != (self.config.twin, self.config.horizon_s):
            self._twin, self._predicted = None, None
            self.estimator = DeviationEstimator(config.horizon_s)
        self.config = config

    def measure(self, state: ClusterState, period_s: float) -> bool:
        """Compare the prediction for this period with `state`; update the estimate and the fallback.
        Returns whether the fallback changed."""
        self.history.add(state)
        self.period_s = period_s
        compared = self._predicted is not None
        if compared:
            ids, predicted = self._predicted
            index = state.instance_index
            both = [k for k, i in enumerate(ids) if i in index and state.active[index[i]]]
            self.estimator.update(tuple(ids[k] for k in both), predicted[both],
                                  state.utilisation[[index[ids[k]] for k in both]], period_s)
        self._predicted = None
        return self.fallback.update(self.estimator.cluster if compared else None, self.config)

    def predict(self, record: DecisionRecord | None) -> None:
        """The twin's utilisation of the next period, from the history and what this period executed; a twin
        that fails is logged and this period's comparison skipped (never a stopped controller)."""
        if not self.history.states:
            return
        state = self.history.states[-1]
        try:
            if self._twin is None:
                self._twin = self._make_twin(self.config.twin)
            step = self._twin.rollout(self.history.past(self.period_s), [executed_action(state, record)])[0]
        except Exception as error:  # a twin bug must not stop the controller
            LOG.exception("twin %s could not predict the next period", self.config.twin)
            self.last_error = f"{type(error).__name__}: {error}"
            return
        self._predicted = (state.instance_ids, np.asarray(step.utilisation, dtype=float))
        self.last_error = ""

    def deviations(self, instance_ids: tuple[str, ...]) -> np.ndarray:
        """[N] the signed estimate of each instance (0 where there is none yet): the policy's input."""
        return np.array([self.estimator.deviation(i) or 0.0 for i in instance_ids])

    def view(self) -> dict:
        """The REST state's `deviation` object."""
        return {"twin": self.config.twin, "cluster": self.estimator.cluster, "bound": self.config.bound,
                "release": self.config.release * self.config.bound if self.config.bound is not None else None,
                "fallback": self.fallback.active, "fallback_policy": self.config.fallback_policy,
                "streak": self.fallback.streak, "error": self.last_error}
