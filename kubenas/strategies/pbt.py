"""Population-based training (Jaderberg et al. 2017), for joint architecture +
hyperparameter spaces; the parameters use Ray Tune's names.

`population` members start from random points of the space (architecture and
hyperparameters) and train in intervals of `perturbation_interval` epochs,
each interval one trial that resumes the member's own last checkpoint
(`warm_start="resume"`, `parent_id` = the trial that wrote it: the trainer
loads all its weights and trains on) for `fidelity` epochs: the interval, or
what is left of `max_epochs` (the member's epochs are counted here). A member
has one cosine learning-rate schedule over `max_epochs`: each interval enters
it at the member's epochs (`schedule_start`), so an interval continues the
schedule rather than restarting it; an explored learning rate scales it from there.
When an interval's result arrives (asynchronously: no member waits for the
others), and the member has trained at least `burn_in_period` epochs:

- exploit: a member in the bottom `quantile_fraction` of the population (by
  each member's latest score) copies a member of the top quantile that has
  trained at least as long and is not finished: its checkpoint (weights,
  hence its architecture), its epochs and its hyperparameters;
- explore: the copied hyperparameters are perturbed: with probability
  `resample_probability` a hyperparameter is drawn afresh from the space,
  otherwise a numeric one is multiplied by 0.8 or 1.2 (clipped to its range)
  and a categorical one is kept. A searched `epochs` is left alone: PBT
  schedules epochs itself, through each trial's `fidelity`.

A member that reaches `max_epochs` stops; the search is exhausted when all
have. The architecture is chosen by selection alone (weights cannot follow a
changed cell); the hyperparameters are searched along the way. A failed
interval makes its member copy a top member (or start over from a random
point when no member has a score yet).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from kubenas.spaces import Genotype, SearchSpace
from kubenas.spaces.base import HP_PREFIX
from kubenas.spaces.decisions import Numeric
from kubenas.strategies.base import CONTINUE, STOP, Result, SearchExhausted, Strategy, TrainingDecision, Trial

PERTURBATION_FACTORS = (1.2, 0.8)  # Ray Tune's defaults


@dataclass
class Member:
    genotype: Optional[Genotype] = None  # what its next interval trains (None: not drawn yet)
    epochs: int = 0  # epochs in its checkpoint
    checkpoint: Optional[str] = None  # the trial whose checkpoint holds its weights
    trained: Optional[Genotype] = None  # the genotype that checkpoint was trained with
    score: Optional[float] = None  # its latest interval's reward
    running: Optional[str] = None  # the trial training its next interval
    done: bool = False


class PopulationBasedTraining(Strategy):
    name = "pbt"
    fidelity_aware = True  # every interval's result is a partial one, told with its epochs
    repeats = True  # a member's intervals train the same genotype again: not duplicates

    def __init__(self, space: SearchSpace, seed: int = 0, population: int = 8, perturbation_interval: int = 2,
                 max_epochs: int = 12, quantile_fraction: float = 0.25, resample_probability: float = 0.25,
                 burn_in_period: int = 0):
        super().__init__(space, seed)
        if population < 2:
            raise ValueError(f"pbt: population must be >= 2 to exploit anyone (got {population})")
        if not 1 <= perturbation_interval <= max_epochs:
            raise ValueError(f"pbt: need 1 <= perturbation_interval <= max_epochs (got perturbation_interval="
                             f"{perturbation_interval}, max_epochs={max_epochs})")
        if not 0 < quantile_fraction <= 0.5:
            raise ValueError(f"pbt: quantile_fraction must be in (0, 0.5] (got {quantile_fraction})")
        if not 0 <= resample_probability <= 1:
            raise ValueError(f"pbt: resample_probability must be in [0, 1] (got {resample_probability})")
        if burn_in_period < 0:
            raise ValueError(f"pbt: burn_in_period must be >= 0 (got {burn_in_period})")
        self.population_size = population
        self.perturbation_interval = perturbation_interval
        self.max_epochs = max_epochs
        self.quantile_fraction = quantile_fraction
        self.resample_probability = resample_probability
        self.burn_in_period = burn_in_period
        self.members = [Member() for _ in range(population)]
        self.ready: list[int] = list(range(population))  # members whose next interval may be issued, in order
        self.member_of: dict[str, int] = {}  # pending trial id -> member
        self.exploits = 0
        self.failures = 0

    # --- proposing -------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Trial]:
        if not self.ready and all(m.done for m in self.members):
            raise SearchExhausted(f"pbt: every member of the population trained {self.max_epochs} epochs")
        trials = []
        while self.ready and len(trials) < n:
            index = self.ready.pop(0)
            member = self.members[index]
            if member.genotype is None:
                member.genotype = self.space.sample(self.rng)
            fidelity = min(self.perturbation_interval, self.max_epochs - member.epochs)
            # The member's one cosine schedule over max_epochs goes on where its checkpoint left it
            # (an exploited member: where the member it copied was), from its current learning rate.
            trial = self._new_trial(member.genotype, fidelity=fidelity, parent_id=member.checkpoint,
                                    warm_start="resume", schedule_epochs=self.max_epochs,
                                    schedule_start=member.epochs)
            member.running = trial.id
            self.member_of[trial.id] = index
            trials.append(trial)
        return trials  # empty while every unfinished member trains: ask again after a result

    def _injected(self, trial: Trial) -> None:
        # Not a member (a warm start, a wrapper's fallback): trained once, like a first interval.
        trial.fidelity = min(self.perturbation_interval, self.max_epochs)

    def report(self, trial_id: str, epoch: int, value: float) -> TrainingDecision:
        trial = self.pending.get(trial_id)
        if trial is None:
            return TrainingDecision(STOP, epoch, "unknown or finished trial")
        return TrainingDecision(CONTINUE, trial.fidelity or self.perturbation_interval)

    # --- learning ----------------------------------------------------------------------
    def _observe(self, trial: Trial, result: Result) -> None:
        index = self.member_of.pop(trial.id, None)
        if index is None:
            return  # an injected trial: not a member
        member = self.members[index]
        member.running = None
        if result.reward is None:
            self.failures += 1
            member.score = None
            if not self._exploit(index):
                # Nobody to copy yet: start over from a fresh random point.
                self.members[index] = Member()
            self.ready.append(index)
            return
        member.score = float(result.reward)
        member.epochs += trial.fidelity or self.perturbation_interval  # unchanged while the interval ran
        member.checkpoint = trial.id
        member.trained = trial.genotype
        if member.epochs >= self.max_epochs:
            member.done = True
            return
        if member.epochs >= self.burn_in_period and index in self._quantiles()[0]:
            self._exploit(index)
        self.ready.append(index)

    def _quantiles(self) -> tuple[list[int], list[int]]:
        """Bottom and top members by latest score (Ray Tune's rule: ceil(n * fraction), at most n // 2)."""
        scored = sorted((i for i, m in enumerate(self.members) if m.score is not None),
                        key=lambda i: (self.members[i].score, -i))
        k = min(math.ceil(len(scored) * self.quantile_fraction), len(scored) // 2)
        if k == 0:
            return [], []
        return scored[:k], scored[-k:]

    def _exploit(self, index: int) -> bool:
        """Member `index` copies a top member's checkpoint, epochs and (explored) hyperparameters."""
        # Never back in time (a member's epochs only grow, so every member reaches max_epochs),
        # and not from a member that finished: copying it would end the copier too.
        member = self.members[index]
        top = [i for i in self._quantiles()[1] if i != index and self.members[i].checkpoint is not None
               and member.epochs <= self.members[i].epochs < self.max_epochs]
        if not top:
            return False
        source = self.members[top[self.rng.randrange(len(top))]]
        member.checkpoint, member.epochs, member.trained = source.checkpoint, source.epochs, source.trained
        member.genotype = self._explore(source.trained)
        self.exploits += 1
        return True

    def _explore(self, genotype: Genotype) -> Genotype:
        hparams = dict(genotype["hparams"])
        for decision in self.space.hp_decisions:
            key = decision.name[len(HP_PREFIX):]
            if key == "epochs":
                continue  # PBT schedules epochs itself (trial.fidelity): never perturbed
            if self.rng.random() < self.resample_probability:
                hparams[key] = decision.sample(self.rng)
            elif isinstance(decision, Numeric):
                value = hparams[key] * self.rng.choice(PERTURBATION_FACTORS)
                value = min(max(value, decision.low), decision.high)
                hparams[key] = int(round(value)) if decision.integer else float(value)
        return self.space.validate({**genotype, "hparams": hparams})

    # --- what the search process may read --------------------------------------------------
    def checkpoints_needed(self) -> set[str]:
        return {m.checkpoint for m in self.members if m.checkpoint is not None}

    def stats(self) -> dict[str, float]:
        return {"pbt_exploits": float(self.exploits), "pbt_failures": float(self.failures),
                "pbt_members_done": float(sum(m.done for m in self.members))}

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(members=[asdict(m) for m in self.members], ready=list(self.ready),
                     member_of=dict(self.member_of), exploits=self.exploits, failures=self.failures)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.members = [Member(**m) for m in state["members"]]
        self.ready = list(state["ready"])
        self.member_of = dict(state["member_of"])
        self.exploits = state["exploits"]
        self.failures = state["failures"]
