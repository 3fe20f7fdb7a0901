"""The one seam between the spec and the strategy layer.

Builds `spec.strategy` through the registry (`kubenas.strategies.make_strategy`)
and stacks the wrappers the spec asks for:

    MultiFidelity(            early stopping: median, asha, hyperband
      Deduplicated(           unless strategy.repeatEvaluations
        Constrained(          objective.constraints / objective.costPenalty
          <algorithm>)))

Manifests spell strategy parameters in camelCase (`nStartupTrials`); the registry
takes snake_case keyword arguments: converted here (by kubenas.spec's
strategy_keyword_arguments, which `kubenas bench strategies --param` uses too).
"""

from __future__ import annotations

import re
from typing import Any

from kubenas.errors import InvalidSpec
from kubenas.objectives import COST_KEYS, Objectives
from kubenas.spaces import SearchSpace
from kubenas.spec import ArchitectureSearchSpec, DatasetSpec, strategy_keyword_arguments, strategy_parameter_name
from kubenas.strategies.base import Strategy


def dataset_shape(dataset: DatasetSpec) -> tuple[tuple[int, int, int], int]:
    """(input shape, classes) of a dataset, without loading it (npz: read the array headers)."""
    if dataset.name in ("digits", "distorted-digits"):
        return (1, 8, 8), 10
    if dataset.name in ("cifar10", "cifar100"):
        return (3, 32, 32), 10 if dataset.name == "cifar10" else 100
    import numpy as np

    try:
        with np.load(dataset.root, allow_pickle=False, mmap_mode="r") as archive:
            shape = archive["x"].shape
            classes = int(np.max(archive["y"])) + 1
    except Exception as exc:  # noqa: BLE001 - named in the message
        raise InvalidSpec(f"training.dataset.root: cannot read {dataset.root!r} to size the constraints: {exc}") from None
    if len(shape) == 3:
        return (1, shape[1], shape[2]), classes
    if shape[-1] in (1, 3) and shape[1] not in (1, 3):
        return (shape[3], shape[1], shape[2]), classes
    return (shape[1], shape[2], shape[3]), classes


def build_strategy(spec: ArchitectureSearchSpec, space: SearchSpace) -> Strategy:
    from kubenas.strategies import make_strategy

    keywords = {**own_schedule(spec), **strategy_keyword_arguments(spec.strategy.parameters)}
    try:
        strategy = make_strategy(spec.strategy.algorithm, space, seed=spec.training.seed,
                                 objectives=Objectives.from_spec(spec.objective), **keywords)
    except InvalidSpec as exc:  # the constructor names its keywords; the user wrote the manifest's names
        raise InvalidSpec(in_manifest_names(str(exc), keywords)) from None

    limits: dict[str, float] = {}
    if spec.objective.constraints.max_parameters is not None:
        limits["params"] = spec.objective.constraints.max_parameters
    if spec.objective.constraints.max_multiply_adds is not None:
        limits["multiply_adds"] = spec.objective.constraints.max_multiply_adds
    penalty = spec.objective.cost_penalty
    if limits or penalty is not None:
        from kubenas.strategies.constraints import Constrained, SoftCost, torch_cost_fn

        shape, classes = dataset_shape(spec.training.dataset)
        cost_fn = torch_cost_fn(shape, channels=spec.training.channels,
                                cells_per_stage=spec.training.cells_per_stage, num_classes=classes,
                                in_channels=shape[0])
        soft = None
        if penalty is not None:
            metric = "latency" if penalty.metric == "latencySeconds" else penalty.metric  # its name in metrics
            soft = SoftCost(COST_KEYS[metric], penalty.target, alpha=penalty.weight, beta=penalty.weight)
        strategy = Constrained(strategy, cost_fn, limits=limits, soft=soft)

    from kubenas.strategies.dedup import Deduplicated

    strategy = Deduplicated(strategy, repeat=spec.strategy.repeat_evaluations)

    es = spec.training.early_stopping
    if es.algorithm != "none":
        from kubenas.strategies.multifidelity import ASHA, MedianStopping, MultiFidelity, rung_epochs

        epochs = spec.training.epochs
        min_epochs = min(es.min_epochs, epochs)
        try:
            if es.algorithm == "median":
                scheduler = MedianStopping(epochs, min_trials=es.min_trials, start_epoch=min_epochs)
            else:
                brackets = 1
                if es.algorithm == "hyperband":
                    brackets = len(rung_epochs(min_epochs, epochs, es.reduction_factor))
                scheduler = ASHA(epochs, min_epochs=min_epochs, eta=es.reduction_factor, brackets=brackets)
        except ValueError as exc:
            raise InvalidSpec(f"training.earlyStopping: {exc}") from None
        strategy = MultiFidelity(strategy, scheduler)
    return strategy


def in_manifest_names(message: str, keywords: dict[str, Any]) -> str:
    """A strategy's message with its snake_case keywords spelled as in strategy.parameters."""
    for keyword in keywords:
        message = re.sub(rf"\b{re.escape(keyword)}\b", strategy_parameter_name(keyword), message)
    return message


def own_schedule(spec: ArchitectureSearchSpec) -> dict[str, int]:
    """BOHB's rungs, PBT's epochs per member, from the search's training settings (its
    parameters may still override them)."""
    if spec.strategy.algorithm == "pbt":
        return {"max_epochs": spec.training.epochs}
    if spec.strategy.algorithm != "bohb":
        return {}
    es, epochs = spec.training.early_stopping, spec.training.epochs
    return {"max_epochs": epochs, "min_epochs": min(es.min_epochs, epochs), "eta": es.reduction_factor}


def schedules_epochs(spec: ArchitectureSearchSpec) -> bool:
    """Whether trials report every epoch for a stop/promote decision (early stopping, or BOHB's brackets)."""
    return spec.training.early_stopping.algorithm != "none" or spec.strategy.algorithm == "bohb"
