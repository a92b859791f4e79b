"""Fitting the generative twin to recorded transitions (`dm-twin fit --kind generative`).

Each step draws a κ-mixed physical batch (`PhysicalBuffers`, from the training split), takes one Adam step
of the VAE on eq. 24 and one of the LSTM on eq. 26 (a `generated_inputs` share of its input windows made
synthetic by the VAE, eq. 25). Every `validate_every` steps both are scored on the whole validation split
(the training split when there is none, which the record says); each network keeps its weights of its
best validation score.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from twin.fidelity.episode import Episode
from twin.generative.buffers import PhysicalBuffers
from twin.generative.features import Transitions, transitions
from twin.generative.models import GenerativeConfig, GenerativeModel, lstm_loss, vae_loss


class FitError(ValueError):
    """Data the generative twin cannot be fitted on."""


@dataclass(frozen=True)
class Scaled:
    """Transitions as the networks read them: scaled float32 tensors."""

    states: torch.Tensor
    actions: torch.Tensor
    next_states: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def of(cls, data: Transitions, model: GenerativeModel) -> Scaled:
        scaler = model.scaler
        as_tensor = torch.as_tensor
        return cls(scaler.states(as_tensor(data.states)).float(), scaler.actions(as_tensor(data.actions)).float(),
                   scaler.states(as_tensor(data.next_states)).float(), scaler.rewards(as_tensor(data.rewards)).float(),
                   as_tensor(data.mask))

    @property
    def window_mask(self) -> torch.Tensor:
        return self.mask.unsqueeze(1).expand(self.states.shape[:3])


def scores(model: GenerativeModel, data: Scaled) -> dict[str, float]:
    """The validation scores: the VAE's reconstruction (posterior mean, the last period of each window) and
    eq. 26 with its parts, on physical inputs."""
    with torch.no_grad():
        config = model.config
        _, reconstruction = vae_loss(model.vae, data.states[:, -1], data.actions[:, -1], data.mask,
                                     config.kl_weight, sample=False)
        total, state_error, reward_error = lstm_loss(model.lstm, data.states, data.actions, data.mask,
                                                     data.next_states, data.rewards, config.kappa1, config.kappa2)
    return {"vae_reconstruction": float(reconstruction), "lstm": float(total),
            "lstm_next_state_mse": float(state_error), "lstm_reward_mse": float(reward_error)}


def fit(episodes: list[Episode], config: GenerativeConfig | None = None, logdir: Path | None = None,
        progress: bool = True) -> tuple[GenerativeModel, dict]:
    """The fitted model and the fit's record (data, buffer sizes, best steps and scores, seconds). Torch runs
    on one thread meanwhile: these networks are too small to gain from more, and lose much on a busy host."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(episodes, config or GenerativeConfig(), logdir, progress)
    finally:
        torch.set_num_threads(threads)


def _fit(episodes: list[Episode], config: GenerativeConfig, logdir: Path | None,
         progress: bool) -> tuple[GenerativeModel, dict]:
    started = time.monotonic()
    train = transitions(episodes, "train", config.history)
    if not len(train):
        raise FitError("no training transitions (two consecutive training periods of one episode)")
    validation = transitions(episodes, "validation", config.history)
    chosen_on = "validation" if len(validation) else "train"
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = GenerativeModel(config)
    model.scaler.fit(*(torch.as_tensor(x) for x in (train.states, train.actions, train.mask, train.rewards)))
    physical = PhysicalBuffers(train, config.successful_capacity, config.failed_capacity)
    held = Scaled.of(validation if len(validation) else train, model)
    optimisers = {name: torch.optim.Adam(getattr(model, name).parameters(), lr=config.learning_rate)
                  for name in ("vae", "lstm")}
    best = {"vae": (np.inf, 0, None), "lstm": (np.inf, 0, None)}
    writer = _writer(logdir)
    for step in tqdm(range(1, config.steps + 1), desc="fit generative", disable=not progress or None):
        losses = _step(model, physical.sample(config.batch, config.kappa, rng), optimisers)
        if step % config.validate_every == 0 or step == config.steps:
            model.eval()
            losses |= {f"validation/{k}": v for k, v in scores(model, held).items()}
            model.train()
            for name, key in (("vae", "validation/vae_reconstruction"), ("lstm", "validation/lstm")):
                if losses[key] < best[name][0]:
                    best[name] = (losses[key], step, copy.deepcopy(getattr(model, name).state_dict()))
        if writer:
            for key, value in losses.items():
                writer.add_scalar(key, value, step)
    if writer:
        writer.close()
    for name, (_, _, weights) in best.items():
        getattr(model, name).load_state_dict(weights)
    model.eval()
    return model, {"transitions": {"train": len(train), "validation": len(validation)},
                   "successful": len(physical.successful), "failed": len(physical.failed),
                   "chosen_on": chosen_on, "best_step": {name: b[1] for name, b in best.items()},
                   "scores": scores(model, held), "fit_s": round(time.monotonic() - started, 1)}


def against_mean(model: GenerativeModel, held: Transitions, train: Transitions) -> dict[str, dict[str, float]]:
    """Mean squared errors (scaled units) on `held` of the VAE's reconstruction (posterior mean) and the
    LSTM's next state and reward, each beside the mean predictor's (the training mean of what is predicted)."""
    data, fitted = Scaled.of(held, model), Scaled.of(train, model)
    with torch.no_grad():
        state_logits, action_logits, _, _ = model.vae(data.states[:, -1], data.actions[:, -1], data.mask, sample=False)
        next_states, rewards = model.lstm(data.states, data.actions, data.mask)
    pairs = torch.cat([data.states[:, -1], data.actions[:, -1]], -1)
    mean_pair = torch.cat([fitted.states[:, -1], fitted.actions[:, -1]], -1)[fitted.mask].mean(0)
    mask, known = data.mask, torch.isfinite(data.rewards)

    def mse(predicted, truth, rows):
        return float((predicted - truth)[rows].pow(2).mean())

    return {"vae_reconstruction": {"model": mse(torch.sigmoid(torch.cat([state_logits, action_logits], -1)), pairs,
                                                mask),
                                   "mean": mse(mean_pair.expand_as(pairs), pairs, mask)},
            "lstm_next_state": {"model": mse(next_states, data.next_states, mask),
                                "mean": mse(fitted.next_states[fitted.mask].mean(0).expand_as(data.next_states),
                                            data.next_states, mask)},
            "lstm_reward": {"model": mse(rewards, data.rewards, known),
                            "mean": mse(fitted.rewards[torch.isfinite(fitted.rewards)].mean().expand_as(data.rewards),
                                        data.rewards, known)}}


def _step(model: GenerativeModel, batch: Transitions, optimisers: dict) -> dict[str, float]:
    """One Adam step of each network on a physical batch; their training losses."""
    config, data = model.config, Scaled.of(batch, model)
    loss, reconstruction = vae_loss(model.vae, data.states[:, -1], data.actions[:, -1], data.mask, config.kl_weight)
    optimisers["vae"].zero_grad()
    loss.backward()
    optimisers["vae"].step()
    states, actions = data.states, data.actions
    synthetic = torch.rand(len(batch)) < config.generated_inputs
    if synthetic.any():
        fake_states, fake_actions = model.generate(torch.as_tensor(batch.states[synthetic.numpy()]),
                                                   torch.as_tensor(batch.actions[synthetic.numpy()]),
                                                   data.window_mask[synthetic])
        states, actions = states.clone(), actions.clone()
        states[synthetic] = model.scaler.states(fake_states).float()
        actions[synthetic] = model.scaler.actions(fake_actions).float()
    total, state_error, reward_error = lstm_loss(model.lstm, states, actions, data.mask, data.next_states,
                                                 data.rewards, config.kappa1, config.kappa2)
    optimisers["lstm"].zero_grad()
    total.backward()
    optimisers["lstm"].step()
    return {key: float(value.detach()) for key, value in (
        ("train/vae", loss), ("train/vae_reconstruction", reconstruction), ("train/lstm", total),
        ("train/lstm_next_state_mse", state_error), ("train/lstm_reward_mse", reward_error))}


def _writer(logdir: Path | None):
    if logdir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=str(logdir))
