"""NSGA-II (Deb et al. 2002) through Optuna's NSGAIISampler (the library's, with ask/tell).

Each decision becomes one Optuna parameter, as in `kubenas.strategies.tpe`; the
study has one direction per objective (`kubenas.objectives.Objectives`) and is
told each trial's raw metric values. Optuna's genetic algorithm is generational:
a trial belongs to the generation that was filling when it was asked, and a new
generation breeds from the elite (non-dominated rank, then crowding distance) of
the previous one and its parents, so asynchronous results simply fill the
generation they were asked for.

Reproducible restarts without pickle: the state is the list of trials in creation
order (parameters, state, values, and the generation Optuna gave each) plus the
parent populations Optuna cached in the study; every proposal draws from a fresh
sampler seeded by (seed, proposal number), so the next proposal depends on that
list alone.
"""

from __future__ import annotations

from typing import Any, Optional

from kubenas.objectives import Objectives
from kubenas.spaces import SearchSpace
from kubenas.strategies.base import Result, Trial, derive_seed
from kubenas.strategies.tpe import TPE


class NSGA2(TPE):
    name = "nsga2"

    def __init__(self, space: SearchSpace, seed: int = 0, population: int = 50,
                 mutation_probability: Optional[float] = None, crossover_probability: float = 0.9,
                 swapping_probability: float = 0.5, objectives: Optional[Objectives] = None):
        """population: trials per generation (Optuna's population_size);
        mutation_probability: per parameter (default 1 / number of decisions);
        crossover_probability, swapping_probability: Optuna's uniform crossover."""
        if population < 2:
            raise ValueError(f"nsga2: population must be >= 2 (got {population})")
        for label, p in (("mutation_probability", mutation_probability),
                         ("crossover_probability", crossover_probability),
                         ("swapping_probability", swapping_probability)):
            if p is not None and not 0.0 <= p <= 1.0:
                raise ValueError(f"nsga2: {label} must be within [0, 1] (got {p})")
        self.objectives = objectives or Objectives()
        self.ga_options = dict(population_size=population, mutation_prob=mutation_probability,
                               crossover_prob=crossover_probability, swapping_prob=swapping_probability)
        super().__init__(space, seed)
        self.parent_cache: dict[str, list[int]] = {}  # Optuna's cached parent populations (trial numbers)

    # --- Optuna study and sampler ---------------------------------------------------------
    def _new_study(self) -> Any:
        directions = [goal for _, goal in self.objectives.metrics]
        self.storage = self._optuna.storages.InMemoryStorage()
        return self._optuna.create_study(directions=directions, sampler=self._sampler(), storage=self.storage)

    def _sampler(self) -> Any:
        seed = derive_seed(self.seed, "nsga2", len(self.records))
        return self._optuna.samplers.NSGAIISampler(seed=seed, **self.ga_options)

    def _study_id(self) -> int:
        return self.storage.get_study_id_from_name(self.study.study_name)

    # --- the contract ---------------------------------------------------------------------
    def _injected(self, trial: Trial) -> None:
        super()._injected(trial)
        # Optuna gives a trial its generation when it samples it, and its populations hold only
        # trials with one; an injected trial is never sampled, so it joins the current one here.
        added = self.study.get_trials(deepcopy=False)[-1]
        self.study.sampler.get_trial_generation(self.study, added)

    def _observe(self, trial: Trial, result: Result) -> None:
        number = self.number[trial.id]
        record = self.records[number]
        values = self.objectives.values(result.reward, result.cost)
        if values is None:  # failed, or a metric the trainer did not measure
            self.study.tell(number, state=self._optuna.trial.TrialState.FAIL)
            record.update(state="fail")
        else:
            self.study.tell(number, list(values))
            record.update(state="complete", value=list(values))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        key = self._optuna.samplers.NSGAIISampler._get_generation_key()
        for record, frozen in zip(state["records"], self.study.get_trials(deepcopy=False)):
            record["generation"] = frozen.system_attrs.get(key)
        prefix = self._optuna.samplers.NSGAIISampler._get_parent_cache_key_prefix()
        ids = {t._trial_id: t.number for t in self.study.get_trials(deepcopy=False)}
        state["parent_cache"] = {k: [ids[i] for i in v]
                                 for k, v in self.storage.get_study_system_attrs(self._study_id()).items()
                                 if k.startswith(prefix)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from kubenas.strategies.base import Strategy

        Strategy.load_state_dict(self, state)
        states = self._optuna.trial.TrialState
        key = self._optuna.samplers.NSGAIISampler._get_generation_key()
        self.records, self.number = [], {}
        self.study = self._new_study()
        for r in state["records"]:
            kind = {"running": states.RUNNING, "complete": states.COMPLETE, "fail": states.FAIL}[r["state"]]
            attrs = {} if r.get("generation") is None else {key: r["generation"]}
            self.study.add_trial(self._optuna.trial.create_trial(
                state=kind, params=r["params"], distributions=self.distributions,
                values=r["value"] if kind == states.COMPLETE else None, system_attrs=attrs))
            self._record(r["id"], len(self.records), r["params"])
            self.records[-1].update(state=r["state"], value=r["value"])
        ids = {t.number: t._trial_id for t in self.study.get_trials(deepcopy=False)}
        for k, numbers in state.get("parent_cache", {}).items():
            self.storage.set_study_system_attr(self._study_id(), k, [ids[n] for n in numbers])
