"""The CRD is generated from the spec models, structural, complete, and checked in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydantic import BaseModel

from kubenas.crd import (
    CRD_NAME, LABEL_SELECTOR_PATH, MODEL_RULES, PATH_RULES, SPEC_REPLICAS_PATH, STATUS_REPLICAS_PATH,
    build_crd, crd_yaml, openapi_schema,
)
from kubenas.spec import STRATEGY_NAMES, ArchitectureSearchSpec, ArchitectureSearchStatus, SearchSummary

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "architecturesearches.kubenas.io.yaml"


def nodes(schema: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every schema node with its path."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")


def at(schema: dict, json_path: str) -> dict:
    node = schema
    for part in json_path.strip(".").split("."):
        node = node["properties"][part]
    return node


def test_checked_in_crd_is_the_generated_one():
    assert CRD_FILE.read_text() == crd_yaml(), (
        "crds/ is out of date: run `kubenas crd --output crds/architecturesearches.kubenas.io.yaml`")


def test_kubenas_crd_command_prints_it_without_torch():
    code = (
        "import sys, io, contextlib\n"
        "from kubenas.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    rc = main(['crd'])\n"
        "assert rc == 0\n"
        "assert 'torch' not in sys.modules, 'kubenas crd imported torch'\n"
        "sys.stdout.write(out.getvalue())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == crd_yaml()
    check = subprocess.run([sys.executable, "-m", "kubenas.cli", "crd", "--check", str(CRD_FILE)],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert check.returncode == 0, check.stderr


def test_names_and_subresources():
    crd = build_crd()
    assert crd["metadata"]["name"] == CRD_NAME == "architecturesearches.kubenas.io"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "ArchitectureSearch", "architecturesearches", ["archsearch", "nas"])
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.budget.parallelism",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    schema = version["schema"]["openAPIV3Schema"]
    assert at(schema, SPEC_REPLICAS_PATH)["type"] == "integer"
    assert at(schema, STATUS_REPLICAS_PATH)["type"] == "integer"
    assert at(schema, LABEL_SELECTOR_PATH)["type"] == "string"


def test_printer_columns():
    (version,) = build_crd()["spec"]["versions"]
    columns = version["additionalPrinterColumns"]
    default = [c["name"] for c in columns if not c.get("priority")]
    assert default == ["Phase", "Trials", "Best", "Age"]
    assert len(columns) > 4 and all(c.get("priority") == 1 for c in columns[4:]), "more with -o wide"
    schema = version["schema"]["openAPIV3Schema"]
    for column in columns:
        if column["jsonPath"].startswith(".metadata"):
            continue
        node = at(schema, column["jsonPath"])
        assert node["type"] == column["type"] or (node["type"], column["type"]) == ("integer", "number"), column


def test_schema_is_structural():
    schema = openapi_schema()
    for path, node in nodes(schema):
        for key in ("$ref", "$defs", "allOf", "oneOf", "not", "title", "const", "nullable"):
            assert key not in node, f"{path}: {key}"
        if "anyOf" in node:
            pytest.fail(f"{path}: anyOf")
        preserved = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        assert node.get("type") or preserved, f"{path}: a node needs a type"
        if "properties" in node:
            assert node["type"] == "object" and "additionalProperties" not in node, path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(key, True), bool), f"{path}: OpenAPI 3.0 wants a boolean {key}"
        if "default" in node:
            assert node["default"] is not None, path
    assert "title" not in crd_yaml()


def _model_fields(model: type[BaseModel]) -> Iterator[tuple[str, type[BaseModel] | None, Any]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        inner = None
        for candidate in getattr(annotation, "__args__", ()) + (annotation,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                inner = candidate
        yield field.alias or name, inner, field


def _assert_declared(model: type[BaseModel], node: dict, path: str) -> None:
    if node.get("type") == "array":
        node = node["items"]
    props = node.get("properties") or {}
    for alias, inner, _ in _model_fields(model):
        assert alias in props, f"{path}.{alias} is not declared in the CRD (the API server would prune it)"
        if inner is not None:
            _assert_declared(inner, props[alias], f"{path}.{alias}")


def test_every_spec_and_status_field_is_declared():
    schema = openapi_schema()
    _assert_declared(ArchitectureSearchSpec, schema["properties"]["spec"], "spec")
    _assert_declared(ArchitectureSearchStatus, schema["properties"]["status"], "status")
    status = schema["properties"]["status"]["properties"]
    assert set(SearchSummary.model_fields) <= set(ArchitectureSearchStatus.model_fields)
    assert status["conditions"]["x-kubernetes-list-type"] == "map"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert status["bestGenotype"]["x-kubernetes-preserve-unknown-fields"] is True
    assert not [p for p, n in nodes(schema["properties"]["status"]) if "default" in n], "no defaults in status"


def _apply_defaults(schema: dict, value: Any) -> Any:
    """What the API server's defaulting does to `value` (recursively, parents first)."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, child in schema["properties"].items():
            if name not in out and "default" in child:
                out[name] = child["default"]
            if name in out:
                out[name] = _apply_defaults(child, out[name])
        return out
    return value


def _without_empty(value: Any) -> Any:
    """Empty maps and lists (pydantic's default_factory) mean the same as absent."""
    if isinstance(value, dict):
        cleaned = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def _pydantic(spec: dict) -> dict:
    return _without_empty(ArchitectureSearchSpec.model_validate(spec).model_dump(
        mode="json", by_alias=True, exclude_none=True))


def test_defaults_are_the_models_defaults():
    spec_schema = openapi_schema()["properties"]["spec"]
    assert spec_schema["default"] == {}
    assert _without_empty(_apply_defaults(spec_schema, {})) == _pydantic({})
    # and a partial spec is completed the same way pydantic completes it
    partial = {"budget": {"parallelism": 16}, "trainer": {"gpus": 1}, "searchSpace": {"type": "darts"},
               "objective": {"costPenalty": {"target": 1e8}}}
    assert _without_empty(_apply_defaults(spec_schema, partial)) == _pydantic(partial)


def test_enums_bounds_and_cel_rules():
    schema = openapi_schema()
    spec = schema["properties"]["spec"]
    assert at(spec, "strategy.algorithm")["enum"] == list(STRATEGY_NAMES)
    assert at(spec, "searchSpace.type")["enum"] == ["nasnet", "darts", "nasbench201"]
    parallelism = at(spec, "budget.parallelism")
    assert (parallelism["minimum"], parallelism["maximum"], parallelism["default"]) == (1, 1024, 2)
    assert at(spec, "training.learningRate")["exclusiveMinimum"] is True
    assert at(spec, "budget.maxDuration")["pattern"]
    assert at(spec, "trainer.resources.requests")["additionalProperties"]["x-kubernetes-int-or-string"] is True
    # every strategy parameter is declared with its type: the API server refuses a wrong type
    parameters = at(spec, "strategy.parameters")
    assert parameters["properties"]["population"] == {"type": "integer"}
    assert parameters["properties"]["lr"] == {"type": "number"}
    assert parameters["properties"]["multivariate"] == {"type": "boolean"}
    assert "additionalProperties" not in parameters and "x-kubernetes-preserve-unknown-fields" not in parameters
    assert at(spec, "trainer.affinity")["x-kubernetes-preserve-unknown-fields"] is True

    def messages(node: dict) -> list[str]:
        return [r["message"] for r in node.get("x-kubernetes-validations", [])]

    assert "redis.urlSecret is required when redis.mode is external" in messages(at(spec, "redis"))
    assert any("nasbench201" in m for m in messages(at(spec, "searchSpace")))
    hp = at(spec, "searchSpace.hyperparameters")
    assert hp["x-kubernetes-list-map-keys"] == ["name"]
    assert "hyperparameter: low must be below high" in messages(hp["items"])
    for field in ("searchSpace", "strategy", "objective", "training", "redis", "final", "oneShot"):
        assert any(r["rule"] == "self == oldSelf" for r in at(spec, field)["x-kubernetes-validations"]), field
    # the immutable fields are the ones the models mark, each rule naming its field
    assert sorted(PATH_RULES) == sorted(f"spec.{f}" for f in ("searchSpace", "strategy", "objective", "training", "redis",
                                                               "final", "oneShot"))
    assert all(rules[0]["message"].startswith(f"{path} is immutable") for path, rules in PATH_RULES.items())
    for field in ("budget", "trainer", "controller", "suspend"):
        assert not any("oldSelf" in r["rule"] for r in at(spec, field).get("x-kubernetes-validations", [])), field
    # every rule table entry landed somewhere
    placed = [r["rule"] for _, node in nodes(schema) for r in node.get("x-kubernetes-validations", [])]
    for rules in list(MODEL_RULES.values()) + list(PATH_RULES.values()):
        for rule in rules:
            assert rule["rule"] in placed


def test_admission_rules_come_from_the_models():
    spec = openapi_schema()["properties"]["spec"]

    def messages(node: dict) -> list[str]:
        return [r["message"] for r in node.get("x-kubernetes-validations", [])]

    # an operation of another space
    space_rules = messages(at(spec, "searchSpace"))
    assert any(m.startswith("searchSpace.operations: the nasnet space offers only") for m in space_rules)
    assert any("nasbench201 space offers only none, skip_connect" in m for m in space_rules)
    # hyperparameter ranges within the bounds of the training field they replace
    items = messages(at(spec, "searchSpace.hyperparameters")["items"])
    assert any("training.learningRate (> 0 and <= 10)" in m for m in items)
    assert any("training.epochs (whole numbers >= 1 and <= 1000)" in m for m in items)
    assert any("training.batchSize (whole numbers >= 1 and <= 65536)" in m for m in items)
    # a parameter of another strategy
    assert "strategy.parameters.lr: only ppo and reinforce have this parameter" in messages(at(spec, "strategy"))
    # bounds
    assert at(spec, "budget.maxDuration")["x-kubernetes-validations"][0]["rule"] == "self.matches('[1-9]')"
    assert at(spec, "objective.constraints.maxParameters")["minimum"] == 1000
    target = at(spec, "objective.costPenalty.target")
    assert (target["minimum"], target["exclusiveMinimum"], target["maximum"]) == (0, True, 1e18)
    fraction = at(spec, "training.dataset.validationFraction")
    assert (fraction["minimum"], fraction["exclusiveMinimum"], fraction["maximum"]) == (0, True, 0.5)
    assert at(spec, "training.epochs")["maximum"] == 1000
