"""The NASNet policy trained with PPO (Schulman et al. 2017), as in Zoph et al. 2018:
learning rate 3.5e-4, entropy weight 1e-5, EMA baseline 0.95, 20 architectures per minibatch."""

from __future__ import annotations

import torch

from kubenas.spaces import SearchSpace
from kubenas.strategies.policy_gradient import PolicyGradient


class PPO(PolicyGradient):
    name = "ppo"

    def __init__(self, space: SearchSpace, seed: int = 0, clip: float = 0.2, epochs: int = 4, **kwargs):
        """`clip`: the ratio clipping range; `epochs`: gradient steps per minibatch."""
        super().__init__(space, seed, **kwargs)
        if clip <= 0 or epochs < 1:
            raise ValueError(f"ppo: need clip > 0 and epochs >= 1 (got clip={clip}, epochs={epochs})")
        self.clip = clip
        self.epochs = epochs

    def _steps_per_update(self) -> int:
        return self.epochs

    def _loss(self, logp: torch.Tensor, old_logp: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
        ratio = torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))  # no inf * advantage
        clipped = torch.clamp(ratio, 1 - self.clip, 1 + self.clip)
        return -torch.min(ratio * advantage, clipped * advantage).mean()
