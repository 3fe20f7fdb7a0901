import csv
import json
import random

import pytest
from PIL import Image

from kubenas.cli import main
from kubenas.local.pareto import pareto_table, write_pareto
from kubenas.local.results import write_results
from kubenas.objectives import Objectives
from kubenas.pareto_archive import ParetoArchive
from kubenas.search_state import SearchState
from kubenas.spaces import build_space
from kubenas.spec import BudgetSpec

TWO = Objectives((("validationAccuracy", "maximize"), ("parameters", "minimize")))
THREE = Objectives((("validationAccuracy", "maximize"), ("parameters", "minimize"), ("multiplyAdds", "minimize")))


def _trials(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    space = build_space("nasbench201")
    trials = []
    for i in range(n):
        status = "failed" if i % 7 == 3 else "succeeded"
        accuracy = None if status == "failed" else round(rng.uniform(0.2, 0.95), 3)
        params = float(rng.choice([800, 1200, 2500, 4000, 9000]))  # ties happen, as in a real space
        trials.append({"id": f"t-{i:04d}", "status": status, "accuracy": accuracy, "reward": accuracy,
                       "hash": f"h{i}", "genotype": space.sample(rng),
                       "cost": {"params": params, "multiply_adds": params * rng.uniform(30, 60)}})
    return trials


def _brute_force_front(trials: list[dict], objectives: Objectives) -> set[str]:
    """A trial is on the front when no other is at least as good everywhere and better somewhere."""
    points = {t["id"]: objectives.minimized(objectives.values(t["accuracy"], t["cost"]))
              for t in trials if t["status"] == "succeeded"}
    return {a for a, p in points.items()
            if not any(all(x <= y for x, y in zip(q, p)) and q != p for b, q in points.items() if b != a)}


@pytest.mark.parametrize("objectives", [TWO, THREE])
def test_the_table_marks_exactly_the_brute_force_front(objectives):
    trials = _trials(60)
    rows = pareto_table(trials, objectives)
    assert [r.trial for r in rows] == [t["id"] for t in trials if t["status"] == "succeeded"]
    assert {r.trial for r in rows if r.on_front} == _brute_force_front(trials, objectives)
    assert all(r.rank > 0 for r in rows if not r.on_front)


def test_pareto_csv_and_png_one_panel_per_pair(tmp_path):
    trials = _trials(40)
    files = write_pareto(tmp_path, trials, THREE, title="three")
    assert set(files) == {"pareto_csv", "pareto_png"}
    with open(files["pareto_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["trial", "validationAccuracy", "parameters", "multiplyAdds", "front", "on_front",
                             "hash", "genotype"]
    assert len(rows) == sum(t["status"] == "succeeded" for t in trials)
    assert {r["trial"] for r in rows if r["on_front"] == "1"} == _brute_force_front(trials, THREE)
    by_id = {t["id"]: t for t in trials}
    assert all(json.loads(r["genotype"]) == by_id[r["trial"]]["genotype"] for r in rows)
    assert all(float(r["parameters"]) == by_id[r["trial"]]["cost"]["params"] for r in rows)
    three = Image.open(files["pareto_png"]).size
    write_pareto(tmp_path, trials, TWO)
    two = Image.open(tmp_path / "pareto.png").size
    assert three[0] >= 2.5 * two[0] and three[1] == two[1]  # three panels in a row, against one


def test_the_archive_keeps_the_front_bounded_and_the_hypervolume_never_falls():
    rng = random.Random(1)
    points = {}
    for i in range(300):  # accuracy bought with size, plus noise: a front of dozens
        u = rng.uniform(0, 1)
        points[f"t{i}"] = (u, 1e3 + 1e5 * u * rng.uniform(0.8, 1.2))
    front = _brute_force_front([{"id": k, "status": "succeeded", "accuracy": a, "cost": {"params": p}}
                                for k, (a, p) in points.items()], TWO)
    unbounded, bounded = ParetoArchive(TWO), ParetoArchive(TWO, capacity=10)
    volumes = []
    for k, (a, p) in points.items():
        unbounded.note(k, a, {"params": p})
        bounded.note(k, a, {"params": p})
        volumes.append(unbounded.hypervolume())
        assert bounded.size <= 10
    assert set(unbounded.members) == front and len(front) > 10
    assert all(b >= a - 1e-12 for a, b in zip(volumes, volumes[1:]))
    # bounded: the extremes of the front are never the ones dropped
    best = max(front, key=lambda k: points[k][0])
    smallest = min(front, key=lambda k: points[k][1])
    assert {best, smallest} <= set(bounded.members) and bounded.size == 10
    members = unbounded.status_members(limit=4)
    assert len(members) == 4 and members[0].trial == best and members[-1].trial == smallest


def test_a_replayed_state_has_the_live_front():
    def state():
        return SearchState(BudgetSpec(max_trials=100), make_message=None, objectives=TWO)

    live = state()
    events = []
    for t in _trials(30, seed=2):
        event = {"e": "result", "id": t["id"], "status": t["status"], "reward": t["accuracy"],
                 "accuracy": t["accuracy"], "cost": t["cost"]}
        live.record(event)
        events.append(json.loads(json.dumps(event)))  # through the trial log's JSON
    replayed = state()
    for event in events:
        replayed.apply(event)
    assert live.summary().model_dump() == replayed.summary().model_dump()
    summary = live.summary()
    assert {m.trial for m in summary.pareto_front} == _brute_force_front(_trials(30, seed=2), TWO)
    assert summary.hypervolume > 0
    single = SearchState(BudgetSpec(max_trials=100), make_message=None, objectives=Objectives())
    single.apply(events[0])
    assert single.summary().pareto_front_size is None and single.summary().pareto_front == []


def test_results_and_export_pareto_from_a_run_directory(tmp_path, capsys):
    """A run's checkpoint log -> results with pareto.csv/png -> `kubenas export --pareto`."""
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    trials = _trials(12, seed=3)
    state = SearchState(BudgetSpec(max_trials=100), make_message=None, objectives=TWO)
    with open(checkpoint / "trials.jsonl", "w") as log:
        for t in trials:
            log.write(json.dumps({"e": "trial", "id": t["id"], "genotype": t["genotype"], "hash": t["hash"]}) + "\n")
            event = {"e": "result", "id": t["id"], "status": t["status"], "reward": t["accuracy"],
                     "accuracy": t["accuracy"], "cost": t["cost"]}
            state.apply(event)
            log.write(json.dumps(event) + "\n")
    summary = state.summary().model_dump(mode="json", by_alias=True)
    results = tmp_path / "results"
    written = write_results(results, checkpoint, summary, TWO)
    assert {"pareto_csv", "pareto_png"} <= set(written["files"])
    front = _brute_force_front(trials, TWO)

    code = main(["export", str(results), "--pareto", "-N", "1", "-F", "4", "--input", "1x8x8"])
    assert code == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert {m["trial"] for m in out["members"]} == front
    for member in out["members"]:
        assert (results / "export-pareto" / member["trial"] / "model.json").is_file()


def test_a_search_whose_trials_all_failed_still_gets_its_pareto_csv(tmp_path):
    """The objectives come from the search's spec, not from its (here empty) front."""
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    state = SearchState(BudgetSpec(max_trials=100), make_message=None, objectives=TWO)
    with open(checkpoint / "trials.jsonl", "w") as log:
        for t in _trials(3, seed=4):
            log.write(json.dumps({"e": "trial", "id": t["id"], "genotype": t["genotype"], "hash": t["hash"]}) + "\n")
            event = {"e": "result", "id": t["id"], "status": "failed", "reward": None, "error": "out of memory"}
            state.apply(event)
            log.write(json.dumps(event) + "\n")
    summary = state.summary().model_dump(mode="json", by_alias=True)
    assert summary["paretoFront"] == []
    written = write_results(tmp_path / "results", checkpoint, summary, TWO)
    with open(written["files"]["pareto_csv"]) as f:
        assert f.read().splitlines() == ["trial,validationAccuracy,parameters,front,on_front,hash,genotype"]
    assert "pareto_png" not in written["files"]


def test_export_pareto_without_a_front_says_why(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--pareto"]) == 2
    assert "no pareto.csv there" in capsys.readouterr().err


def test_note_says_false_when_the_newcomer_is_the_member_dropped():
    archive = ParetoArchive(TWO, capacity=2)
    assert archive.note("best", 0.9, {"params": 1e5}) and archive.note("smallest", 0.1, {"params": 1e3})
    # Non-dominated, but between the two extremes, which are never dropped: it is the one that goes.
    assert archive.note("middle", 0.5, {"params": 5e4}) is False
    assert set(archive.members) == {"best", "smallest"}
