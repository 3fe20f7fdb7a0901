"""The NASNet policy (Zoph et al. 2018; the paper calls it the controller): an
LSTM that samples a space's decisions one after another, trained by policy
gradient on child rewards.

One LSTM cell (100 hidden units by default) runs over the decision sequence;
step t reads the embedding of the choice made at step t-1 (a learned start
vector at t=0) and a softmax head of its own picks decision t (heads differ in
size: operations, inputs, combines, numeric bins). For nasnet that is, block
by block and for both cells, input_a, input_b, op_a, op_b, combine.

Rewards arrive asynchronously: each is turned into an advantage when it
arrives, against the exponential moving average of the rewards that arrived
before it (then the average takes the new reward in), and buffered; every
`batch` buffered architectures make one update (PPO or REINFORCE, see the
subclasses). Log-probabilities are stored at sampling time for PPO's ratio.

This module imports torch; `kubenas.strategies` imports it only on demand.
"""

from __future__ import annotations

from abc import abstractmethod
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from torch import nn

from kubenas.spaces import SearchSpace
from kubenas.strategies.base import Result, Strategy, Trial
from kubenas.training.checkpoints import param_groups_from_json, plain_json
from kubenas.strategies.encoding import Encoding


@contextmanager
def one_thread() -> Iterator[None]:
    """The policy is tiny: threads only contend (badly, on a busy node). The
    process's own setting is restored afterwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class PolicyLSTM(nn.Module):
    def __init__(self, sizes: list[int], hidden: int = 100):
        super().__init__()
        self.sizes = list(sizes)
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.embeddings = nn.ModuleList(nn.Embedding(n, hidden) for n in self.sizes)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.sizes)

    def reset_parameters(self, generator: torch.Generator, scale: float = 0.1) -> None:
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * scale - scale)

    def forward(self, batch: int, actions: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample `batch` sequences (or score the given (batch, T) `actions`).

        Returns actions (batch, T), their log-probabilities (batch,) and the
        summed per-step entropies (batch,).
        """
        x = self.start.expand(batch, -1)
        state = None
        chosen, logps, entropies = [], [], []
        for t, head in enumerate(self.heads):
            state = self.cell(x, state)
            log_probs = torch.log_softmax(head(state[0]), dim=-1)
            if actions is None:
                a = torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(1)
            else:
                a = actions[:, t]
            chosen.append(a)
            logps.append(log_probs.gather(1, a[:, None]).squeeze(1))
            entropies.append(-(log_probs.exp() * log_probs).sum(-1))
            x = self.embeddings[t](a)
        return torch.stack(chosen, 1), torch.stack(logps, 1).sum(1), torch.stack(entropies, 1).sum(1)


class PolicyGradient(Strategy):
    """The policy's shared machinery; subclasses define the loss."""

    def __init__(self, space: SearchSpace, seed: int = 0, hidden: int = 100, lr: float = 3.5e-4,
                 entropy_weight: float = 1e-5, baseline_decay: float = 0.95, batch: int = 20):
        super().__init__(space, seed)
        if batch < 1:
            raise ValueError(f"{self.name}: batch must be >= 1 (got {batch})")
        self.encoding = Encoding(space)
        self.entropy_weight = entropy_weight
        self.baseline_decay = baseline_decay
        self.batch = batch
        self.generator = torch.Generator().manual_seed(seed)
        self.model = PolicyLSTM(self.encoding.sizes, hidden)
        self.model.reset_parameters(self.generator)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.baseline: Optional[float] = None
        self.meta: dict[str, dict[str, Any]] = {}  # trial id -> sampled actions and log-prob
        self.buffer: list[dict[str, Any]] = []  # finished, waiting for a full minibatch
        self.updates = 0
        self.policy_entropy: Optional[float] = None  # of the last sampled batch (a metric)

    # --- proposing -------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Trial]:
        if n <= 0:
            return []
        with torch.no_grad(), one_thread():
            actions, logp, entropy = self.model(n, generator=self.generator)
        # Read through stats() for the search's metrics; derived, so not checkpointed.
        self.policy_entropy = float(entropy.mean())
        trials = []
        for a, lp in zip(actions.tolist(), logp.tolist()):
            trial = self._new_trial(self.encoding.genotype(a))
            self.meta[trial.id] = {"actions": a, "logp": lp}
            trials.append(trial)
        return trials

    def _injected(self, trial: Trial) -> None:
        actions = self.encoding.indices(trial.genotype)
        with torch.no_grad(), one_thread():
            _, logp, _ = self.model(1, actions=torch.tensor([actions]))
        self.meta[trial.id] = {"actions": actions, "logp": float(logp[0])}

    # --- learning --------------------------------------------------------------
    def _observe(self, trial: Trial, result: Result) -> None:
        meta = self.meta.pop(trial.id, None)
        if meta is None or result.reward is None:
            return  # failed children teach nothing (NASNet drops them too)
        reward = float(result.reward)
        # Against earlier rewards only: a reward in its own baseline would shrink its advantage.
        advantage = 0.0 if self.baseline is None else reward - self.baseline
        if self.baseline is None:
            self.baseline = reward
        else:
            self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        self.buffer.append({**meta, "reward": reward, "advantage": advantage})
        while len(self.buffer) >= self.batch:
            minibatch, self.buffer = self.buffer[: self.batch], self.buffer[self.batch:]
            with one_thread():
                self._update(minibatch)
            self.updates += 1

    def _update(self, minibatch: list[dict[str, Any]]) -> None:
        actions = torch.tensor([m["actions"] for m in minibatch])
        old_logp = torch.tensor([m["logp"] for m in minibatch])
        advantage = torch.tensor([m["advantage"] for m in minibatch])
        for _ in range(self._steps_per_update()):
            _, logp, entropy = self.model(len(minibatch), actions=actions)
            loss = self._loss(logp, old_logp, advantage) - self.entropy_weight * entropy.mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

    def _steps_per_update(self) -> int:
        return 1

    @abstractmethod
    def _loss(self, logp: torch.Tensor, old_logp: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
        """The policy loss of a minibatch (to minimise)."""

    def stats(self) -> dict[str, float]:
        return {} if self.policy_entropy is None else {"policy_entropy": self.policy_entropy}

    # --- state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        opt = self.optimizer.state_dict()
        state.update(
            model={k: v.detach().clone() for k, v in self.model.state_dict().items()},
            optimizer={
                "state": [[int(k), {n: (t.clone() if torch.is_tensor(t) else t) for n, t in v.items()}]
                          for k, v in sorted(opt["state"].items())],
                "param_groups": plain_json(opt["param_groups"]),
            },
            generator=self.generator.get_state(),
            baseline=self.baseline,
            meta=[[k, {"actions": list(v["actions"]), "logp": v["logp"]}] for k, v in self.meta.items()],
            buffer=[dict(b, actions=list(b["actions"])) for b in self.buffer],
            updates=self.updates,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict({"state": {k: dict(v) for k, v in state["optimizer"]["state"]},
                                        "param_groups": param_groups_from_json(state["optimizer"]["param_groups"])})
        self.generator.set_state(state["generator"])
        self.baseline = state["baseline"]
        self.meta = {k: {"actions": list(v["actions"]), "logp": float(v["logp"])} for k, v in state["meta"]}
        self.buffer = [dict(b, actions=list(b["actions"])) for b in state["buffer"]]
        self.updates = state["updates"]

