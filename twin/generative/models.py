"""The two networks of the generative twin (`000_2c676631a2e0d96a.txt`, section III-C and Table I), per
instance with shared weights so that any number of instances works.

- `MultiTaskVAE` (eq. 23-24): the encoder reads an instance's scaled (state, action) with the cluster's
  mean of them (two ReLU layers, 64 and 32) and gives the mean and log-variance of its latent; the decoder
  reads the latent with the cluster's mean latent (a shared 64-unit ReLU layer) and has two sigmoid heads,
  the state and the action.
- `MultiTaskLSTM` (eq. 25-26): one 64-unit LSTM layer over the last H periods of an instance's (state,
  action, cluster mean), a 64-unit ReLU layer, and two linear heads: the next state (as a change of the
  last one) and the period's reward (from the sum and the mean over the cluster's instances).

`GenerativeModel` holds both with the `Scaler` of the training data and works in feature units.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from twin.generative.features import ACTION, BINARY_ACTION, BINARY_STATE, STATE


@dataclass(frozen=True)
class GenerativeConfig:
    """Every hyper-parameter of the generative twin (sizes of Table I; buffers and κ of section III-D)."""

    history: int = 4
    """H, the periods the LSTM reads."""
    latent: int = 8
    encoder_hidden: tuple[int, int] = (64, 32)
    decoder_hidden: int = 64
    lstm_hidden: int = 64
    head_hidden: int = 64
    kl_weight: float = 0.1
    """β, the weight of eq. 24's KL term (the paper's: 1; at 1 the posterior collapses on the recorded
    features and the VAE reconstructs no better than their mean, docs/twin.md)."""
    kappa1: float = 1.0
    """Eq. 26's weight of the next-state error."""
    kappa2: float = 0.5
    """Eq. 26's weight of the reward error."""
    kappa: float = 0.3
    """Share of each physical batch drawn from the successful buffer (the rest from the failed)."""
    batch: int = 32
    """J^P and J^DT."""
    generated_inputs: float = 0.5
    """Share of the LSTM's training inputs that are the VAE's synthetic pairs (eq. 25); the rest are the
    physical pairs a rollout reads."""
    steps: int = 3000
    validate_every: int = 100
    learning_rate: float = 1e-3
    successful_capacity: int = 4000
    failed_capacity: int = 2000
    twin_capacity: int = 6000
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("history", "latent", "decoder_hidden", "lstm_hidden", "head_hidden", "batch", "steps",
                    "validate_every", "successful_capacity", "failed_capacity", "twin_capacity")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("kappa", "kappa1", "kappa2", "generated_inputs"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.kl_weight < 0 or self.learning_rate <= 0 or min(self.encoder_hidden) < 1:
            raise ValueError("kl_weight must be >= 0, learning_rate > 0 and the encoder's layers at least 1 wide")

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> GenerativeConfig:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown hyper-parameters {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def pooled(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [..., N, F] with the mean over the existing instances (mask [..., N]) appended to each instance."""
    weight = mask.unsqueeze(-1).to(x.dtype)
    mean = (x * weight).sum(-2, keepdim=True) / weight.sum(-2, keepdim=True).clamp(min=1.0)
    return torch.cat([x, mean.expand_as(x)], dim=-1)


class MultiTaskVAE(nn.Module):
    def __init__(self, config: GenerativeConfig):
        super().__init__()
        width, (h1, h2) = len(STATE) + len(ACTION), config.encoder_hidden
        self.encoder = nn.Sequential(nn.Linear(2 * width, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU())
        self.mean, self.log_var = nn.Linear(h2, config.latent), nn.Linear(h2, config.latent)
        self.decoder = nn.Sequential(nn.Linear(2 * config.latent, config.decoder_hidden), nn.ReLU())
        self.state_head = nn.Linear(config.decoder_hidden, len(STATE))
        self.action_head = nn.Linear(config.decoder_hidden, len(ACTION))

    def encode(self, states, actions, mask) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(pooled(torch.cat([states, actions], -1), mask))
        return self.mean(hidden), self.log_var(hidden).clamp(-10.0, 10.0)

    def decode(self, z, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the scaled state and action (the sigmoid heads' inputs)."""
        hidden = self.decoder(pooled(z, mask))
        return self.state_head(hidden), self.action_head(hidden)

    def forward(self, states, actions, mask, sample: bool = True):
        mean, log_var = self.encode(states, actions, mask)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var) if sample else mean
        state_logits, action_logits = self.decode(z, mask)
        return state_logits, action_logits, mean, log_var


def vae_loss(vae: MultiTaskVAE, states, actions, mask, kl_weight: float,
             sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(eq. 24 per instance, its reconstruction part): Bernoulli likelihoods of the sigmoid heads on the
    scaled features (clamped to [0, 1]) and the KL divergence to N(0, I); `sample` False decodes the
    posterior mean."""
    state_logits, action_logits, mean, log_var = vae(states, actions, mask, sample)
    weight = mask.to(states.dtype)
    bce = nn.functional.binary_cross_entropy_with_logits
    reconstruction = (bce(state_logits, states.clamp(0, 1), reduction="none").sum(-1)
                      + bce(action_logits, actions.clamp(0, 1), reduction="none").sum(-1))
    kl = -0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(-1)
    count = weight.sum().clamp(min=1.0)
    return ((reconstruction + kl_weight * kl) * weight).sum() / count, (reconstruction * weight).sum() / count


class MultiTaskLSTM(nn.Module):
    def __init__(self, config: GenerativeConfig):
        super().__init__()
        width = len(STATE) + len(ACTION)
        self.lstm = nn.LSTM(2 * width, config.lstm_hidden, batch_first=True)
        self.shared = nn.Sequential(nn.Linear(config.lstm_hidden, config.head_hidden), nn.ReLU())
        self.state_head = nn.Linear(config.head_hidden, len(STATE))
        self.reward_head = nn.Linear(2 * config.head_hidden, 1)

    def forward(self, states, actions, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """states [B, H, N, S], actions [B, H, N, A], mask [B, N] -> (next states [B, N, S], rewards [B])."""
        b, h, n, _ = states.shape
        x = pooled(torch.cat([states, actions], -1), mask.unsqueeze(1).expand(b, h, n))
        _, (last, _) = self.lstm(x.permute(0, 2, 1, 3).reshape(b * n, h, -1))
        hidden = self.shared(last[-1]).reshape(b, n, -1)
        weight = mask.unsqueeze(-1).to(states.dtype)
        total = (hidden * weight).sum(1)
        mean = total / weight.sum(1).clamp(min=1.0)
        return states[:, -1] + self.state_head(hidden), self.reward_head(torch.cat([total, mean], -1)).squeeze(-1)


def lstm_loss(lstm: MultiTaskLSTM, states, actions, mask, next_states, rewards,
              kappa1: float, kappa2: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eq. 26, its next-state MSE per instance feature, its reward MSE) on scaled values; rewards that
    were not measured (NaN) are left out."""
    predicted, reward = lstm(states, actions, mask)
    weight = mask.unsqueeze(-1).to(states.dtype)
    state_error = ((predicted - next_states).pow(2) * weight).sum() / (weight.sum() * len(STATE)).clamp(min=1.0)
    known = torch.isfinite(rewards)
    reward_error = (reward[known] - rewards[known]).pow(2).mean() if known.any() else reward.sum() * 0.0
    return kappa1 * state_error + kappa2 * reward_error, state_error, reward_error


class Scaler(nn.Module):
    """Min-max scaling of the features to [0, 1] and standardisation of the reward, fitted on training
    transitions (buffers, not parameters: they travel in the checkpoint's state dict)."""

    def __init__(self):
        super().__init__()
        for name, size in (("state_lo", len(STATE)), ("state_span", len(STATE)), ("action_lo", len(ACTION)),
                           ("action_span", len(ACTION)), ("reward", 2)):
            self.register_buffer(name, torch.zeros(size, dtype=torch.float64))

    def fit(self, states: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor) -> None:
        for lo, span, x in (("state_lo", "state_span", states), ("action_lo", "action_span", actions)):
            rows = x[mask.unsqueeze(1).expand(x.shape[:-1])] if x.dim() == 4 else x[mask]
            getattr(self, lo).copy_(rows.amin(0))
            getattr(self, span).copy_((rows.amax(0) - rows.amin(0)).clamp(min=1e-6))
        known = rewards[torch.isfinite(rewards)]
        mean, std = (known.mean(), known.std().clamp(min=1e-6)) if known.numel() > 1 else (0.0, 1.0)
        self.reward.copy_(torch.tensor([float(mean), float(std)], dtype=torch.float64))

    def states(self, x, inverse: bool = False):
        return x * self.state_span + self.state_lo if inverse else (x - self.state_lo) / self.state_span

    def actions(self, x, inverse: bool = False):
        return x * self.action_span + self.action_lo if inverse else (x - self.action_lo) / self.action_span

    def rewards(self, x, inverse: bool = False):
        return x * self.reward[1] + self.reward[0] if inverse else (x - self.reward[0]) / self.reward[1]


class GenerativeModel(nn.Module):
    """The VAE, the LSTM and their scaler: eq. 23 (`generate`) and eq. 25 (`predict`) in feature units."""

    def __init__(self, config: GenerativeConfig):
        super().__init__()
        self.config = config
        self.vae, self.lstm, self.scaler = MultiTaskVAE(config), MultiTaskLSTM(config), Scaler()

    @torch.no_grad()
    def generate(self, states, actions, mask, generator: torch.Generator | None = None):
        """Synthetic (state, action) pairs from physical ones ([..., N, F], eq. 23): encode, draw the latent,
        decode; the binary features are rounded."""
        mean, log_var = self.vae.encode(self._in(self.scaler.states(states)), self._in(self.scaler.actions(actions)),
                                        mask)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        state_logits, action_logits = self.vae.decode(mean + noise * torch.exp(0.5 * log_var), mask)
        synthetic_states = self.scaler.states(torch.sigmoid(state_logits).double(), inverse=True)
        synthetic_actions = self.scaler.actions(torch.sigmoid(action_logits).double(), inverse=True)
        synthetic_states[..., BINARY_STATE] = synthetic_states[..., BINARY_STATE].round()
        synthetic_actions[..., BINARY_ACTION] = synthetic_actions[..., BINARY_ACTION].round()
        weight = mask.unsqueeze(-1)
        return synthetic_states * weight, synthetic_actions * weight

    @torch.no_grad()
    def predict(self, states, actions, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(next states [B, N, S], rewards [B]) from windows states [B, H, N, S], actions [B, H, N, A]."""
        next_states, rewards = self.lstm(self._in(self.scaler.states(states)),
                                         self._in(self.scaler.actions(actions)), mask)
        return self.scaler.states(next_states.double(), inverse=True), self.scaler.rewards(rewards.double(),
                                                                                           inverse=True)

    @staticmethod
    def _in(x: torch.Tensor) -> torch.Tensor:
        return x.float()
