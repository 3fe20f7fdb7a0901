"""Tree-structured Parzen estimators through Optuna's TPESampler (the library's TPE).

Each decision becomes one Optuna parameter: a categorical over the decision's
choice indices, or a float/int range for numeric decisions. Trials still
training stay RUNNING in the study, so `constant_liar` keeps parallel
proposals apart.

Reproducible restarts: Optuna's in-memory study cannot be saved without
pickle, so the state is the list of trials (parameters, state, value) in
creation order. Every proposal draws from a fresh TPESampler seeded by
(seed, proposal number), which makes the next proposal a function of that
list alone: rebuilding the study from it gives exactly the proposals an
uninterrupted run would make.
"""

from __future__ import annotations

from typing import Any

from kubenas.spaces import Genotype, SearchSpace
from kubenas.spaces.decisions import Categorical
from kubenas.strategies.base import Result, Strategy, Trial, derive_seed


class TPE(Strategy):
    name = "tpe"

    def __init__(self, space: SearchSpace, seed: int = 0, multivariate: bool = True, group: bool = False,
                 n_startup_trials: int = 10, n_ei_candidates: int = 24, constant_liar: bool = True):
        super().__init__(space, seed)
        import optuna  # the controller image's dependency; not needed to import kubenas.strategies

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self.options = dict(multivariate=multivariate, group=group, n_startup_trials=n_startup_trials,
                            n_ei_candidates=n_ei_candidates, constant_liar=constant_liar)
        self.distributions = self._distributions()
        # One record per Optuna trial, in creation order: {id, params, state, value}.
        self.records: list[dict[str, Any]] = []
        self.number: dict[str, int] = {}  # our trial id -> Optuna trial number
        self.study = self._new_study()

    def _distributions(self) -> dict[str, Any]:
        dist = self._optuna.distributions
        out: dict[str, Any] = {}
        for d in self.space.decisions:
            if isinstance(d, Categorical):
                out[d.name] = dist.CategoricalDistribution(list(range(d.size)))
            elif d.integer:
                out[d.name] = dist.IntDistribution(int(d.low), int(d.high), log=d.log)
            else:
                out[d.name] = dist.FloatDistribution(d.low, d.high, log=d.log)
        return out

    def _new_study(self) -> Any:
        return self._optuna.create_study(direction="maximize", sampler=self._sampler())

    def _sampler(self) -> Any:
        seed = derive_seed(self.seed, "tpe", len(self.records))
        return self._optuna.samplers.TPESampler(seed=seed, **self.options)

    # --- genotypes <-> Optuna parameters ---------------------------------------
    def _genotype(self, params: dict[str, Any]) -> Genotype:
        assignment = {d.name: d.choices[params[d.name]] if isinstance(d, Categorical) else params[d.name]
                      for d in self.space.decisions}
        return self.space.decode(assignment)

    def _params(self, genotype: Genotype) -> dict[str, Any]:
        assignment = self.space.encode(genotype)
        return {d.name: d.index(assignment[d.name]) if isinstance(d, Categorical) else assignment[d.name]
                for d in self.space.decisions}

    # --- the contract ----------------------------------------------------------
    def ask(self, n: int = 1) -> list[Trial]:
        trials = []
        for _ in range(n):
            self.study.sampler = self._sampler()
            optuna_trial = self.study.ask(self.distributions)
            params = dict(optuna_trial.params)
            trial = self._new_trial(self._genotype(params))
            self._record(trial.id, optuna_trial.number, params)
            trials.append(trial)
        return trials

    def _injected(self, trial: Trial) -> None:
        params = self._params(trial.genotype)
        frozen = self._optuna.trial.create_trial(state=self._optuna.trial.TrialState.RUNNING,
                                                 params=params, distributions=self.distributions)
        self.study.add_trial(frozen)
        self._record(trial.id, len(self.study.trials) - 1, params)

    def _record(self, trial_id: str, number: int, params: dict[str, Any]) -> None:
        assert number == len(self.records), "Optuna trial numbers must follow our records"
        self.number[trial_id] = number
        self.records.append({"id": trial_id, "params": params, "state": "running", "value": None})

    def _observe(self, trial: Trial, result: Result) -> None:
        number = self.number[trial.id]
        record = self.records[number]
        if result.reward is None:
            self.study.tell(number, state=self._optuna.trial.TrialState.FAIL)
            record.update(state="fail")
        else:
            self.study.tell(number, float(result.reward))
            record.update(state="complete", value=float(result.reward))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["records"] = [dict(r, params=dict(r["params"])) for r in self.records]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        states = self._optuna.trial.TrialState
        self.records, self.number = [], {}
        self.study = self._new_study()
        for r in state["records"]:
            kind = {"running": states.RUNNING, "complete": states.COMPLETE, "fail": states.FAIL}[r["state"]]
            self.study.add_trial(self._optuna.trial.create_trial(
                state=kind, params=r["params"], distributions=self.distributions, value=r["value"]))
            self._record(r["id"], len(self.records), r["params"])
            self.records[-1].update(state=r["state"], value=r["value"])
