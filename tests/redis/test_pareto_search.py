"""A multi-objective search through the real controller and a real Redis: latency priced by a
lookup table (not measured by the trainers), the Pareto front in the published summary, and
the same front after a restart from the checkpoint."""

from __future__ import annotations

import json

import pytest

from kubenas.errors import InvalidSpec
from kubenas.nn.latency_table import NetworkSize, make_table, predict_latency, space_units
from kubenas.objectives import Objectives, pareto_front
from kubenas.spec import ArchitectureSearchSpec
from tests.redis.harness import InProcess, by_kind, events, spec_dict

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

OBJECTIVES = Objectives((("validationAccuracy", "maximize"), ("latency", "minimize")))


def _table(path, size=NetworkSize(resolution=8, in_channels=1, channels=4, cells_per_stage=1)):
    keys = space_units(size)
    # Made-up seconds, distinct per entry: the test checks arithmetic, not timing.
    table = make_table(size, "cpu", "test", {k: (i + 1) * 1e-5 for i, k in enumerate(keys)}, repeats=1)
    path.write_text(json.dumps(table))
    return table


def _spec(table_path: str, max_trials: int = 16) -> ArchitectureSearchSpec:
    spec = spec_dict(max_trials=max_trials, parallelism=2)
    spec["objective"] = {"metrics": [{"name": "validationAccuracy", "goal": "maximize"},
                                     {"name": "latency", "goal": "minimize"}],
                         "latency": {"table": table_path}}
    return ArchitectureSearchSpec.model_validate(spec)


def test_latency_from_the_table_and_the_front_in_the_summary(redis_server, keys, tmp_path):
    table = _table(tmp_path / "cpu.json")
    spec = _spec(str(tmp_path / "cpu.json"))
    run = InProcess(redis_server.url, keys, spec, tmp_path / "ck", trainers=2, fake_work=0.02).start()
    assert run.controller._latency is False, "trainers must not measure latency when a table prices it"
    summary = run.wait(60)
    assert summary["finished"] and summary["trials"]["succeeded"] == 16

    evs = events(tmp_path / "ck")
    genotypes = {e["id"]: e["genotype"] for e in by_kind(evs, "trial")}
    results = by_kind(evs, "result")
    for e in results:  # the fake trainer reports no latency: every value is the table's price
        assert e["cost"]["latency_seconds"] == pytest.approx(predict_latency(table, genotypes[e["id"]]), rel=1e-12)

    values = [OBJECTIVES.values(e["accuracy"], e["cost"]) for e in results]
    front_ids = {results[i]["id"] for i in pareto_front([OBJECTIVES.minimized(v) for v in values])}
    front_values = {tuple(values[i]) for i in pareto_front([OBJECTIVES.minimized(v) for v in values])}
    assert summary["paretoFrontSize"] == len(front_values)  # equal points share one member
    assert {m["trial"] for m in summary["paretoFront"]} <= front_ids
    assert summary["hypervolume"] > 0

    # A restart replays the trial log into the same front.
    from kubenas.queue.connection import connect
    from kubenas_controller.controller import Controller, ControllerOptions

    run.controller.checkpoint.unlock()  # as the process exiting would
    again = Controller(spec, keys, connect(redis_server.url), str(tmp_path / "ck"), ControllerOptions(fsync=False))
    again.restore()
    try:
        replayed = again.summary().model_dump(mode="json", by_alias=True)
    finally:
        again.checkpoint.unlock()
    for field in ("paretoFront", "paretoFrontSize", "hypervolume"):
        assert replayed[field] == summary[field], field


@pytest.mark.parametrize("make, says", [
    (lambda tmp: str(tmp / "missing.json"), "spec.objective.latency.table: latency table"),
    (lambda tmp: (tmp / "t.json").write_text("{}") and str(tmp / "t.json"), "not a kubenas latency table"),
])
def test_an_unusable_table_stops_the_controller_naming_the_field(redis_server, keys, tmp_path, make, says):
    from kubenas.queue.connection import connect
    from kubenas_controller.controller import Controller, ControllerOptions

    with pytest.raises(InvalidSpec, match=says):
        Controller(_spec(make(tmp_path)), keys, connect(redis_server.url), str(tmp_path / "ck"),
                   ControllerOptions(fsync=False))


def test_a_table_for_other_operations_is_refused_before_the_search(redis_server, keys, tmp_path):
    from kubenas.queue.connection import connect
    from kubenas_controller.controller import Controller, ControllerOptions

    size = NetworkSize(resolution=8, in_channels=1, channels=4, cells_per_stage=1)
    table = make_table(size, "cpu", "test", {k: 1e-5 for k in space_units(size, ["none", "skip_connect"])}, 1)
    (tmp_path / "small.json").write_text(json.dumps(table))
    with pytest.raises(InvalidSpec, match=r"no entry for op\(nor_conv_1x1"):
        Controller(_spec(str(tmp_path / "small.json")), keys, connect(redis_server.url), str(tmp_path / "ck"),
                   ControllerOptions(fsync=False))


def test_a_table_without_latency_among_the_objectives_is_refused():
    spec = spec_dict()
    spec["objective"] = {"latency": {"table": "cpu.json"}}
    with pytest.raises(ValueError, match="objective.latency: a latency table is used only when latency"):
        ArchitectureSearchSpec.model_validate(spec)
