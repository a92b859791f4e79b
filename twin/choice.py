"""Which twin: one place that turns a twin's name into the twin, for the closed loop (`dm-bench --experiment
closed-loop --twin`, and dm-train's episodes) and for the controller's deviation estimate.

The closed loop's twins are `BatchedTwin`s over trace-driven episodes (`batched_twin`):

- `fluid`: `twin.sim` as it is (hand-set: the configured capacities and buffers, OFM's 39.2 + 2.95·n ms moves,
  round-robin steering);
- `calibrated`: the same episodes with the testbed's fitted physics (`twin.calibration`, the shipped
  `twin/data/calibrated.json` unless another file is named): the pooled service rate and buffer of the fluid
  queue, the arrival ratio κ, moves of a + b·n + c·la_q(source) ms and the share φ of new flows steered to the
  least utilised instance. The fitted traffic model (α, γ, δ, the new-load window) has no part: the trace
  drives the flows. A benchmark cluster is not the testbed's, so every instance and pair takes the pooled fit;
- `residual`: refused (`TwinChoiceError`, see `RESIDUAL_REFUSED`).

The controller's twins are the fidelity benchmark's `FlowTwin`s (`flow_twin`): `default`, `fluid`, `calibrated`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from twin.params import CostParams, Thresholds

if TYPE_CHECKING:
    import torch

    from trace_replay.episodes import EpisodeBatch
    from twin.calibration import CalibratedParams
    from twin.fidelity.twins import FlowTwin
    from twin.sim import BatchedTwin

LOOP_TWINS = ("fluid", "calibrated", "residual")
DEFAULT_LOOP_TWIN = "fluid"
"""The closed loop's default: the twin every earlier closed-loop result was measured in."""
FLOW_TWINS = ("default", "fluid", "calibrated")
CALIBRATED_PARAMS = Path(__file__).resolve().parent / "data" / "calibrated.json"
"""The shipped fitted parameters (`dm-twin calibrate`)."""
RESIDUAL_REFUSED = (
    "the residual twin cannot drive the closed loop's episodes: it predicts each instance's utilisation, queue, "
    "arrivals and drops from the recorded testbed's per-instance history, while a closed-loop episode is driven "
    "flow by flow by the trace (which flow is where, at which rate, is what the policy moves); it has no per-flow "
    "state to step. Use it to score candidate actions (twin.residual.twin.ResidualTwin.score_actions) or in dm-twin eval")


class TwinChoiceError(ValueError):
    """A twin name that is unknown or cannot serve where it was asked for; the message says why."""


def check_loop_twin(name: str) -> None:
    """Refuse, before any work, a closed-loop twin that `batched_twin` would not build."""
    if name not in LOOP_TWINS:
        raise TwinChoiceError(f"unknown twin {name!r}; the closed loop runs {', '.join(LOOP_TWINS)}")
    if name == "residual":
        raise TwinChoiceError(RESIDUAL_REFUSED)


def batched_twin(name: str, batch: EpisodeBatch, params: CostParams = CostParams(),
                 thresholds: Thresholds = Thresholds(), *, calibrated: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu") -> BatchedTwin:
    """The `BatchedTwin` of twin `name` (LOOP_TWINS) over `batch`'s episodes; `calibrated` names the fitted
    parameters (default: the shipped ones). TwinChoiceError for `residual` or an unknown name;
    twin.calibration.CalibrationError for a parameter file that cannot be used."""
    from twin.sim import BatchedTwin

    check_loop_twin(name)
    fitted = load_calibrated(calibrated) if name == "calibrated" else None
    twin = BatchedTwin.from_episodes(batch, params, thresholds, device=device)
    if fitted is not None:
        calibrate(twin, fitted)
    return twin


def load_calibrated(path: str | os.PathLike | None = None) -> CalibratedParams:
    from twin.calibration import load_params

    return load_params(CALIBRATED_PARAMS if path is None else path)


def calibrate(twin: BatchedTwin, fitted: CalibratedParams) -> None:
    """Give `twin` the testbed's fitted physics (pooled over instances and pairs), and the policy a la_ij of
    one move's fitted duration (a + b), as the controller's running mean of measured moves gives it."""
    import torch

    from twin.physics import Physics

    instance, move = fitted.pooled_instance, fitted.pooled_move
    like = {"dtype": twin.capacity.dtype, "device": twin.capacity.device}
    n = twin.n_instances
    a = torch.full((twin.n_episodes, n, n), move.a_ms, **like)
    b = torch.full_like(a, move.b_ms)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=a.device)
    twin.migration_ms = torch.where(off_diagonal, a + b, 0.0)
    twin.physics = Physics(service=instance.service_ratio * twin.capacity, buffer=instance.buffer_ratio * twin.buffer,
                           arrival_ratio=fitted.arrival_ratio, move_a_ms=a, move_b_ms=b,
                           move_drain_factor=fitted.move_drain_factor, move_batch=fitted.batch,
                           least_utilised_share=fitted.least_utilised_share)


def flow_twin(name: str, params: CostParams = CostParams(), thresholds: Thresholds = Thresholds(), *,
              calibrated: str | os.PathLike | None = None) -> FlowTwin:
    """The fidelity benchmark's twin `name` (FLOW_TWINS): what the controller's deviation estimate predicts with."""
    from twin.fidelity.twins import CalibratedTwin, DefaultTwin, FluidTwin

    if name not in FLOW_TWINS:
        raise TwinChoiceError(f"unknown twin {name!r}; known: {', '.join(FLOW_TWINS)}")
    if name == "calibrated":
        return CalibratedTwin(load_calibrated(calibrated), params, thresholds)
    return (DefaultTwin if name == "default" else FluidTwin)(params, thresholds)
