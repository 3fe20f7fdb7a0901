"""The arithmetic of benchmarks/oneshot_vs_evolution.py (the numbers are the benchmarks')."""

from __future__ import annotations

import pytest

from benchmarks import oneshot_vs_evolution as bench


def _run(strategy, steps, truth, trials=4):
    return {"strategy": strategy, "trials": trials, "trainer_seconds": steps[-1][0],
            "trajectory": [{"trainer_seconds": s, "best_cell": c} for s, c in steps],
            "truth_of_best_so_far": {c: {"val_acc": v} for c, v in truth.items()}}


def test_evolution_reaches_an_accuracy_when_its_best_cell_so_far_truly_has_it():
    run = _run("evolution", [(10.0, "a"), (20.0, "b"), (30.0, "c"), (40.0, "b")], {"a": 70, "b": 79, "c": 77})
    assert bench.seconds_to_reach(run, 75.0) == 20.0  # b, not c: c's observed reward was lucky
    assert bench.seconds_to_reach(run, 80.0) is None


def test_one_shot_is_costed_with_its_stand_alone_trials_and_compared_at_its_accuracy():
    evolution = [_run("evolution", [(10.0, "a"), (40.0, "b")], {"a": 70, "b": 80}),
                 _run("evolution", [(10.0, "a"), (20.0, "b")], {"a": 70, "b": 80}),
                 _run("random", [(5.0, "b")], {"b": 80}, trials=1)]
    oneshot = [{"algorithm": "spos", "top_val_acc": 78.0, "seconds": 12.0},
               {"algorithm": "spos", "top_val_acc": 80.0, "seconds": 14.0},
               {"algorithm": "darts", "top_val_acc": 90.0, "seconds": 20.0}]
    spos, darts = bench.compare(oneshot, {"runs": evolution}, top_k=2)
    # 60 trainer-seconds over 8 evolution trials: 7.5 per stand-alone trial
    assert spos["seconds"] == pytest.approx(13.0 + 2 * 7.5) and spos["accuracy"] == pytest.approx(79.0)
    assert spos["evolution_reached"] == 2 and spos["evolution_seconds"] == pytest.approx(30.0)
    assert spos["ratio"] == pytest.approx(28.0 / 30.0)
    assert darts["evolution_reached"] == 0 and darts["ratio"] is None
