"""The pure parts of benchmarks/quickstart_vs_random.py (the runs themselves are the benchmark's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks import quickstart_vs_random as bench
from kubenas.manifest import parse_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_the_variants_change_only_the_strategy_seed_and_budget():
    manifest = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    own = bench.variant(manifest, "evolution", 3)
    rand = bench.variant(manifest, "random", 4, max_trials=10)
    assert own["spec"]["strategy"] == manifest["spec"]["strategy"] and own["spec"]["training"]["seed"] == 3
    assert rand["spec"]["strategy"] == {"algorithm": "random"} and rand["spec"]["budget"]["maxTrials"] == 10
    assert "maxDuration" not in own["spec"]["budget"] and "maxDuration" in manifest["spec"]["budget"]
    assert own["spec"]["training"]["dataset"] == manifest["spec"]["training"]["dataset"]
    for doc in (own, rand):
        parse_manifest(doc)  # still a valid manifest
    with pytest.raises(ValueError, match="the manifest's is 'evolution'"):
        bench.variant(manifest, "tpe", 0)


def _trial(id_, finished, reward, seconds, cell, status="succeeded"):
    return {"id": id_, "finished": finished, "reward": reward, "train_seconds": seconds, "status": status,
            "genotype": {"space": "nasbench201", "cell": cell, "hparams": {}}}


def test_the_trajectory_follows_finishing_order_and_the_best_so_far():
    trials = [_trial("t2", 30.0, 0.9, 2.0, "c"), _trial("t0", 10.0, 0.5, 1.0, "a"),
              _trial("t1", 20.0, None, 4.0, "b", status="failed"), _trial("t3", 40.0, 0.9, 3.0, "d"),
              {"id": "t4", "status": "unfinished", "genotype": None}]
    steps = bench.trajectory(trials)
    assert [s["trials"] for s in steps] == [1, 2, 3, 4]
    assert [s["trainer_seconds"] for s in steps] == [1.0, 5.0, 7.0, 10.0]  # failed trials cost too
    assert [s["best_cell"] for s in steps] == ["a", "a", "c", "c"]  # an equal reward later does not take over


def test_the_later_trials_mean_reward_reads_the_second_half_in_finishing_order():
    trials = [_trial("t3", 40.0, 0.9, 1.0, "d"), _trial("t0", 10.0, 0.1, 1.0, "a"),
              _trial("t2", 30.0, None, 1.0, "c", status="failed"), _trial("t1", 20.0, 0.3, 1.0, "b"),
              {"id": "t4", "status": "unfinished", "genotype": None}]
    assert bench.later_mean_reward(trials) == pytest.approx(0.9)  # t2 (failed) and t3
    record = bench.run_record("random", 4, trials, truth=lambda cell: {"val_acc": 1.0, "test_acc": 2.0})
    assert record["best_cell"] == "d" and record["later_mean_reward"] == pytest.approx(0.9)
    assert record["trials"] == 4 and set(record["truth_of_best_so_far"]) == {"a", "b", "d"}


def test_the_summary_and_the_table(tmp_path):
    runs = [{"strategy": "evolution", "best_reward": r, "truth": {"val_acc": v, "test_acc": t},
             "trainer_seconds": s} for r, v, t, s in ((0.8, 80.0, 79.0, 100.0), (0.9, 82.0, 81.0, 300.0))]
    runs.append({"strategy": "random", "best_reward": 0.7, "truth": {"val_acc": 70.0, "test_acc": 69.0},
                 "trainer_seconds": 50.0})
    rows = bench.summarise(runs)
    assert [r["strategy"] for r in rows] == ["evolution", "random"]
    assert rows[0]["val_acc_mean"] == 81.0 and rows[0]["trainer_seconds_mean"] == 200.0
    assert rows[0]["test_acc_sd"] == pytest.approx(2 ** 0.5) and rows[1]["val_acc_sd"] == 0.0
    text = bench.format_table(rows)
    assert "85.00 ± 7.07" in text and "81.00 ± 1.41" in text

    table = tmp_path / "t.csv"
    table.write_text("index,cellstr,val_acc,test_acc\n0,|a|,71.5,70.25\n1,|b|,72.0\n")  # a row being written
    assert bench.read_table(table) == {"|a|": {"val_acc": 71.5, "test_acc": 70.25}}
