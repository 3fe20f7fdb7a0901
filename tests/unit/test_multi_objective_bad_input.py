"""Bad input for the multi-objective surface, as a user would type it: `kubenas latency-table`,
a latency table handed to `kubenas run`, `kubenas bench strategies --objectives` and
`objective.metrics`. Each case runs the real command in its own process and must exit
non-zero at once with one line naming the field, never a traceback; a refused `kubenas run`
must not have started anything nor written its results directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from kubenas.nn.latency_table import NetworkSize, make_table, space_units

KUBENAS = [sys.executable, "-m", "kubenas.cli"]
LIMIT_S = 120  # a loaded CI machine imports torch slowly; a hang is what this catches
LATENCY = ["latency-table", "--device", "cpu", "--space", "nasbench201", "--resolution", "8", "--channels", "4",
           "--cells-per-stage", "1", "--repeats", "1", "--calibrate", "0"]
SEARCH = {
    "apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch", "metadata": {"name": "mo-audit"},
    "spec": {
        "searchSpace": {"type": "nasbench201"},
        "strategy": {"algorithm": "nsga2"},
        "objective": {"metrics": [{"name": "validationAccuracy", "goal": "maximize"},
                                  {"name": "latency", "goal": "minimize"}],
                      "latency": {"table": "TABLE"}},
        "budget": {"maxTrials": 2, "parallelism": 1, "maxDuration": "1m"},
        "training": {"dataset": {"name": "digits"}, "epochs": 1, "cellsPerStage": 1, "channels": 4},
    },
}
FIVE_METRICS = [{"name": n, "goal": g} for n, g in (
    ("validationAccuracy", "maximize"), ("parameters", "minimize"), ("multiplyAdds", "minimize"),
    ("latency", "minimize"), ("trainingSeconds", "minimize"))]
SMALL = NetworkSize(space="nasbench201", resolution=8, in_channels=1, channels=4, cells_per_stage=1)


def table_json(size: NetworkSize, drop: int = 0) -> str:
    """A well-formed table for `size`, less its first `drop` entries."""
    keys = space_units(size)[drop:]
    return json.dumps(make_table(size, "cpu", "2.0", {k: 1e-5 for k in keys}, repeats=1))


# (id, argv after `kubenas` with {F} for the files' directory, {OUT} for a results directory;
#  the text the message must hold)
CASES = [
    ("latency-space", [*LATENCY, "--space", "vit"], "--space"),
    ("latency-resolution-zero", [*LATENCY, "--resolution", "0"], "--resolution: 0 is not accepted"),
    ("latency-resolution-small", [*LATENCY, "--resolution", "2"], "--resolution: 2 pixels is too small"),
    ("latency-batch-zero", [*LATENCY, "--batch", "0"], "--batch: 0 is not accepted"),
    ("latency-output-no-dir", [*LATENCY, "--output", "{F}/missing/t.json"], "does not exist"),
    ("latency-output-a-dir", [*LATENCY, "--output", "{F}"], "is a directory"),
    ("latency-output-unwritable", [*LATENCY, "--output", "/proc/kubenas-t.json"], "is not writable"),
    ("run-table-not-json", ["run", "{F}/not-json.yaml", "--output", "{OUT}"], "objective.latency.table"),
    ("run-table-other-space", ["run", "{F}/other-space.yaml", "--output", "{OUT}"], "for the darts space"),
    ("run-table-missing-entries", ["run", "{F}/missing-entries.yaml", "--output", "{OUT}"], "has no entry for"),
    ("run-five-metrics", ["run", "{F}/five.yaml", "--output", "{OUT}"], "objective.metrics: List should have at most 4"),
    ("run-cost-alone", ["run", "{F}/cost-alone.yaml", "--output", "{OUT}"],
     "objective.metrics: validationAccuracy must be one of the metrics"),
    ("run-table-other-blocks", ["run", "{F}/other-blocks.yaml", "--output", "{OUT}"],
     "the table is for 4 blocks per cell; the search's searchSpace.blocks is 7"),
    ("bench-unknown-metric", ["bench", "strategies", "--table", "{F}/t.csv", "--objectives", "validationAccuracy:max,size:min"],
     "--objectives: unknown metric 'size'"),
    ("bench-accuracy-minimized", ["bench", "strategies", "--table", "{F}/t.csv", "--objectives", "validationAccuracy:min"],
     "--objectives: validationAccuracy can only be maximized"),
    ("bench-goal-word", ["bench", "strategies", "--table", "{F}/t.csv", "--objectives", "parameters:smallest"],
     "--objectives: 'parameters:smallest' is not NAME:max or NAME:min"),
    ("bench-cost-alone", ["bench", "strategies", "--table", "{F}/t.csv", "--objectives", "parameters:min"],
     "--objectives: validationAccuracy must be one of the metrics"),
    ("bench-unknown-metric-no-goal", ["bench", "strategies", "--table", "{F}/t.csv", "--objectives", "flops"],
     "--objectives: unknown metric 'flops'"),
    ("bench-empty", ["bench", "strategies", "--table", "{F}/t.csv", "--objectives", ""], "--objectives"),
]


def write_files(files: Path) -> None:
    darts = table_json(NetworkSize(space="darts", resolution=8))  # darts' default blocks per cell: 4
    tables = {"not-json": "latency, but as prose\n", "other-space": darts,
              "missing-entries": table_json(SMALL, drop=1), "other-blocks": darts}
    for name, text in tables.items():
        (files / f"{name}.json").write_text(text)
        search = json.loads(json.dumps(SEARCH))
        search["spec"]["objective"]["latency"]["table"] = str(files / f"{name}.json")
        if name == "other-blocks":
            search["spec"]["searchSpace"] = {"type": "darts", "blocks": 7}
        (files / f"{name}.yaml").write_text(yaml.safe_dump(search))
    cost_alone = json.loads(json.dumps(SEARCH))
    cost_alone["spec"]["objective"] = {"metrics": [{"name": "parameters", "goal": "minimize"}]}
    cost_alone["spec"]["strategy"] = {"algorithm": "tpe"}
    (files / "cost-alone.yaml").write_text(yaml.safe_dump(cost_alone))
    five = json.loads(json.dumps(SEARCH))
    five["spec"]["objective"] = {"metrics": FIVE_METRICS}
    (files / "five.yaml").write_text(yaml.safe_dump(five))
    (files / "t.csv").write_text(
        "index,cellstr,val_acc,test_acc,parameters\n"
        "0,|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|,50.0,51.0,100\n"
        "1,|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|,60.0,61.0,200\n")


def run_case(argv: list[str]) -> tuple[object, str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run(KUBENAS + argv, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                              timeout=LIMIT_S, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        return "timeout", (exc.stdout or b"").decode(errors="replace"), (exc.stderr or b"").decode(errors="replace")
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case, a few at a time (the run cases import torch, the others refuse while parsing)."""
    work = tmp_path_factory.mktemp("mo-bad-input")
    files = work / "files"
    files.mkdir()
    write_files(files)

    def execute(case):
        case_id, template, _ = case
        out = work / "results" / case_id
        argv = [a.replace("{F}", str(files)).replace("{OUT}", str(out)) for a in template]
        return case_id, (*run_case(argv), out)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(execute, CASES))


@pytest.mark.parametrize("case_id, expected", [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_naming_the_field(case_id, expected, outcomes):
    rc, stdout, stderr, out = outcomes[case_id]
    assert rc != "timeout", f"{case_id}: still running after {LIMIT_S} s:\n{stderr[-2000:]}"
    assert rc != 0, f"{case_id}: accepted:\n{stdout[-1000:]}{stderr[-1000:]}"
    assert "Traceback" not in stdout + stderr, f"{case_id}: a traceback:\n{stderr[-3000:]}"
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("usage:")
             and not line.startswith(" ")]  # argparse prints its usage (and continuation lines) first
    assert len(lines) == 1, f"{case_id}: expected one line, got:\n{stderr[-2000:]}"
    assert expected in lines[0], f"{case_id}: the message does not say {expected!r}:\n{lines[0]}"
    assert not out.exists(), f"{case_id}: the refused run wrote {out} (it started before checking)"
