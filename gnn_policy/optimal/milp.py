"""A thin modelling layer over highspy: columns and rows added in numpy batches, the model kept as the log of
its highspy calls and solved in the worker process (`gnn_policy.optimal.highs_worker`), with a warm start."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import highspy
import numpy as np

from gnn_policy.optimal import highs_worker

INF = highspy.kHighsInf
"""HiGHS's infinity, for unbounded columns and one-sided rows."""
EMPTY = np.empty(0, dtype=np.int64)
"""No columns."""


@dataclass
class Run:
    """One HiGHS solve: its status, answer `x` (None without one), the answer's objective, the bound, the
    seconds it took and the improving answers `saved` on request."""

    status: str
    """'optimal', 'time_limit', 'infeasible', another HiGHS model status in lower case, or 'killed' (HiGHS overran
    its time limit and its worker process was stopped, `gnn_policy.optimal.highs_worker`)."""
    x: np.ndarray | None
    objective: float
    bound: float
    seconds: float
    saved: list[np.ndarray] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        """Whether the solve ended at the time limit rather than with a proof."""
        return self.status in ("time_limit", "killed")


PROOF_SLACK = 10.0
"""A run that ends "optimal" with its answer more than this many times its gap tolerances above its bound was
not proven (`Milp.run`); the slack keeps HiGHS's own rounding of the gap from triggering a second solve."""


class Milp:
    """A MILP built in numpy batches and solved by HiGHS in the worker process (`gnn_policy.optimal.highs_worker`), which
    is killed when a solve overruns its time limit. The model is the log of its highspy calls."""

    def __init__(self, threads: int, seed: int):
        self.settings = {"output_flag": False, "threads": int(threads), "random_seed": int(seed), "mip_rel_gap": 1e-6}
        self.log: list[tuple[str, tuple]] = []
        self.key = highs_worker.new_key()
        self.n = 0
        self.offset = 0.0
        self.n_integer = 0
        # The objective coefficient of every column, as set in HiGHS (a run prices its answer with them).
        self.costs = np.zeros(0)
        highs_worker.solver_process.start()

    def add(self, count: int, lower=0.0, upper=1.0, cost=0.0, integer: bool = False) -> np.ndarray:
        """`count` new columns, integer ones if `integer`, with bounds `lower`, `upper` and objective coefficient
        `cost` (each a scalar or a [count] array); returns their indices, [count] int64."""
        if count == 0:
            return EMPTY
        lower = np.broadcast_to(np.asarray(lower, dtype=float), (count,)).copy()
        upper = np.broadcast_to(np.asarray(upper, dtype=float), (count,)).copy()
        cols = np.arange(self.n, self.n + count, dtype=np.int64)
        self.log.append(("addVars", (count, lower, upper)))
        costs = np.broadcast_to(np.asarray(cost, dtype=float), (count,)).copy()
        if np.any(costs != 0):
            self.log.append(("changeColsCost", (count, cols.astype(np.int32), costs)))
        self.costs = np.r_[self.costs, costs]
        self.n += count
        if integer:
            self.set_integer(cols)
        return cols

    def set_integer(self, cols: np.ndarray) -> None:
        if cols.size:
            self.log.append(("changeColsIntegrality", (cols.size, cols.astype(np.int32),
                                                       np.full(cols.size, highspy.HighsVarType.kInteger))))
            self.n_integer += cols.size

    def bounds(self, cols: np.ndarray, lower, upper) -> None:
        """Set the bounds of columns `cols` to `lower`, `upper` (scalars or arrays shaped like `cols`)."""
        self.log.append(("changeColsBounds", (cols.size, cols.astype(np.int32),
                                              np.broadcast_to(np.asarray(lower, dtype=float), cols.shape).copy(),
                                              np.broadcast_to(np.asarray(upper, dtype=float), cols.shape).copy())))

    def rows(self, rows: list[tuple[np.ndarray, np.ndarray, float, float]]) -> None:
        """Add rows lo <= Σ val·x[idx] <= hi."""
        rows = [r for r in rows if len(r[0])]
        if not rows:
            return
        lengths = np.array([len(r[0]) for r in rows])
        starts = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int32)
        index = np.concatenate([np.asarray(r[0]) for r in rows]).astype(np.int32)
        value = np.concatenate([np.asarray(r[1], dtype=float) for r in rows])
        lower = np.array([r[2] for r in rows], dtype=float)
        upper = np.array([r[3] for r in rows], dtype=float)
        self.log.append(("addRows", (len(rows), lower, upper, index.size, starts, index, value)))

    def csr_rows(self, starts: np.ndarray, index: np.ndarray, value: np.ndarray, lower, upper) -> None:
        """Add rows lower <= Σ value·x[index] <= upper in CSR form: row r's entries start at `starts[r]` of the
        flat `index` (columns) and `value`; `lower`, `upper` are scalars or [len(starts)] arrays."""
        count = starts.size
        if count == 0:
            return
        self.log.append(("addRows", (count, np.broadcast_to(np.asarray(lower, dtype=float), (count,)).copy(),
                                     np.broadcast_to(np.asarray(upper, dtype=float), (count,)).copy(), index.size,
                                     starts.astype(np.int32), index.astype(np.int32), value.astype(float))))

    def objective(self, cols: np.ndarray, costs: np.ndarray) -> None:
        """Replace the objective coefficients of every column (zero where not named)."""
        full = np.zeros(self.n)
        full[cols] = costs
        self.log.append(("changeColsCost", (self.n, np.arange(self.n, dtype=np.int32), full)))
        self.costs = full

    def run(self, seconds: float, start: np.ndarray | None = None, *, rel_gap: float = 1e-6,
            abs_gap: float = 1e-6, save: bool = False) -> Run:
        """One solve within `seconds`, from `start` if given. HiGHS 1.16 can end a warm-started solve with status
        optimal while its bound lies far below the start's objective (it returns the start, and reports the
        bound as the objective): such a run is solved again by a fresh solver without the start in the time left,
        and the better answer is kept with the higher bound."""
        began = time.perf_counter()
        self.settings.update(mip_rel_gap=float(rel_gap), mip_abs_gap=float(abs_gap),
                             mip_improving_solution_save=bool(save))
        first = self._solve(seconds, start, save)
        unproven = first.objective - first.bound > PROOF_SLACK * max(abs_gap, rel_gap * abs(first.objective))
        if start is None or first.status != "optimal" or not unproven:
            return first
        self.key = highs_worker.new_key()
        second = self._solve(seconds - (time.perf_counter() - began), None, save)
        better = second if second.x is not None and second.objective <= first.objective else first
        return Run(better.status, better.x, better.objective, max(first.bound, second.bound),
                    first.seconds + second.seconds, first.saved + second.saved)

    def _solve(self, seconds: float, start: np.ndarray | None, save: bool) -> Run:
        seconds = float(max(seconds, 0.01))
        began = time.perf_counter()
        report = highs_worker.solver_process.solve(self.key, self.log, {**self.settings, "time_limit": seconds},
                                                   start, seconds, save)
        if report is None:  # killed: the worker and every model it held are gone
            self.key = highs_worker.new_key()
            return Run("killed", None, math.inf, -math.inf, time.perf_counter() - began)
        x = report["x"]
        bound = report["mip_dual_bound"] if self.n_integer else report["objective"]
        if report["status"] == "optimal" and x is not None and not math.isfinite(bound):
            bound = report["objective"]
        # the solution's own objective: after a warm start HiGHS can report another one in its info
        objective = float(self.costs @ x) if x is not None else math.inf
        return Run(report["status"], x, objective + self.offset, bound + self.offset if math.isfinite(bound) else -math.inf,
                    time.perf_counter() - began, report["saved"])


def group_rows(keys: np.ndarray, cols: np.ndarray, values: np.ndarray):
    """CSR (starts, index, value, key of each row) of the entries grouped by key."""
    order = np.argsort(keys, kind="stable")
    keys, cols, values = keys[order], cols[order], values[order]
    if keys.size == 0:
        return EMPTY, EMPTY, np.empty(0), EMPTY
    starts = np.r_[0, np.flatnonzero(np.diff(keys)) + 1]
    return starts, cols, values, keys[starts]
