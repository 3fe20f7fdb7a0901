"""One-shot settings an algorithm cannot use are refused before anything starts (by `kubenas
run`'s spec models and, through the same rules as CEL, at admission), naming the field."""

from __future__ import annotations

import pytest

from kubenas.errors import InvalidSpec
from kubenas.manifest import parse_manifest
from kubenas.spec import DATASET_IMAGES, ArchitectureSearchSpec


def manifest(spec: dict) -> dict:
    return {"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch", "metadata": {"name": "x"}, "spec": spec}


def one_shot(algorithm: str, **sections) -> dict:
    spec = {"searchSpace": {"type": "nasbench201"}, "strategy": {"algorithm": algorithm},
            "budget": {"parallelism": 2}, "oneShot": {"workers": 2}}
    spec.update(sections)
    return spec


HYPERPARAMETERS = {"type": "nasbench201",
                   "hyperparameters": [{"name": "learningRate", "type": "float", "low": 0.01, "high": 0.1}]}

# (id, spec, what the one-line error must name)
BAD = [
    *[(f"{a}-hyperparameters", one_shot(a, searchSpace=HYPERPARAMETERS), "searchSpace.hyperparameters")
      for a in ("enas", "darts", "spos")],
    ("workers-above-trainers", one_shot("enas", oneShot={"workers": 3}), "oneShot.workers"),
    ("validation-fraction-zero", one_shot("darts", training={"dataset": {"validationFraction": 0}}),
     "validationFraction"),
    ("validation-fewer-than-workers", one_shot(
        "spos", training={"dataset": {"validationFraction": 0.0005}}), "training.dataset.validationFraction"),
    ("darts-half-smaller-than-a-batch", one_shot(
        "darts", training={"batchSize": 64, "dataset": {"trainSubset": 100}}), "training.dataset.trainSubset"),
    ("early-stopping", one_shot("enas", training={"earlyStopping": {"algorithm": "asha"}}),
     "training.earlyStopping.algorithm"),
    # Ranges of the supernet worker's parameters, refused before any Job runs (not by the worker).
    ("supernet-epochs-zero", one_shot("spos", strategy={"algorithm": "spos", "parameters": {"supernetEpochs": 0}}),
     "strategy.parameters.supernetEpochs: 0 is not accepted; spos wants an integer in [1, 1000]"),
    ("mutation-probability-above-one", one_shot(
        "spos", strategy={"algorithm": "spos", "parameters": {"mutationProbability": 1.5}}),
     "strategy.parameters.mutationProbability: 1.5 is not accepted; spos wants a number in [0, 1]"),
    ("several-metrics", one_shot("darts", objective={"metrics": [
        {"name": "validationAccuracy", "goal": "maximize"}, {"name": "parameters", "goal": "minimize"}]}),
     "strategy.algorithm"),
]


@pytest.mark.parametrize("case_id,spec,field", BAD, ids=[c[0] for c in BAD])
def test_one_shot_settings_it_cannot_use_are_refused_naming_the_field(case_id, spec, field):
    with pytest.raises(InvalidSpec) as info:
        parse_manifest(manifest(spec))
    assert field in str(info.value)
    assert "Traceback" not in str(info.value)


def test_the_same_settings_pass_for_a_strategy_that_uses_them_and_the_batch_fits_spos():
    parse_manifest(manifest({**one_shot("evolution", searchSpace=HYPERPARAMETERS), "oneShot": {"workers": 1}}))
    parse_manifest(manifest(one_shot("evolution", training={"earlyStopping": {"algorithm": "asha"}})))
    # 100 images hold one batch of 64 for spos (darts splits them in halves of 50, which do not)
    parse_manifest(manifest(one_shot("spos", training={"batchSize": 64, "dataset": {"trainSubset": 100}})))
    for example in ("enas", "darts"):
        parse_manifest(manifest(one_shot(example)))


def test_the_crd_carries_the_one_shot_rules_for_admission():
    rules = [r["message"] for r in ArchitectureSearchSpec.model_json_schema()["x-kubernetes-validations"]]
    assert any(m.startswith("searchSpace.hyperparameters: not accepted with strategy.algorithm enas") for m in rules)
    assert any(m.startswith("training.earlyStopping.algorithm: must be none with strategy.algorithm enas")
               for m in rules)


def test_the_spec_knows_the_fixed_datasets_sizes_as_the_loaders_do():
    from kubenas.training.datasets import DATASET_IMAGES as LOADED

    assert DATASET_IMAGES == LOADED
