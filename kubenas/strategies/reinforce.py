"""The NASNet policy trained with REINFORCE (Williams 1992) and the moving-average
baseline, as in Zoph & Le 2017."""

from __future__ import annotations

import torch

from kubenas.strategies.policy_gradient import PolicyGradient


class Reinforce(PolicyGradient):
    name = "reinforce"

    def _loss(self, logp: torch.Tensor, old_logp: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
        return -(logp * advantage).mean()
