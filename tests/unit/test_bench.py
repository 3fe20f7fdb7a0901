"""The strategies benchmark: table loading with clear errors, the asynchronous harness, the CLI."""

from __future__ import annotations

import csv
import itertools
import random

import pytest

from kubenas.bench import Spec, load_table, markdown, run_benchmark, simulate, summarize
from kubenas.cli import main
from kubenas.errors import DatasetError
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
