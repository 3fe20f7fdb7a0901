"""No GPU time on duplicates: a trial book keyed by the space's canonical hash.

On `ask`, the inner strategy's proposals are checked against the book:
- already evaluated in this search: the inner strategy is told the recorded
  result at once and asked again (the repeat costs nothing);
- still training under another trial: the proposal waits for that trial's
  result, which is then told to both;
- new: issued.
After `max_attempts` repeats in a row, a random architecture never seen in
this search is issued instead (`inject`ed into the inner strategy, so it
learns from it too). Only succeeded results are reused: a failed or stopped
trial's architecture may be trained again. `repeat=True` turns the book off
(for searches that ask for repeated evaluations, and under a strategy that
`repeats` genotypes on purpose, as PBT's intervals do). An inner strategy with
nothing to propose for now (every PBT member training) is not exhausted: `ask`
returns fewer trials, possibly none.
"""

from __future__ import annotations

from typing import Any, Optional

from kubenas.spaces import Genotype
from kubenas.strategies.base import Result, SearchExhausted, Strategy, Trial, Wrapper


class Deduplicated(Wrapper):
    name = "dedup"

    def __init__(self, inner: Strategy, max_attempts: int = 20, repeat: bool = False):
        super().__init__(inner)
        self.max_attempts = max_attempts
        self.repeat = repeat
        self.book: dict[str, dict] = {}  # hash -> recorded result (as a dict)
        self.training: dict[str, str] = {}  # hash -> issued trial id still training
        self.waiting: dict[str, list[str]] = {}  # issued trial id -> inner trial ids waiting on it
        self.hashes: dict[str, str] = {}  # issued trial id -> hash
        self.hits = 0  # proposals answered from the book or by a trial in flight
        self.fallbacks = 0
        self.inner_idle = False  # the last inner ask proposed nothing (it waits for results)

    def ask(self, n: int = 1) -> list[Trial]:
        trials: list[Trial] = []
        for _ in range(n):
            trial = self._ask_one()
            if trial is None:
                if not trials and not self.inner_idle:
                    raise SearchExhausted(
                        f"{self.inner.name}: no architecture that this search has not evaluated could be found "
                        f"({len(self.book)} evaluated); raise the budget's patience or allow repeats")
                break
            trials.append(trial)
        return trials

    def _ask_one(self) -> Optional[Trial]:
        self.inner_idle = False
        if self.repeat or self.inner.repeats:
            proposed = self.inner.ask(1)
            self.inner_idle = not proposed
            if proposed:
                self.pending[proposed[0].id] = proposed[0]
            return proposed[0] if proposed else None
        for _ in range(self.max_attempts):
            proposed = self.inner.ask(1)
            if not proposed:
                self.inner_idle = True  # nothing to propose for now: no fallback, no exhaustion
                return None
            trial = proposed[0]
            key = self.space.hash(trial.genotype)
            if key in self.book:
                self.hits += 1
                self.inner.tell(trial.id, Result.from_dict(self.book[key]))
            elif key in self.training:
                self.hits += 1
                self.waiting.setdefault(self.training[key], []).append(trial.id)
            else:
                return self._issue(trial, key)
        genotype = self._unseen_random()
        if genotype is None:
            return None
        self.fallbacks += 1
        trial = self.inner.inject(genotype)
        return self._issue(trial, self.space.hash(trial.genotype))

    def _issue(self, trial: Trial, key: str) -> Trial:
        self.training[key] = trial.id
        self.hashes[trial.id] = key
        self.pending[trial.id] = trial
        return trial

    def _unseen_random(self, tries: int = 1000) -> Optional[Genotype]:
        for _ in range(tries):
            genotype = self.space.sample(self.rng)
            key = self.space.hash(genotype)
            if key not in self.book and key not in self.training:
                return genotype
        return None

    def inject(self, genotype: Genotype, fidelity: Optional[int] = None) -> Trial:
        trial = super().inject(genotype, fidelity)
        key = self.space.hash(trial.genotype)
        self.training.setdefault(key, trial.id)
        self.hashes[trial.id] = key
        return trial

    def tell(self, trial_id: str, result: Result) -> None:
        trial = self.pending.pop(trial_id, None)
        if trial is None:
            return  # unknown or already told
        key = self.hashes.pop(trial_id, None)
        if key is not None and self.training.get(key) == trial_id:
            del self.training[key]
            if result.status == "succeeded" and result.reward is not None:
                self.book[key] = result.to_dict()
        self.inner.tell(trial_id, result)
        for waiter in self.waiting.pop(trial_id, []):
            self.inner.tell(waiter, result)

    def known_hash(self, trial_id: str) -> Optional[str]:
        return self.hashes.get(trial_id) or self.inner.known_hash(trial_id)

    def _own_stats(self) -> dict[str, float]:
        return {"deduplicated": float(self.hits), "dedup_fallbacks": float(self.fallbacks)}

    def lookup(self, genotype: Genotype) -> Optional[Result]:
        """The recorded result of an architecture, if this search evaluated it."""
        record = self.book.get(self.space.hash(genotype))
        return None if record is None else Result.from_dict(record)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(book=dict(self.book), training=dict(self.training), hashes=dict(self.hashes),
                     waiting={k: list(v) for k, v in self.waiting.items()}, hits=self.hits,
                     fallbacks=self.fallbacks)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.book = {k: dict(v) for k, v in state["book"].items()}
        self.training = dict(state["training"])
        self.hashes = dict(state["hashes"])
        self.waiting = {k: list(v) for k, v in state["waiting"].items()}
        self.hits = state["hits"]
        self.fallbacks = state["fallbacks"]
