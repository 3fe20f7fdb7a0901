"""The CRD on a real API server: what it serves, what it rejects (with the schema's
message), what it defaults, what it keeps immutable, and the scale subresource.
No operator needed: this is the API server's own behaviour."""

from __future__ import annotations

import json

import pytest
import yaml

from kubenas.crd import build_crd
from kubenas.errors import InvalidSpec
from kubenas.manifest import load_manifest
from kubenas.spec import ArchitectureSearchSpec

from tests.operator.support import search_body

pytestmark = pytest.mark.kube


def test_the_served_crd_is_the_generated_one(crd, cluster):
    (served,) = crd["spec"]["versions"]
    (generated,) = build_crd()["spec"]["versions"]
    assert served["schema"] == generated["schema"]
    assert served["subresources"] == generated["subresources"]
    assert [c["name"] for c in served["additionalPrinterColumns"]][:4] == ["Phase", "Trials", "Best", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["archsearch", "nas"]
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions.get("NonStructuralSchema") is None
    resources = cluster.kubectl("api-resources", "--api-group=kubenas.io", "-o", "wide").stdout
    assert "archsearch,nas" in resources and "ArchitectureSearch" in resources


# (id, spec or None for the metadata case, what the API server says, whether kubenas run rejects it too)
BAD = [
    ("strategy-enum", {"strategy": {"algorithm": "sgd"}}, 'Unsupported value: "sgd"', True),
    ("parallelism-min", {"budget": {"parallelism": 0}}, "spec.budget.parallelism", True),
    ("duration", {"budget": {"maxDuration": "ten minutes"}}, "spec.budget.maxDuration", True),
    ("train-subset-min", {"training": {"dataset": {"trainSubset": 5}}}, "trainSubset", True),
    ("external-redis-needs-secret", {"redis": {"mode": "external"}},
     "redis.urlSecret is required when redis.mode is external", True),
    ("nb201-blocks", {"searchSpace": {"type": "nasbench201", "blocks": 4}},
     "blocks and combines do not apply to nasbench201", True),
    ("darts-combines", {"searchSpace": {"type": "darts", "combines": ["add"]}},
     "only the nasnet space has combines", True),
    ("hp-low-high", {"searchSpace": {"hyperparameters": [
        {"name": "learningRate", "type": "float", "low": 0.1, "high": 0.01}]}},
     "hyperparameter: low must be below high", True),
    ("hp-log", {"searchSpace": {"hyperparameters": [
        {"name": "learningRate", "type": "float", "low": 0, "high": 0.1, "log": True}]}},
     "hyperparameter: log scale needs low > 0", True),
    ("hp-categorical", {"searchSpace": {"hyperparameters": [{"name": "batchSize", "type": "categorical"}]}},
     "hyperparameter: type categorical needs choices", True),
    ("hp-duplicate", {"searchSpace": {"hyperparameters": [
        {"name": "epochs", "type": "int", "low": 1, "high": 5},
        {"name": "epochs", "type": "int", "low": 2, "high": 6}]}}, "Duplicate value", False),
    ("toleration", {"trainer": {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}},
     "toleration: operator Exists takes no value", False),
    ("gpu-resource-name", {"trainer": {"gpus": 1, "gpuResourceName": "gpu"}}, "spec.trainer.gpuResourceName", True),
    ("quantity", {"trainer": {"resources": {"requests": {"cpu": "four"}}}},
     "spec.trainer.resources.requests.cpu", True),
    ("unknown-field", {"strategy": {"algoritm": "ppo"}}, 'unknown field "spec.strategy.algoritm"', True),
    ("long-name", None, "metadata.name: at most 63 characters", True),
    # what the operator used to find only after admission (issue 9), now refused by the CRD itself
    ("operation-of-another-space", {"searchSpace": {"type": "nasnet", "operations": ["warp_conv_9x9"]}},
     "searchSpace.operations: the nasnet space offers only", True),
    ("operation-of-nasnet-in-nasbench201", {"searchSpace": {"type": "nasbench201", "operations": ["sep_conv_3x3"]}},
     "searchSpace.operations: the nasbench201 space offers only", True),
    ("operations-only-none", {"searchSpace": {"type": "nasbench201", "operations": ["none"]}},
     "searchSpace.operations: with only 'none' every cell outputs zero", True),
    ("max-duration-zero", {"budget": {"maxDuration": "0s"}}, "spec.budget.maxDuration: must be longer than zero", True),
    ("max-duration-number-zero", {"budget": {"maxDuration": 0}}, "spec.budget.maxDuration", True),
    ("negative-learning-rate", {"searchSpace": {"hyperparameters": [
        {"name": "learningRate", "type": "float", "low": -0.1, "high": 0.1}]}},
     "hyperparameter learningRate: low, high and choices must be within the bounds of training.learningRate", True),
    ("zero-batch-size", {"searchSpace": {"hyperparameters": [
        {"name": "batchSize", "type": "categorical", "choices": [0, 32]}]}},
     "hyperparameter batchSize: low, high and choices must be within the bounds of training.batchSize", True),
    ("fractional-batch-size", {"searchSpace": {"hyperparameters": [
        {"name": "batchSize", "type": "categorical", "choices": [32.5, 64]}]}}, "training.batchSize (whole numbers", True),
    ("epochs-to-a-million", {"searchSpace": {"hyperparameters": [
        {"name": "epochs", "type": "int", "low": 1, "high": 1000000}]}}, "training.epochs (whole numbers >= 1 and <= 1000)", True),
    ("max-parameters-absurd", {"objective": {"constraints": {"maxParameters": 1}}},
     "spec.objective.constraints.maxParameters", True),
    ("strategy-parameter-type", {"strategy": {"algorithm": "evolution", "parameters": {"population": "ten"}}},
     "spec.strategy.parameters.population", True),
    ("strategy-parameter-list", {"strategy": {"algorithm": "evolution", "parameters": {"population": [8, 16]}}},
     "spec.strategy.parameters.population", True),
    ("strategy-parameter-of-another", {"strategy": {"algorithm": "evolution", "parameters": {"lr": 0.1}}},
     "strategy.parameters.lr: only ppo and reinforce have this parameter", True),
    ("strategy-parameter-unknown", {"strategy": {"algorithm": "evolution", "parameters": {"popul": 3}}},
     'unknown field "spec.strategy.parameters.popul"', True),
    ("cost-target-zero", {"objective": {"costPenalty": {"target": 0}}}, "spec.objective.costPenalty.target", True),
    ("cost-target-huge", {"objective": {"costPenalty": {"target": 1e300}}}, "spec.objective.costPenalty.target", True),
    ("validation-fraction", {"training": {"dataset": {"validationFraction": 0.9}}},
     "spec.training.dataset.validationFraction", True),
    ("darts-with-hyperparameters", {"strategy": {"algorithm": "darts"}, "searchSpace": {"hyperparameters": [
        {"name": "learningRate", "type": "float", "low": 0.01, "high": 0.1}]}},
     "searchSpace.hyperparameters: not accepted with strategy.algorithm enas, darts or spos", True),
    ("enas-with-early-stopping", {"strategy": {"algorithm": "enas"}, "training": {"earlyStopping": {"algorithm": "asha"}}},
     "training.earlyStopping.algorithm: must be none with strategy.algorithm enas, darts or spos", True),
    ("quoted-number", {"budget": {"maxTrials": "10"}}, "spec.budget.maxTrials", True),
    ("metrics-without-accuracy", {"strategy": {"algorithm": "tpe"},
                                  "objective": {"metrics": [{"name": "parameters", "goal": "minimize"}]}},
     "objective.metrics: validationAccuracy must be one of the metrics", True),
]


@pytest.mark.parametrize("case_id,spec,message,pydantic_too", BAD, ids=[c[0] for c in BAD])
def test_bad_manifests_are_rejected_with_the_schemas_message(crd, cluster, tmp_path, case_id, spec, message,
                                                             pydantic_too):
    body = search_body("bad", "default", spec if spec is not None else {})
    if spec is None:
        body["metadata"]["name"] = "a" * 70
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(body))
    result = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode != 0, f"{case_id}: accepted by the API server"
    assert message in result.stderr, result.stderr
    if pydantic_too:  # `kubenas run` refuses the same manifest
        with pytest.raises(InvalidSpec):
            load_manifest(path)


def test_a_minimal_manifest_is_completed_with_the_models_defaults(crd, kube):
    ns = kube.namespace("schema")
    stored = kube.create_search({"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch",
                                 "metadata": {"name": "minimal", "namespace": ns}})
    expected = ArchitectureSearchSpec().model_dump(mode="json", by_alias=True, exclude_none=True)

    def drop_empty(v):  # empty maps and lists (pydantic's default_factory) mean absent
        if isinstance(v, dict):
            cleaned = {k: drop_empty(x) for k, x in v.items()}
            return {k: x for k, x in cleaned.items() if x not in ({}, [])}
        return v

    assert drop_empty(stored["spec"]) == drop_empty(expected)
    assert stored["spec"]["budget"]["parallelism"] == 2


def test_immutable_fields_and_the_scale_subresource(crd, kube, cluster):
    ns = kube.namespace("schema")
    kube.create_search(search_body("imm", ns))
    for field, change in [("searchSpace", {"type": "darts"}), ("strategy", {"parameters": {"population": 9}}),
                          ("training", {"epochs": 3}), ("redis", {"mode": "managed", "image": "redis:8"})]:
        result = cluster.kubectl("patch", "archsearch", "imm", "-n", ns, "--type=merge",
                                 "-p", json.dumps({"spec": {field: change}}), check=False)
        assert result.returncode != 0 and f"spec.{field} is immutable once the search exists" in result.stderr
    # the budget, suspend and the pod settings stay editable
    cluster.kubectl("patch", "nas", "imm", "-n", ns, "--type=merge", "-p", json.dumps(
        {"spec": {"budget": {"maxTrials": 50}, "suspend": True, "trainer": {"gpus": 2}}}))
    cluster.kubectl("scale", "archsearch/imm", "-n", ns, "--replicas=16")
    assert kube.search(ns, "imm")["spec"]["budget"]["parallelism"] == 16
    scale = json.loads(cluster.kubectl("get", "archsearch", "imm", "-n", ns, "--subresource=scale", "-o", "json").stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 16
    too_many = cluster.kubectl("scale", "archsearch/imm", "-n", ns, "--replicas=2000", check=False)
    assert too_many.returncode != 0 and "less than or equal to 1024" in too_many.stderr
