"""The spec models refuse what the CRD refuses at admission (tests/operator/test_schema.py
sends the same manifests through a real API server), naming the field."""

from __future__ import annotations

import pytest

from kubenas.errors import InvalidSpec
from kubenas.manifest import parse_manifest
from kubenas.spec import (HYPERPARAMETER_BOUNDS, STRATEGY_NAMES, STRATEGY_PARAMETERS, ArchitectureSearchSpec,
                          strategy_keyword, strategy_keyword_arguments, strategy_parameter_name)


def manifest(spec: dict) -> dict:
    return {"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch", "metadata": {"name": "x"}, "spec": spec}


def hp(name: str, **fields) -> dict:
    return {"searchSpace": {"hyperparameters": [{"name": name, **fields}]}}


# (id, spec, what the one-line error must name)
BAD = [
    ("max-duration-zero", {"budget": {"maxDuration": "0s"}}, "budget.maxDuration"),
    ("max-duration-number", {"budget": {"maxDuration": 0}}, "budget.maxDuration"),
    ("negative-learning-rate", hp("learningRate", type="float", low=-0.1, high=0.1), "learningRate"),
    ("zero-batch-size", hp("batchSize", type="categorical", choices=[0, 32]), "batchSize"),
    ("fractional-batch-size", hp("batchSize", type="categorical", choices=[32.5, 64]), "whole numbers"),
    ("epochs-to-a-million", hp("epochs", type="int", low=1, high=1_000_000), "training.epochs accepts whole numbers >= 1 and <= 1000"),
    ("infinite-high", hp("weightDecay", type="float", low=0.0, high=float("inf")), "weightDecay"),
    ("max-parameters-absurd", {"objective": {"constraints": {"maxParameters": 1}}}, "maxParameters"),
    ("strategy-parameter-type", {"strategy": {"algorithm": "evolution", "parameters": {"population": "ten"}}},
     "strategy.parameters.population"),
    ("strategy-parameter-list", {"strategy": {"algorithm": "evolution", "parameters": {"population": [8, 16]}}},
     "population"),
    ("strategy-parameter-bool-for-int", {"strategy": {"algorithm": "evolution", "parameters": {"sample": True}}},
     "strategy.parameters.sample"),
    ("strategy-parameter-of-another", {"strategy": {"algorithm": "evolution", "parameters": {"lr": 0.1}}},
     "strategy.parameters.lr"),
    ("cost-target-infinite", {"objective": {"costPenalty": {"target": float("inf")}}}, "costPenalty.target"),
    ("cost-target-zero", {"objective": {"costPenalty": {"target": 0}}}, "costPenalty.target"),
    ("validation-fraction", {"training": {"dataset": {"validationFraction": 0.9}}}, "validationFraction"),
    ("quoted-number", {"budget": {"maxTrials": "10"}}, "budget.maxTrials"),
    ("quoted-float", {"training": {"learningRate": "0.1"}}, "training.learningRate"),
    ("quoted-bool", {"suspend": "true"}, "suspend"),
    ("quoted-hyperparameter-bound", hp("learningRate", type="float", low="0.01", high=0.1),
     "searchSpace.hyperparameters.0.low"),
    ("quoted-blocks", {"searchSpace": {"blocks": "3"}}, "searchSpace.blocks"),
]


@pytest.mark.parametrize("case_id,spec,field", BAD, ids=[c[0] for c in BAD])
def test_bad_specs_are_refused_naming_the_field(case_id, spec, field):
    with pytest.raises(InvalidSpec) as info:
        parse_manifest(manifest(spec))
    message = str(info.value)
    assert field in message and "\n" not in message, message


def test_good_specs_still_pass():
    spec = ArchitectureSearchSpec.model_validate({
        "strategy": {"algorithm": "ppo", "parameters": {"lr": 1, "epochs": 3, "clip": 0.1}},  # an int is a number
        "budget": {"maxDuration": "0.5h", "maxTrials": 10},
        "searchSpace": {"hyperparameters": [
            {"name": "learningRate", "type": "float", "low": 0.01, "high": 0.1, "log": True},
            {"name": "batchSize", "type": "categorical", "choices": [32, 64]},
            {"name": "epochs", "type": "int", "low": 1, "high": 1000}]},
        "objective": {"constraints": {"maxParameters": 1000}, "costPenalty": {"target": 1e8}},
        "training": {"dataset": {"validationFraction": 0.5}},
    })
    assert spec.budget.max_duration_seconds == 1800 and spec.strategy.parameters["lr"] == 1


def test_hyperparameter_bounds_are_the_training_fields_bounds():
    learning_rate = HYPERPARAMETER_BOUNDS["learningRate"]
    assert not learning_rate.admits(0) and learning_rate.admits(10) and not learning_rate.admits(10.5)
    assert HYPERPARAMETER_BOUNDS["epochs"].admits(1000) and not HYPERPARAMETER_BOUNDS["epochs"].admits(1001)
    assert not HYPERPARAMETER_BOUNDS["momentum"].admits(1.0)


def test_the_strategy_parameter_table_is_the_strategies_own():
    """STRATEGY_PARAMETERS (which the CRD and the models check) lists exactly what each
    strategy's constructor accepts, in camelCase, each with the type of its default; each
    name converts to the constructor's keyword and back."""
    from kubenas.strategies import STRATEGIES, strategy_parameters

    assert set(STRATEGY_PARAMETERS) == set(STRATEGIES) == set(STRATEGY_NAMES)
    json_type = {bool: "boolean", int: "integer", float: "number", str: "string"}
    for name in STRATEGIES:
        accepted = strategy_parameters(name)
        table = STRATEGY_PARAMETERS[name]
        assert all("_" not in param for param in table), (name, "camelCase on the wire")
        assert {strategy_keyword(param) for param in table} == set(accepted), name
        assert {strategy_parameter_name(keyword) for keyword in accepted} == set(table), name
        for keyword, default in accepted.items():
            if default is not None:
                assert table[strategy_parameter_name(keyword)] == json_type[type(default)], (name, keyword)


@pytest.mark.parametrize("name, keyword", [("inheritWeights", "inherit_weights"), ("nEiCandidates", "n_ei_candidates"),
                                           ("burnInPeriod", "burn_in_period"), ("population", "population")])
def test_parameter_names_convert_to_keywords_and_back(name, keyword):
    assert strategy_keyword(name) == keyword and strategy_parameter_name(keyword) == name


def test_a_snake_case_parameter_is_refused_with_the_camel_case_name():
    with pytest.raises(InvalidSpec) as info:
        parse_manifest(manifest({"strategy": {"algorithm": "evolution", "parameters": {"inherit_weights": True}}}))
    assert "strategy.parameters.inherit_weights: did you mean inheritWeights?" in str(info.value)
    search = parse_manifest(manifest({"strategy": {"algorithm": "evolution", "parameters": {"inheritWeights": True}}}))
    assert strategy_keyword_arguments(search.spec.strategy.parameters) == {"inherit_weights": True}
