"""The controller's side of a one-shot algorithm (enas, darts, spos).

The supernet itself trains elsewhere: a data-parallel worker group (`python -m kubenas.oneshot`,
an Indexed Job in a cluster, N local processes under `kubenas run`) that ends by writing its
derived genotypes. Until they arrive this strategy proposes nothing; then it proposes each
derived genotype once, as an ordinary trial (stand-alone training through the queue), and is
exhausted. So the search's result is a stand-alone reward, never a supernet score.

Pure: the process running the search reads the derived genotypes (an artifact file) and hands
them over with `take_derived`; they are part of the state, so a restarted controller does
not need them again.
"""

from __future__ import annotations

from typing import Any, Optional

from kubenas.errors import InvalidGenotype
from kubenas.spaces import SearchSpace
from kubenas.strategies.base import SearchExhausted, Strategy, Trial


def algorithm_parameters(algorithm: str) -> dict[str, Any]:
    """The parameters (with defaults) of a one-shot algorithm: the supernet worker's own, which
    this strategy only passes through (the spec hands them to the workers)."""
    try:
        from kubenas.oneshot.parameters import ALGORITHM_PARAMETERS
    except ImportError:  # the worker's package is not there (an image without it): none known
        return {}
    return dict(ALGORITHM_PARAMETERS.get(algorithm, {}))


class OneShot(Strategy):
    """Waits for the supernet's derived genotypes, then trains each stand-alone."""

    name = "one-shot"

    def __init__(self, space: SearchSpace, seed: int = 0, **worker_parameters: Any):
        super().__init__(space, seed)
        unknown = sorted(set(worker_parameters) - set(algorithm_parameters(self.name)))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; accepted: {sorted(algorithm_parameters(self.name))}")
        self.worker_parameters = worker_parameters  # the workers' business, kept for the record
        self.derived: Optional[list[dict[str, Any]]] = None  # [{"genotype", "hash", "score"}], best first
        self.proposed = 0  # how many of them were asked

    @classmethod
    def parameter_defaults(cls) -> dict[str, Any]:
        """What `kubenas.strategies.strategy_parameters` reports (the constructor takes **kwargs)."""
        return algorithm_parameters(cls.name)

    @property
    def waiting_for_supernet(self) -> bool:
        """True until the derived genotypes are in (the summary's stage is supernet or deriving)."""
        return self.derived is None

    def take_derived(self, payload: Any) -> int:
        """Accept the worker group's derived.json; returns how many distinct genotypes it holds.
        ValueError names what is wrong with it (the search cannot go on without a usable one)."""
        if not isinstance(payload, dict) or not isinstance(payload.get("genotypes"), list):
            raise ValueError("derived.json: expected an object with a list 'genotypes'")
        algorithm = payload.get("algorithm")
        if algorithm not in (None, self.name):
            raise ValueError(f"derived.json: derived by {algorithm!r}, but this search runs {self.name!r}")
        derived, seen = [], set()
        for i, item in enumerate(payload["genotypes"]):
            if not isinstance(item, dict) or "genotype" not in item:
                raise ValueError(f"derived.json: genotypes[{i}]: expected an object with a 'genotype'")
            try:
                genotype = self.space.validate(item["genotype"])
            except InvalidGenotype as exc:
                raise ValueError(f"derived.json: genotypes[{i}]: {exc}") from None
            digest = self.space.hash(genotype)
            if digest in seen:
                continue  # distinct by canonical hash: training a cell twice teaches nothing
            seen.add(digest)
            score = item.get("score")
            derived.append({"genotype": genotype, "hash": digest,
                            "score": float(score) if isinstance(score, (int, float)) else None})
        if not derived:
            raise ValueError("derived.json: no genotypes")
        self.derived = derived
        return len(derived)

    def ask(self, n: int = 1) -> list[Trial]:
        if self.derived is None:
            return []  # the supernet still trains: nothing to propose yet
        left = self.derived[self.proposed:]
        if not left and self.pending:
            return []  # the last ones still train; exhausted once they are told (asked one at a time by dedup)
        if not left:
            raise SearchExhausted(f"every genotype the supernet derived ({len(self.derived)}) went to "
                                  "stand-alone training")
        trials = [self._new_trial(item["genotype"]) for item in left[:max(n, 0)]]
        self.proposed += len(trials)
        return trials

    def known_hash(self, trial_id: str) -> Optional[str]:
        trial = self.pending.get(trial_id)
        return None if trial is None else self.space.hash(trial.genotype)

    def stats(self) -> dict[str, float]:
        return {} if self.derived is None else {"derived_genotypes": float(len(self.derived))}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "derived": self.derived, "proposed": self.proposed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.derived = state.get("derived")
        self.proposed = int(state.get("proposed", 0))


class ENAS(OneShot):
    name = "enas"


class DARTS(OneShot):
    name = "darts"


class SPOS(OneShot):
    name = "spos"


def one_shot_of(strategy: Strategy) -> Optional[OneShot]:
    """The one-shot strategy inside a stack of wrappers, if there is one."""
    while strategy is not None:
        if isinstance(strategy, OneShot):
            return strategy
        strategy = getattr(strategy, "inner", None)
    return None
