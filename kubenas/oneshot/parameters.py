"""The one-shot algorithms' parameters (strategy.parameters) with their defaults, as the
constructors' snake_case keywords; the manifest spells them in camelCase (topK, order, ...).
Torch-free: the controller's strategy (kubenas/strategies/one_shot.py) and the spec's
parameter table (kubenas/spec.py STRATEGY_PARAMETERS, which must equal this) read it, and the
training code's OneShotSettings (kubenas/oneshot/common.py) takes its defaults from it.
A default of None means "from spec.training" (supernet_epochs: training.epochs)."""

from __future__ import annotations

from typing import Any

_COMMON: dict[str, Any] = {
    "top_k": 3,  # derived genotypes sent to stand-alone training, distinct by canonical hash
    "supernet_epochs": None,  # epochs of supernet training (default: training.epochs)
    "calibration_batches": 4,  # training batches that re-estimate batch norm per scored path
    # Steps a scored path trains alone from the shared weights (on a copy) before it is scored:
    # shared weights serve every path and rank parameter-free cells too high; a few steps of the
    # path's own training correct most of that (benchmarks/oneshot.py).
    "fine_tune_steps": 44,
}

ALGORITHM_PARAMETERS: dict[str, dict[str, Any]] = {
    # policy_learning_rate: ten times ENAS' 3.5e-4, which is for a controller trained over many
    # thousands of steps; a run here takes policy_steps per epoch, a few hundred Adam steps in all.
    "enas": {**_COMMON, "policy_steps": 20, "policy_samples": 20, "policy_learning_rate": 3.5e-3,
             "entropy_weight": 1e-4, "baseline_decay": 0.95, "hidden": 64},
    # arch_learning_rate: the paper's 3e-4 is for ~20k CIFAR steps; a proxy run takes ~100 (Adam
    # moves ~lr per step): at 3e-4 the alphas stay near uniform, at 3e-2 they can move by a few units.
    "darts": {**_COMMON, "order": 1, "arch_learning_rate": 3e-2, "arch_weight_decay": 1e-3,
              "max_skips": 2},  # skip_connect per derived cell (P-DARTS' cap against DARTS' collapse)
    "spos": {**_COMMON, "evolution_population": 16, "evolution_cycles": 4, "mutation_probability": 0.1},
}

# Accepted ranges, checked by the spec (kubenas/spec.py StrategySpec, naming strategy.parameters.<camelCase>).
BOUNDS: dict[str, tuple[float, float]] = {
    "top_k": (1, 100), "supernet_epochs": (1, 1000), "calibration_batches": (1, 1000),
    "fine_tune_steps": (0, 100_000),
    "policy_steps": (0, 100_000), "policy_samples": (1, 100_000), "policy_learning_rate": (1e-8, 10.0),
    "entropy_weight": (0.0, 10.0), "baseline_decay": (0.0, 1.0), "hidden": (1, 4096),
    "order": (1, 2), "arch_learning_rate": (1e-8, 10.0), "arch_weight_decay": (0.0, 1.0), "max_skips": (0, 100),
    "evolution_population": (2, 100_000), "evolution_cycles": (0, 100_000), "mutation_probability": (0.0, 1.0),
}
