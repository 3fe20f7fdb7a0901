"""Search strategies behind one ask/tell interface.

`make_strategy(name, space, seed, **params)` builds any of `STRATEGIES`; the
modules are imported on demand, so importing this package loads neither torch
(the RL policies) nor Optuna (TPE).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Optional

from kubenas.errors import InvalidSpec
from kubenas.objectives import Objectives
from kubenas.spaces import SearchSpace
from kubenas.strategies.base import Result, SearchExhausted, Strategy, TrainingDecision, Trial, Wrapper
from kubenas.spec import MULTI_OBJECTIVE_STRATEGIES
from kubenas.strategies.random_search import RandomSearch

# name -> "module:Class"
STRATEGIES: dict[str, str] = {
    "random": "kubenas.strategies.random_search:RandomSearch",
    "evolution": "kubenas.strategies.evolution:RegularizedEvolution",
    "local-search": "kubenas.strategies.local_search:LocalSearch",
    "tpe": "kubenas.strategies.tpe:TPE",
    "ppo": "kubenas.strategies.ppo:PPO",
    "reinforce": "kubenas.strategies.reinforce:Reinforce",
    "gp-bo": "kubenas.strategies.gp_bo:GPBayesOpt",
    "bohb": "kubenas.strategies.bohb:BOHB",
    "pbt": "kubenas.strategies.pbt:PopulationBasedTraining",
    "nsga2": "kubenas.strategies.nsga2:NSGA2",
    "parego": "kubenas.strategies.parego:ParEGO",
    # One-shot: the supernet trains in its worker group; these hand its derived genotypes on.
    "enas": "kubenas.strategies.one_shot:ENAS",
    "darts": "kubenas.strategies.one_shot:DARTS",
    "spos": "kubenas.strategies.one_shot:SPOS",
}


def strategy_class(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise InvalidSpec(f"strategy: {name!r} is not known; choose one of {sorted(STRATEGIES)}")
    module, cls = STRATEGIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def strategy_parameters(name: str) -> dict[str, Any]:
    """The parameters a strategy accepts, with their defaults."""
    cls = strategy_class(name)
    own = getattr(cls, "parameter_defaults", None)
    if callable(own):  # parameters passed through to another process (the one-shot workers)
        return dict(own())
    params: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        signature = inspect.signature(klass.__init__)
        for p in list(signature.parameters.values())[1:]:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("space", "seed", "objectives"):
                params.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            break  # a subclass passing **kwargs on also accepts its parent's parameters
    return params


def make_strategy(name: str, space: SearchSpace, seed: int = 0, objectives: Optional[Objectives] = None,
                  **params: Any) -> Strategy:
    """`objectives`: the metrics the search optimises (default: validation accuracy alone);
    several only for the strategies in MULTI_OBJECTIVE_STRATEGIES."""
    if objectives is not None and objectives.is_multi and name not in MULTI_OBJECTIVE_STRATEGIES:
        raise InvalidSpec(f"objective.metrics: {name} optimises one metric; for {len(objectives.metrics)} "
                          f"choose one of {', '.join(MULTI_OBJECTIVE_STRATEGIES)}")
    accepted = strategy_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise InvalidSpec(f"strategy {name}: unknown parameter(s) {unknown}; accepted: {sorted(accepted) or 'none'}")
    cls = strategy_class(name)
    if objectives is not None and "objectives" in inspect.signature(cls.__init__).parameters:
        params["objectives"] = objectives
    try:
        return cls(space, seed=seed, **params)
    except (TypeError, ValueError) as exc:
        raise InvalidSpec(f"strategy {name}: {exc}") from None


__all__ = [
    "MULTI_OBJECTIVE_STRATEGIES", "STRATEGIES", "Result", "SearchExhausted", "Strategy", "TrainingDecision", "Trial", "Wrapper", "RandomSearch",
    "make_strategy", "strategy_class", "strategy_parameters",
]
