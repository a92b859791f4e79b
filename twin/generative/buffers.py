"""The experience buffers of `000_2c676631a2e0d96a.txt` (section III-D, Table I).

- `PhysicalBuffers`: the recorded transitions kept apart as successful (B_SUC, the last 4000) and failed
  (B_FAIL, the last 2000; `twin.generative.features.failed_periods` says what failed means). A physical batch of J
  draws round(κ·J) from the successful and the rest from the failed (κ = 0.3), with replacement; when one
  buffer is empty the other gives the whole batch. Any transitions type works that is a dataclass of per-row
  arrays with `failed`, `take` and `len` (the generative twin's `Transitions`, the control head's
  `gnn_policy.live_experience.LiveTransitions`).
- `TwinBuffer`: B_DT, the last 6000 synthetic transitions ⟨S_DT(t), A_DT(t), R_DT(t), S_DT(t+1)⟩; the
  learning issue's experience source: `TwinBuffer.sample(J)` returns a `TwinBatch` of tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from twin.generative.models import GenerativeModel


def split_counts(j: int, kappa: float, successful: int, failed: int) -> tuple[int, int]:
    """How many of a batch of j come from the successful and the failed buffer (sizes given)."""
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
    if successful == 0 and failed == 0:
        raise ValueError("both physical buffers are empty: no transition to draw")
    from_successful = round(kappa * j) if successful and failed else (j if successful else 0)
    return from_successful, j - from_successful


class PhysicalBuffers:
    def __init__(self, transitions, successful_capacity: int = 4000, failed_capacity: int = 2000):
        rows = np.arange(len(transitions))
        self.successful = transitions.take(rows[~transitions.failed][-successful_capacity:])
        self.failed = transitions.take(rows[transitions.failed][-failed_capacity:])

    def sample(self, j: int, kappa: float, rng: np.random.Generator):
        """A physical mini-batch M^P (of the buffers' transitions type): round(κ·j) successful then the failed
        rest, drawn with replacement."""
        n_successful, n_failed = split_counts(j, kappa, len(self.successful), len(self.failed))
        parts = [buffer.take(rng.integers(0, len(buffer), size=count))
                 for buffer, count in ((self.successful, n_successful), (self.failed, n_failed)) if count]
        kind = type(parts[0])
        return kind(*(np.concatenate([getattr(p, name) for p in parts]) for name in kind.__dataclass_fields__))


@dataclass(frozen=True)
class TwinBatch:
    """J synthetic transitions in feature units (twin.generative.features STATE and ACTION)."""

    states: torch.Tensor
    """[J, N, len(STATE)] S_DT(t)"""
    actions: torch.Tensor
    """[J, N, len(ACTION)] A_DT(t)"""
    next_states: torch.Tensor
    """[J, N, len(STATE)] S_DT(t+1), the LSTM's prediction"""
    rewards: torch.Tensor
    """[J] R_DT(t), the LSTM's prediction of −(total cost)"""
    mask: torch.Tensor
    """[J, N] bool: the instance exists"""


class TwinBuffer:
    """A ring buffer of the last `capacity` synthetic transitions."""

    def __init__(self, capacity: int = 6000, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"the twin buffer needs a capacity of at least 1, got {capacity}")
        self.capacity, self._rows = capacity, []
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, batch: TwinBatch) -> None:
        fields = [getattr(batch, name) for name in TwinBatch.__dataclass_fields__]
        self._rows += [tuple(f[k] for f in fields) for k in range(batch.rewards.shape[0])]
        del self._rows[:max(len(self._rows) - self.capacity, 0)]

    def sample(self, j: int) -> TwinBatch:
        """A twin mini-batch M^DT of j transitions drawn uniformly (with replacement); every instance count
        in the buffer is padded to the largest."""
        if not self._rows:
            raise ValueError("the twin buffer is empty: fill it first (TwinBuffer.fill)")
        picks = torch.randint(len(self._rows), (j,), generator=self._generator).tolist()
        n = max(self._rows[k][0].shape[0] for k in picks)
        columns = zip(*(self._rows[k] for k in picks))
        return TwinBatch(*(torch.stack([_pad(x, n) for x in column]) for column in columns))

    def fill(self, model: GenerativeModel, physical: PhysicalBuffers, count: int, kappa: float = 0.3,
             seed: int = 0) -> None:
        """Add `count` synthetic transitions: κ-mixed physical windows, each period's pair made synthetic by
        the VAE (eq. 23), the next state and reward predicted by the LSTM from the synthetic window (eq. 25)."""
        rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
        while count > 0:
            batch = physical.sample(min(count, 256), kappa, rng)
            mask = torch.as_tensor(batch.mask)
            window = mask.unsqueeze(1).expand(batch.states.shape[:3])
            states, actions = model.generate(torch.as_tensor(batch.states), torch.as_tensor(batch.actions), window,
                                             generator)
            next_states, rewards = model.predict(states, actions, mask)
            self.add(TwinBatch(states[:, -1], actions[:, -1], next_states * mask.unsqueeze(-1), rewards, mask))
            count -= len(batch)


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    """x with its instance axis (the first) padded with zeros to n."""
    if not x.dim():
        return x
    out = x.new_zeros((n, *x.shape[1:]))
    out[:x.shape[0]] = x
    return out
