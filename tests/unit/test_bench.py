"""The strategies benchmark: table loading with clear errors, the asynchronous harness, the CLI."""

from __future__ import annotations

import csv
import itertools
import random

import pytest

from kubenas.bench import Spec, load_table, markdown, run_benchmark, simulate, summarize
from kubenas.cli import main
from kubenas.errors import DatasetError, KubenasError
from kubenas.spaces.nasbench201 import format_cellstr

OPS3 = ("skip_connect", "nor_conv_1x1", "nor_conv_3x3")


def write_table(path, rows, header="index,cellstr,val_acc,test_acc"):
    lines = [header] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def small_table(tmp_path):
    """All 729 cells over three operations; val and test follow the number of 3x3 convolutions."""
    rng = random.Random(0)
    rows = []
    for i, ops in enumerate(itertools.product(OPS3, repeat=6)):
        score = sum(op == "nor_conv_3x3" for op in ops) + 0.5 * sum(op == "nor_conv_1x1" for op in ops[:3])
        rows.append((i, format_cellstr(list(ops)), round(50 + 5 * score + rng.random(), 3),
                     round(52 + 5 * score + rng.random(), 3)))
    return write_table(tmp_path / "small.csv", rows)


def test_small_table_restricts_the_space_to_its_operations(small_table):
    table = load_table(small_table)
    assert len(table) == 729
    assert table.space.operations == OPS3
    assert table.best_val.cellstr.count("nor_conv_3x3") == 6


@pytest.mark.parametrize("content, message", [
    ("cellstr,val_acc\n|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|,1\n",
     "missing column.*test_acc"),
    ("cellstr,val_acc,test_acc\n|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|,high,2\n",
     "line 2: val_acc must be a number, got 'high'"),
    ("cellstr,val_acc,test_acc\n|conv_9x9~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|,1,2\n",
     "line 2: cellstr.*conv_9x9"),
    ("cellstr,val_acc,test_acc\n", "no rows"),
    ("cellstr,val_acc,test_acc\n|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|,1,2\n"
     "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|,3,4\n",
     "line 3: the same architecture as line 2"),
    ("cellstr,val_acc,test_acc\n|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|,1\n",
     "line 2: expected 3 fields"),
    ('cellstr,val_acc,test_acc\n"{""space"": ""mars""}",1,2\n', "line 2: .*neither.*mars"),
])
def test_malformed_tables_fail_with_the_line_and_column(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_table(path)


def test_missing_table_file(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_table(tmp_path / "nope.csv")


def test_json_genotype_tables_are_accepted(tmp_path):
    import json

    from kubenas.spaces import build_space

    space = build_space("darts")
    rng = random.Random(1)
    path = tmp_path / "darts.csv"
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["cellstr", "val_acc", "test_acc"])
        for _ in range(20):
            out.writerow([json.dumps(space.sample(rng)), rng.random(), rng.random()])
    table = load_table(path)
    assert table.space.name == "darts" and len(table) == 20
    # Unknown cells are failed trials: the harness still finishes its budget.
    run = simulate(table, Spec("random"), seed=0, budget=10, workers=3)
    assert run.misses >= 9


def test_harness_counts_queries_and_reads_only_val(small_table):
    table = load_table(small_table)
    run = simulate(table, Spec("evolution", {"population": 10, "sample": 3}), seed=3, budget=40, workers=4)
    assert run.budget == run.queries == 40
    entry = next(e for e in table.entries.values() if e.val_acc == run.best_val)
    assert run.best_test == entry.test_acc  # the test accuracy of the best-val cell seen
    assert run.hits >= 0 and run.misses == 0


def test_a_table_smaller_than_the_budget_ends_the_run_early(tmp_path):
    rows = [(i, format_cellstr(list(ops)), 50 + i, 60 + i)
            for i, ops in enumerate(itertools.product(("none", "skip_connect"), repeat=6))]
    table = load_table(write_table(tmp_path / "tiny.csv", rows))
    run = simulate(table, Spec("random"), seed=0, budget=100, workers=4)
    assert run.queries == 64 and run.found_best and run.best_test == 60 + 63


def test_harness_workers_finish_out_of_order(small_table, monkeypatch):
    from kubenas.strategies.random_search import RandomSearch

    told: list[str] = []
    original = RandomSearch._observe

    def spy(self, trial, result):
        told.append(trial.id)
        original(self, trial, result)

    monkeypatch.setattr(RandomSearch, "_observe", spy)
    simulate(load_table(small_table), Spec("random"), seed=0, budget=30, workers=8)
    assert len(told) == 30
    assert told != sorted(told)  # completion order differs from issue order


def test_harness_is_reproducible_and_seeds_differ(small_table):
    table = load_table(small_table)
    a = simulate(table, Spec("local-search"), seed=1, budget=25, workers=4)
    b = simulate(table, Spec("local-search"), seed=1, budget=25, workers=4)
    assert (a.best_val, a.hits) == (b.best_val, b.hits)
    runs = run_benchmark(small_table, [Spec("random")], range(6), budget=5, workers=2, processes=1)
    assert len({r.best_val for r in runs}) > 1


def test_local_search_beats_random_in_the_harness(small_table):
    runs = run_benchmark(small_table, [Spec("random"), Spec("local-search")], range(8), budget=40, workers=4,
                         processes=1)
    rows = {r["label"]: r for r in summarize(runs, ["random", "local-search"])}
    assert rows["local-search"]["val_mean"] > rows["random"]["val_mean"]
    text = markdown(list(rows.values()))
    assert text.splitlines()[0].startswith("| name | mean±sd |")
    assert "| local-search | " in text


def test_parameters_are_named_as_in_a_manifest_and_reach_the_strategy_as_keywords():
    """--param takes strategy.parameters' camelCase names; the strategy gets its snake_case keywords."""
    spec = Spec("tpe@few", {"nStartupTrials": 3, "constantLiar": True})
    assert spec.strategy_params == {"n_startup_trials": 3, "constant_liar": True}
    staged = Spec("random+asha", {"minEpochs": 2, "reductionFactor": 2})
    assert staged.strategy_params == {} and staged.scheduler_params == {"minEpochs": 2, "reductionFactor": 2,
                                                                        "minTrials": 5}


def test_cli_prints_one_row_per_strategy(small_table, capsys):
    code = main(["bench", "strategies", "--table", small_table, "--budget", "12,20", "--workers", "3",
                 "--seeds", "3", "--strategies", "random,evolution,evolution@small",
                 "--param", "evolution@small.population=4", "--param", "evolution@small.sample=2",
                 "--processes", "2"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["name", "random", "evolution", "evolution@small"] * 2
    assert "12 queries, 3 asynchronous workers, 3 seeds" in out


@pytest.mark.parametrize("argv, message", [
    (["--strategies", "random,bogus"], "'bogus' is not known"),
    (["--param", "evolution.population=4"], "'evolution' is not among the strategies run"),
    (["--strategies", "evolution", "--param", "evolution.colour=4"], "no parameter \\['colour'\\]"),
    (["--strategies", "tpe", "--param", "tpe.n_startup_trials=4"],
     "--param tpe.n_startup_trials: did you mean tpe.nStartupTrials\\?"),
    (["--param", "random"], "expected NAME.KEY=VALUE"),
    (["--budget", "ten"], "--budget: expected positive integers"),
])
def test_cli_errors_are_one_readable_line(small_table, capsys, argv, message):
    base = ["bench", "strategies", "--table", small_table, "--seeds", "1", "--strategies", "random"]
    if "--strategies" in argv:
        base = base[:-2]
    code = main(base + argv)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err


def test_cli_rejects_a_malformed_table(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,score\nx,1\n")
    assert main(["bench", "strategies", "--table", str(bad)]) == 2
    assert "missing column(s) cellstr, val_acc, test_acc" in capsys.readouterr().err


def test_the_nasbench201_table_loads(nb201_table_path):
    table = load_table(nb201_table_path)
    assert len(table) == 15625
    assert table.best_val.val_acc == pytest.approx(84.892)
    assert table.best_val.test_acc == pytest.approx(89.03)


# --- learning-curve tables: replay epoch by epoch at equal total epochs ---------------------------

CURVE_EPOCHS = 4


def curve_header(epochs=CURVE_EPOCHS):
    return (["cellstr", "parameters", "multiply_adds", "val_acc", "test_acc"]
            + [f"val_acc_e{e}" for e in range(1, epochs + 1)] + [f"test_acc_e{e}" for e in range(1, epochs + 1)])


@pytest.fixture
def curve_table(tmp_path):
    """243 cells over three operations (the last edge fixed); each cell's curve rises towards a final
    accuracy set by its 3x3 convolutions, and epoch e's value is unique, so a read can be traced."""
    rng = random.Random(0)
    path = tmp_path / "curves.csv"
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(curve_header())
        for i, ops in enumerate(itertools.product(OPS3, repeat=5)):
            final = 50 + 6 * sum(op == "nor_conv_3x3" for op in ops) + rng.random()
            val = [round(final * (1 - 0.5 ** e) + 0.001 * i, 3) for e in range(1, CURVE_EPOCHS + 1)]
            test = [round(v + 1 + rng.random(), 3) for v in val]
            out.writerow([format_cellstr(list(ops) + ["nor_conv_3x3"]), 1000 + i, 10000 + i, val[-1], test[-1]]
                         + val + test)
    return str(path)


def test_a_curve_table_loads_every_epoch(curve_table):
    table = load_table(curve_table)
    assert table.epochs == CURVE_EPOCHS and len(table) == 243
    entry = table.best_val
    assert len(entry.val_curve) == len(entry.test_curve) == CURVE_EPOCHS
    assert entry.val_curve[-1] == entry.val_acc and entry.test_curve[-1] == entry.test_acc
    assert list(entry.val_curve) == sorted(entry.val_curve)
    assert set(entry.cost) == {"params", "multiply_adds"}
    assert entry.cost["multiply_adds"] - entry.cost["params"] == 9000


def test_a_plain_table_has_no_curves(small_table):
    assert load_table(small_table).epochs is None


def test_a_curve_table_with_a_gap_names_the_missing_column(tmp_path):
    header = [c for c in curve_header() if c != "test_acc_e3"]
    path = tmp_path / "gap.csv"
    path.write_text(",".join(header) + "\n")
    with pytest.raises(DatasetError, match="needs test_acc_e1 .. test_acc_e4; missing test_acc_e3"):
        load_table(path)


def test_replay_spends_exactly_the_epoch_budget(curve_table):
    from kubenas.bench import replay

    table = load_table(curve_table)
    full = replay(table, Spec("random"), seed=0, budget=12, workers=3)
    asha = replay(table, Spec("random+asha"), seed=0, budget=12, workers=3)
    hyperband = replay(table, Spec("random+hyperband"), seed=0, budget=12, workers=3)
    for run in (full, asha, hyperband):
        assert run.epochs == 12 * CURVE_EPOCHS
        assert 1 <= run.full <= run.queries
    # Full fidelity: every trial trains all epochs (the last ones may be cut by the budget's end).
    assert full.queries - 3 <= full.full <= 12
    # Early stopping buys more trials with the same epochs.
    assert asha.queries > full.queries and hyperband.queries > full.queries
    # The score is the test accuracy after all epochs of the best-val cell among those trained fully.
    entry = next(e for e in table.entries.values() if e.val_curve[-1] == asha.best_val)
    assert asha.best_test == entry.test_curve[-1]


def test_replay_reads_epoch_e_for_a_trial_trained_e_epochs(curve_table, monkeypatch):
    from kubenas.bench import replay
    from kubenas.strategies.multifidelity import MultiFidelity
    from kubenas.strategies.random_search import RandomSearch

    table = load_table(curve_table)
    reports: list[tuple[str, int, float]] = []
    told = []
    report, observe = MultiFidelity.report, RandomSearch._observe

    def spy_report(self, trial_id, epoch, value):
        reports.append((self.pending[trial_id].genotype["cell"], epoch, value))
        return report(self, trial_id, epoch, value)

    def spy_observe(self, trial, result):
        told.append(result)
        observe(self, trial, result)

    monkeypatch.setattr(MultiFidelity, "report", spy_report)
    monkeypatch.setattr(RandomSearch, "_observe", spy_observe)
    replay(table, Spec("random+asha"), seed=2, budget=10, workers=4)
    by_cell = {e.cellstr: e for e in table.entries.values()}
    assert {epoch for _, epoch, _ in reports} == {1, 2, 3, 4}
    assert all(by_cell[cell].val_curve[epoch - 1] == value for cell, epoch, value in reports)
    # Random search is not fidelity-aware: a stopped trial never reaches it as a final reward.
    rewarded = [r for r in told if r.reward is not None]
    assert rewarded and all(r.epochs == CURVE_EPOCHS for r in rewarded)
    assert any(r.status == "stopped" and r.reward is None for r in told)


def test_a_run_that_finished_no_trial_is_left_out_of_the_summary():
    from kubenas.bench.harness import RunResult

    def run(best):
        return RunResult(label="random", seed=0, budget=1, queries=1, best_val=best, best_test=best,
                         found_best=False, hits=0, misses=0, seconds=0.0)

    row = summarize([run(80.0), run(float("nan")), run(82.0)], ["random"])[0]
    assert row["test_mean"] == pytest.approx(81.0) and row["runs"] == 3


def test_replay_confines_a_search_to_the_cells_of_a_partial_table(curve_table):
    from kubenas.bench import replay

    table = load_table(curve_table)  # 243 of the 729 cells over three operations
    run = replay(table, Spec("evolution", {"population": 6, "sample": 2}), seed=1, budget=15, workers=2)
    assert run.misses > 0 and run.epochs == 15 * CURVE_EPOCHS


def test_the_nearest_cell_stands_in_for_one_the_table_lacks(curve_table):
    from kubenas.bench import replay

    table = load_table(curve_table)  # the last edge is always nor_conv_3x3
    ops = ["skip_connect", "nor_conv_1x1", "skip_connect", "nor_conv_3x3", "skip_connect", "nor_conv_1x1"]
    lacking = {"space": "nasbench201", "cell": format_cellstr(ops), "hparams": {}}
    assert table.lookup(lacking) is None
    assert table.nearest(lacking).cellstr == format_cellstr(ops[:5] + ["nor_conv_3x3"])  # one edge away
    kept = {"space": "nasbench201", "cell": format_cellstr(ops[:5] + ["nor_conv_3x3"]), "hparams": {}}
    assert table.nearest(kept) is table.lookup(kept)

    spec = Spec("evolution", {"population": 6, "sample": 2})
    confined = replay(table, spec, seed=1, budget=15, workers=2)
    run = replay(table, spec, seed=1, budget=15, workers=2, missing="nearest")
    assert run.misses == 0 and run.substituted > 0 and confined.substituted == 0
    assert run.epochs == 15 * CURVE_EPOCHS


def _noisy_table(tmp_path, curves: bool) -> str:
    """Two cells whose truth and luck disagree: "lucky" has mean 50 from seeds 0 and 100,
    "steady" mean 60 from seeds 60 and 60. With one-seed rewards a search that sees lucky's
    100 picks it, and is scored by its mean, 50."""
    lucky = format_cellstr(["nor_conv_3x3"] * 6)
    steady = format_cellstr(["skip_connect"] * 6)
    header = "cellstr,val_acc,test_acc" + (",val_acc_e1,val_acc_e2,test_acc_e1,test_acc_e2" if curves else "")
    rows = [(lucky, 50, 49) + ((40, 50, 39, 49) if curves else ()) + (0, 100),
            (steady, 60, 59) + ((55, 60, 54, 59) if curves else ()) + (60, 60)]
    return write_table(tmp_path / "noisy.csv", rows, header + ",val_acc_s0,val_acc_s1")


@pytest.mark.parametrize("curves", [False, True])
def test_one_seed_rewards_are_a_seed_s_accuracy_and_the_pick_is_scored_by_the_mean(tmp_path, curves):
    from kubenas.bench import replay

    table = load_table(_noisy_table(tmp_path, curves))
    run = replay if curves else simulate
    budget = 2 if curves else 64  # simulate counts the cells the table lacks as (failed) queries
    runs = [run(table, Spec("random"), seed=s, budget=budget, workers=1, reward="one-seed") for s in range(12)]
    picks = {(r.best_val, r.best_test) for r in runs if r.best_val == r.best_val}  # not NaN: saw a cell
    # Some runs saw lucky's 100 (picked, scored 50), others its 0 (steady picked, scored 60).
    assert picks == {(50.0, 49.0), (60.0, 59.0)}
    if curves:  # the replay's budget reaches both cells: the mean reward always picks the better one
        runs = [replay(table, Spec("random"), seed=s, budget=budget, workers=1) for s in range(4)]
        assert {(r.best_val, r.best_test) for r in runs} == {(60.0, 59.0)}


def test_one_seed_rewards_leave_the_hypervolume_scored_by_the_truth(tmp_path):
    from kubenas.objectives import Objectives

    path = tmp_path / "noisy-costs.csv"
    # All three on the true front; the middle one's seeds are 0 and 100 (mean 50).
    write_table(path, [(format_cellstr(["skip_connect"] * 6), 60, 59, 10, 60, 60),
                       (format_cellstr(["nor_conv_3x3"] * 6), 50, 49, 7, 0, 100),
                       (format_cellstr(["skip_connect"] * 3 + ["nor_conv_3x3"] * 3), 40, 39, 5, 40, 40)],
                "cellstr,val_acc,test_acc,parameters,val_acc_s0,val_acc_s1")
    table = load_table(path)
    objectives = Objectives.parse("validationAccuracy:max,parameters:min")
    runs = [simulate(table, Spec("random"), seed=seed, budget=64, workers=1, objectives=objectives,
                     reward="one-seed") for seed in range(8)]
    # A lucky seed's 100 is no point beyond the true front: at most all of it.
    assert max(run.hypervolume for run in runs) == pytest.approx(1.0)


def test_one_seed_rewards_need_the_seed_columns_and_full_trainings(tmp_path, curve_table):
    with pytest.raises(KubenasError, match="val_acc_s0.*only the mean"):
        run_benchmark(curve_table, [Spec("random")], [0], 4, 1, processes=1, reward="one-seed")
    noisy = _noisy_table(tmp_path, curves=True)
    with pytest.raises(KubenasError, match="random\\+asha.*keeps each seed's last epoch only"):
        run_benchmark(noisy, [Spec("random+asha")], [0], 4, 1, processes=1, reward="one-seed")
    with pytest.raises(KubenasError, match="reward: 'median' is not accepted"):
        run_benchmark(noisy, [Spec("random")], [0], 4, 1, processes=1, reward="median")


def test_the_cli_refuses_an_unknown_missing_policy(curve_table, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "strategies", "--table", curve_table, "--missing", "closest"])
    assert "--missing" in capsys.readouterr().err


def test_replay_is_reproducible(curve_table):
    from kubenas.bench import replay

    table = load_table(curve_table)
    a = replay(table, Spec("random+hyperband"), seed=5, budget=8, workers=3)
    b = replay(table, Spec("random+hyperband"), seed=5, budget=8, workers=3)
    assert (a.best_val, a.queries, a.full) == (b.best_val, b.queries, b.full)


def test_cli_replays_a_curve_table_at_equal_epochs(curve_table, capsys):
    code = main(["bench", "strategies", "--table", curve_table, "--budget", "6", "--workers", "2", "--seeds", "3",
                 "--strategies", "random,random+asha,random+hyperband", "--param", "random+asha.minEpochs=2",
                 "--processes", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "learning curves of 4 epochs" in out and "24 epochs (6 full trainings' worth)" in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r[1].strip() for r in rows] == ["name", "random", "random+asha", "random+hyperband"]
    assert rows[0][7].strip() == "epochs/run" and all(r[7].strip() == "24" for r in rows[1:])


@pytest.mark.parametrize("argv, message", [
    (["--strategies", "random+asha"], "random\\+asha needs a learning-curve table"),
    (["--strategies", "random+sometimes"], "early stopping after '\\+' must be one of asha, hyperband, median"),
    (["--strategies", "bohb+asha"], "bohb schedules its own epochs; run it without '\\+asha'"),
])
def test_cli_early_stopping_errors_are_one_line(small_table, capsys, argv, message):
    import re

    code = main(["bench", "strategies", "--table", small_table, "--seeds", "1"] + argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


# --- the generator of learning curves --------------------------------------------------------------

TINY_TASK = dict(train_images=120, val_images=60, test_images=60, eval_copies=2, rotation=10, scale=0.1,
                 shift=0.5, noise=0.1)


def test_the_task_splits_distinct_digits_and_is_deterministic():
    from kubenas.bench.curves import CurveTask, make_task

    a, b = make_task(CurveTask(**TINY_TASK)), make_task(CurveTask(**TINY_TASK))
    assert a.train_x.shape == (120, 1, 8, 8) and a.val_x.shape == (120, 1, 8, 8) and a.test_x.shape == (120, 1, 8, 8)
    assert torch_equal(a.val_x, b.val_x) and torch_equal(a.train_y, b.train_y)
    assert not torch_equal(a.val_x[:60], a.val_x[60:])  # two distortions of each validation digit
    with pytest.raises(ValueError, match="3000 images asked for; digits has 1797"):
        make_task(CurveTask(train_images=1000, val_images=1000, test_images=1000))


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))


def test_generate_writes_a_curve_table_and_resumes(tmp_path):
    from kubenas.bench import curves

    task = curves.CurveTask(**TINY_TASK)
    cfg = curves.CurveConfig(channels=4, epochs=2, batch_size=32)
    path = tmp_path / "curves.csv"
    assert curves.generate(path, 2, task, cfg, [0, 1], log=lambda _: None) == 2
    assert curves.generate(path, 3, task, cfg, [0, 1], log=lambda _: None) == 1  # only the missing cell
    rows = list(curves.iter_rows(path))
    assert [r["cellstr"] for r in rows] == curves.all_cells(0)[:3]
    for r in rows:
        assert float(r["val_acc"]) == pytest.approx((float(r["val_acc_s0"]) + float(r["val_acc_s1"])) / 2, abs=0.011)
        assert 0 <= float(r["test_acc_e1"]) <= 100 and int(r["parameters"]) > 0
    table = load_table(path)
    assert table.epochs == 2 and len(table) == 3
    curves.setting_path(path).unlink()  # a table without its setting: its columns still guard it
    with pytest.raises(ValueError, match="not those of 3 epochs and 2 seeds"):
        curves.generate(path, 4, task, curves.CurveConfig(channels=4, epochs=3), [0, 1], log=lambda _: None)


def test_shards_started_at_different_times_never_train_the_same_cell(tmp_path):
    """Shard 1 starting after shard 0 wrote a row once took every other cell of a shorter
    missing list, shifted by one, and trained shard 0's cells again (duplicate rows)."""
    from kubenas.bench import curves

    task = curves.CurveTask(**TINY_TASK)
    cfg = curves.CurveConfig(channels=4, epochs=1, batch_size=32)
    path = tmp_path / "curves.csv"
    trained: list[str] = []
    log = lambda line: trained.append(line.split()[1]) if "/" in line.split()[0] else None  # noqa: E731
    assert curves.generate(path, 1, task, cfg, [0], log=log, shard=(0, 2)) == 1  # cell 0
    assert curves.generate(path, 6, task, cfg, [0], log=log, shard=(1, 2)) == 3  # cells 1, 3, 5
    assert curves.generate(path, 6, task, cfg, [0], log=log, shard=(0, 2)) == 2  # cells 2, 4
    cells = [r["cellstr"] for r in curves.iter_rows(path)]
    assert sorted(cells) == sorted(curves.all_cells(0)[:6]) and len(trained) == 6 == len(set(trained))


def test_a_table_is_resumed_only_with_the_setting_that_began_it(tmp_path):
    from kubenas.bench import curves

    task = curves.CurveTask(**TINY_TASK)
    cfg = curves.CurveConfig(channels=4, epochs=1, batch_size=32)
    path = tmp_path / "curves.csv"
    assert curves.generate(path, 1, task, cfg, [0, 1], log=lambda _: None) == 1
    assert curves.setting_path(path).is_file()
    with pytest.raises(ValueError, match="begun with another setting"):
        curves.generate(path, 2, task, curves.CurveConfig(channels=8, epochs=1, batch_size=32), [0, 1],
                        log=lambda _: None)
    assert len(list(curves.iter_rows(path))) == 1


def test_a_pilot_evaluates_only_the_last_epoch():
    import math

    from kubenas.bench import curves

    data = curves.make_task(curves.CurveTask(**TINY_TASK))
    cell = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
    curve = curves.train_curves(cell, data, curves.CurveConfig(channels=4, epochs=2, batch_size=32), [0, 1],
                                every_epoch=False)
    assert all(math.isnan(v[0]) and 0 < v[1] <= 1 for v in curve.val + curve.test)


def test_the_side_by_side_network_computes_each_seeds_network():
    import torch

    from kubenas.bench.curves import _side_by_side
    from kubenas.nn import ModelConfig, build_model

    cell = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
    models = []
    for seed in (3, 4, 5):
        torch.manual_seed(seed)
        models.append(build_model({"space": "nasbench201", "cell": cell, "hparams": {}},
                                  ModelConfig(channels=4, cells_per_stage=1, num_classes=10, in_channels=1)))
    wide = _side_by_side(models).to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 8, 8)  # seed s reads channel s
    for training in (True, False):
        for m in [wide, *models]:
            m.train(training)
        expected = torch.stack([m(x[:, s:s + 1]) for s, m in enumerate(models)], 1)
        assert torch.allclose(wide(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5)


def test_predicted_agreement_matches_the_measured_one():
    import numpy as np

    from kubenas.bench.curves import predicted_agreement, seed_agreement

    rng = np.random.default_rng(0)
    cells = rng.normal(0, 1.0, size=(400, 1)) + rng.normal(0, 2.0, size=(400, 16))  # seed sd 2, cell sd 1
    predicted = predicted_agreement(cells[:, :4], 8)  # from 4 seeds: what 8 per half give
    assert predicted["seed_sd"] == pytest.approx(2.0, rel=0.1) and predicted["cell_sd"] == pytest.approx(1.0, rel=0.15)
    assert predicted["tau_all"] == pytest.approx(seed_agreement(cells)["tau_all"], abs=0.06)


def test_seed_agreement_is_kendall_tau_of_the_two_halves():
    import numpy as np

    from kubenas.bench.curves import seed_agreement

    quality = np.arange(20, dtype=float)
    agree = seed_agreement(np.stack([quality, quality + 0.1, quality, quality - 0.1], axis=1))
    assert agree["tau_all"] == pytest.approx(1.0) and agree["tau_better_half"] == pytest.approx(1.0)
    flipped = seed_agreement(np.stack([quality, quality, -quality, -quality], axis=1))
    assert flipped["tau_all"] == pytest.approx(-1.0)


def test_all_cells_is_a_seeded_shuffle_of_the_whole_space():
    from kubenas.bench.curves import all_cells

    cells = all_cells(0)
    assert len(cells) == len(set(cells)) == 15625
    assert cells[:5] == all_cells(0)[:5] != all_cells(1)[:5]


def test_seeds_trained_side_by_side_match_one_seed_trained_alone():
    from kubenas.bench import curves

    data = curves.make_task(curves.CurveTask(**TINY_TASK))
    cfg = curves.CurveConfig(channels=4, epochs=2, batch_size=32)
    cell = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
    together = curves.train_curves(cell, data, cfg, [3, 4])
    for i, seed in enumerate((3, 4)):
        val, test, params, madds = curves.train_cell(cell, data, cfg, seed)
        assert (params, madds) == (together.parameters, together.multiply_adds)
        # Same initialisation, data order and augmentation: equal up to float rounding, so
        # at most an image or two of 120 changes its answer.
        assert together.val[i] == pytest.approx(val, abs=0.02)
        assert together.test[i] == pytest.approx(test, abs=0.02)
    assert together.val[0] != together.val[1]


def test_bohb_replays_with_the_tables_epochs(curve_table):
    from kubenas.bench import replay
    from kubenas.strategies import STRATEGIES

    if "bohb" not in STRATEGIES:  # pragma: no cover - BOHB lands with the strategies' own change
        pytest.fail("the bohb strategy is not registered")
    table = load_table(curve_table)
    run = replay(table, Spec("bohb"), seed=0, budget=10, workers=3)
    full = replay(table, Spec("random"), seed=0, budget=10, workers=3)
    assert run.epochs == 10 * CURVE_EPOCHS
    assert run.queries > full.queries and run.full >= 1  # brackets stop most trials early
