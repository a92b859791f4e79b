"""Fitting the residual twin (eq. (16)) on recorded transitions, and optionally simulated ones.

Every origin of the training split is a window: its history and the recorded actions of the next
`FitConfig.rollout` periods. The loss is the error of the network's own rollout over those periods against
the measured states (so it learns to predict k periods ahead from its own predictions, not only one),
masked to the instances active in each predicted state. The validation split's loss picks the epoch whose
weights are kept (and stops the fit after `patience` epochs without a better one); the test split is
never read. Without validation periods the training loss picks, and the record says so. With a base
(`ResidualConfig.base`), the calibrated twin is first fitted on the same training split
(`twin.calibration.fit`) and its rollout of every window becomes the window's base inputs.
"""
from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from twin.calibration import CalibratedParams
from twin.calibration import fit as calibrate
from twin.fidelity.episode import Episode
from twin.fidelity.twins import CalibratedTwin
from twin.residual.features import STATE, collate, training_windows
from twin.residual.model import ResidualConfig, ResidualNet


class FitError(ValueError):
    """Data the residual twin cannot be fitted on; the message says what is missing."""


@dataclass(frozen=True)
class FitConfig:
    """The hyper-parameters of `dm-twin fit --kind residual` (chosen on the shipped validation split)."""

    net: ResidualConfig = field(default_factory=ResidualConfig)
    rollout: int = 5
    """Periods each training window is rolled out for; the loss covers them all."""
    epochs: int = 1000
    patience: int = 150
    """Epochs without a better validation loss before the fit stops."""
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    """Windows per gradient step (the batches are drawn once, their order shuffled each epoch)."""
    loss: str = "l1"
    """l1 (the benchmark's MAE; the median of noisy, bursty targets) or mse (eq. (16) as written)."""
    weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    """Loss weight of each state component (features.STATE order; equal weights chosen on validation,
    docs/twin.md)."""
    normalise: int = 0
    """1: each component's error is also divided by its scale on the training windows, the mean absolute change
    of one period (`change_scale`), so that the small queue and drop fractions count as much as the utilisation
    (in the loss and in the validation choice); 0: raw units (chosen on validation, docs/twin.md)."""
    per_component: int = 1
    """1: each state component is predicted by the weights of the epoch with its own least validation loss
    (the fit's snapshots kept as `ResidualConfig.members`), so that the queue is not chosen by the
    utilisation's error, a hundred times larger; the unfitted network (with a base, the base twin itself) is a
    candidate; 0: one epoch, the least total validation loss."""
    synthetic: int = 0
    """Simulated recordings (twin.fidelity.synthetic) added to the training data."""
    seed: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "net": self.net.to_dict()}


def loss_of(predicted: torch.Tensor, batch, config: FitConfig, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Mean error per scored (node, period, component), each component weighted (and divided by `scale`)."""
    target, mask = batch.y, batch.mask[..., None] & torch.isfinite(batch.y)
    error = predicted - torch.nan_to_num(target)
    if scale is not None:
        error = error / scale
    error = error.abs() if config.loss == "l1" else error.square()
    weights = torch.tensor(config.weights, dtype=error.dtype)
    return (error * weights * mask).sum() / mask.sum().clamp(min=1)


def component_losses(predicted: torch.Tensor, batch, config: FitConfig) -> torch.Tensor:
    """[4] the mean error of each state component alone (unweighted, in its own units)."""
    mask = batch.mask[..., None] & torch.isfinite(batch.y)
    error = predicted - torch.nan_to_num(batch.y)
    error = error.abs() if config.loss == "l1" else error.square()
    return (error * mask).sum((0, 1)) / mask.sum((0, 1)).clamp(min=1)


def change_scale(batch) -> torch.Tensor:
    """[4] the mean absolute one-period change of each state component over a batch's scored first periods
    (floored, so that a component that never changes, e.g. no drops, does not blow up)."""
    mask = batch.mask[:, 0, None] & torch.isfinite(batch.y[:, 0])
    change = (torch.nan_to_num(batch.y[:, 0]) - batch.x[:, 0]).abs() * mask
    return (change.sum(0) / mask.sum(0).clamp(min=1)).clamp(min=1e-3)


def component_mae(net: ResidualNet, windows, horizon: int) -> dict[str, float]:
    """The MAE of each state component at periods 1 and `horizon` of the rollout (for the logs)."""
    batch = collate(windows)
    with torch.no_grad():
        predicted = net(batch)
    out = {}
    for j in sorted({0, horizon - 1}):
        for c, name in enumerate(STATE):
            keep = batch.mask[:, j] & torch.isfinite(batch.y[:, j, c])
            if keep.any():
                out[f"{name}_k{j + 1}"] = float((predicted[keep, j, c] - batch.y[keep, j, c]).abs().mean())
    return out


def fit(episodes: Sequence[Episode], config: FitConfig = FitConfig(), logdir: str | Path | None = None,
        progress: bool = True) -> tuple[ResidualNet, dict]:
    """The fitted network and its record (config, epochs, the chosen epoch and its losses, the data)."""
    torch.manual_seed(config.seed)
    if not any(((e.split[:-1] == "train") & (e.split[1:] == "train")).any() for e in episodes):
        raise FitError("no training transitions: the data has no two consecutive training periods")
    started = time.monotonic()
    params = _base_params(episodes) if config.net.base else None
    base = None if params is None else CalibratedTwin(params)
    train = training_windows(episodes, "train", config.rollout, config.net.history, base)
    if config.synthetic:
        train += training_windows(_simulated(config), "train", config.rollout, config.net.history, base)
    validation = training_windows(episodes, "validation", config.rollout, config.net.history, base)
    net = ResidualNet(config.net, params)
    chooser = collate(validation) if validation else collate(train)
    scale = change_scale(collate(train)) if config.normalise else None
    windows_s = time.monotonic() - started
    writer = _writer(logdir)
    choice, epochs_run = _train(net, train, chooser, config, scale, writer, progress, bool(validation))
    net = choice.network(net, bool(config.per_component))
    maes = component_mae(net, validation or train, config.rollout)
    with torch.no_grad():
        chosen_loss = float(loss_of(net(chooser), chooser, config, scale))
    record = {"config": config.to_dict(), "epochs_run": epochs_run, "chosen_epoch": choice.epochs(
                  bool(config.per_component)), "chosen_on": "validation" if validation else "train",
              "chosen_loss": chosen_loss, "chosen_mae": maes, "loss_scale": None if scale is None else scale.tolist(),
              "train_windows": len(train), "validation_windows": len(validation),
              "windows_s": round(windows_s, 1), "fit_s": round(time.monotonic() - started, 1)}
    if writer:
        for name, value in maes.items():
            writer.add_scalar(f"chosen/{name}", value)
        writer.close()
    return net, record


class _Choice:
    """The best epoch so far, and its member's weights, of the total validation loss and of each component's."""

    def __init__(self, net: ResidualNet):
        first = copy.deepcopy(net.members[0].state_dict())
        self.total = (float("inf"), -2, first)
        self.parts = [(float("inf"), -2, first)] * len(net.config.state)

    def update(self, epoch: int, total: float, parts: torch.Tensor, net: ResidualNet) -> None:
        weights = None
        for c, loss in enumerate([total, *parts.tolist()]):
            if loss < (self.total if c == 0 else self.parts[c - 1])[0]:
                weights = weights or copy.deepcopy(net.members[0].state_dict())
                if c == 0:
                    self.total = (loss, epoch, weights)
                else:
                    self.parts[c - 1] = (loss, epoch, weights)

    @property
    def last(self) -> int:
        return max(epoch for _, epoch, _ in [self.total, *self.parts])

    def epochs(self, per_component: bool) -> int | dict[str, int]:
        return {name: e for name, (_, e, _) in zip(STATE, self.parts)} if per_component else self.total[1]

    def network(self, net: ResidualNet, per_component: bool) -> ResidualNet:
        """`net` with the chosen weights: the total's best epoch, or one member per distinct chosen epoch."""
        chosen = self.parts if per_component else [self.total]
        epochs = sorted({epoch for _, epoch, _ in chosen})
        out = ResidualNet(replace(net.config, members=len(epochs)), net.base)
        for m, epoch in enumerate(epochs):
            out.members[m].load_state_dict(next(w for _, e, w in chosen if e == epoch))
        out.choice[:] = torch.tensor([epochs.index(e) for _, e, _ in chosen] if per_component else 0)
        return out.eval()


def _train(net: ResidualNet, train, chooser, config: FitConfig, scale, writer, progress: bool,
           validation: bool) -> tuple[_Choice, int]:
    """Epochs of AdamW on `train`'s windows until `patience` epochs bring no better loss on `chooser` (of any
    component, when chosen per component); the choice and the epochs run."""
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    choice = _Choice(net)
    generator = torch.Generator().manual_seed(config.seed)
    bar = tqdm(range(config.epochs), disable=None if progress else True, desc="dm-twin fit residual", unit="epoch")
    order = torch.randperm(len(train), generator=generator).tolist()
    batches = [collate([train[i] for i in order[first:first + config.batch_size]])
               for first in range(0, len(order), config.batch_size)]
    with torch.no_grad():  # epoch -1, the unfitted network: with a base, the base twin itself
        predicted = net(chooser)
        choice.update(-1, float(loss_of(predicted, chooser, config, scale)),
                      component_losses(predicted, chooser, config), net)
    for epoch in bar:
        net.train()
        total = 0.0
        for b in torch.randperm(len(batches), generator=generator).tolist():
            loss = loss_of(net(batches[b]), batches[b], config, scale)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * batches[b].num_graphs
        net.eval()
        with torch.no_grad():
            predicted = net(chooser)
            chosen = float(loss_of(predicted, chooser, config, scale))
            choice.update(epoch, chosen, component_losses(predicted, chooser, config), net)
        if writer:
            writer.add_scalar("loss/train", total / len(train), epoch)
            writer.add_scalar("loss/validation" if validation else "loss/choice", chosen, epoch)
        bar.set_postfix(train=f"{total / len(train):.4f}", choice=f"{chosen:.4f}", best=choice.total[1])
        if epoch - (choice.last if config.per_component else choice.total[1]) >= config.patience:
            break
    return choice, epoch + 1


def _base_params(episodes: Sequence[Episode]) -> CalibratedParams:
    """The base twin: the calibrated twin fitted on the same training split (twin.calibration.fit)."""
    try:
        return calibrate(episodes, "train")
    except ValueError as error:  # a CalibrationError, or data too degenerate for calibration's fits
        raise FitError(f"the base (calibrated) twin cannot be fitted on the training split: {error}") from None


def _writer(logdir: str | Path | None):
    if logdir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=str(logdir))


def _simulated(config: FitConfig) -> list[Episode]:
    """`config.synthetic` recordings of the twin's simulator on training windows of the sample trace (seeds
    0-99, the project's training seeds), all labelled training."""
    from trace_replay.episodes import build_episodes
    from trace_replay.generate import sample_path
    from twin.fidelity.episode import episodes_of
    from twin.fidelity.synthetic import Truth, record_simulation
    from twin.records import load

    episodes = []
    with tempfile.TemporaryDirectory() as root:
        for seed in range(config.synthetic):
            batch = build_episodes(sample_path(), n_episodes=1, n_steps=60,
                                   n_instances=2, seed=seed, bin_s=1.0, max_flows=400)
            path = Path(root) / f"sim-{seed}"
            record_simulation(batch, path, Truth(), seed=seed)
            episodes += episodes_of(load(path), "train", path.name)  # tables are read into memory
    return episodes
