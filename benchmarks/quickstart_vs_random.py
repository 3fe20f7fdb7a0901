"""Does the quickstart's search beat random sampling at the same number of trials?

    python benchmarks/quickstart_vs_random.py --seeds 5 --json /tmp/quickstart-vs-random.json
    python benchmarks/quickstart_vs_random.py --seeds 1 --max-trials 10 --truth-seeds 2 --json /tmp/smoke.json

Runs examples/quickstart.yaml as a real `kubenas run` (redis, controller, trainers)
twice per seed: with its strategy as written (regularized evolution) and with
`strategy.algorithm: random`. training.seed is the run's seed: it seeds the
controller's sampling and the trainers. Every run has its own: evolution runs
0..S-1, random runs S..2S-1 (with equal seeds evolution's random first population
would be random search's first trials, cell for cell). maxDuration is dropped so that every run
reaches its trial count (--max-trials, default the manifest's maxTrials).

Two measures per run. Where the search trains: the mean reward of the second
half of its trials (in finishing order), once it has learned where good cells are;
each cell is trained once, so this is an unbiased estimate of the mean ground truth
of the cells it trains. What it returns: its best cell (by the run's own best
reward, the luckiest training as much as the best cell), scored by its ground
truth: the mean over the table's 32 seeds of the validation and test accuracy
after the full training, from benchmarks/data/digits-curves.csv when the table
has the cell, else trained here in the table's setting
(kubenas.bench.curves.train_curves; --truth-seeds to use only the first K seeds),
cached in <json>.truth.json so reruns are free. Accuracies are in percent.

For each run the trajectory is kept: after each trial, in finishing order, the
cumulative trainer-seconds (trials.jsonl's train_seconds) and the best cell so
far by observed reward, with the ground truth of every cell that was best so
far at some point (to ask, say, how many trainer-seconds evolution needs to
reach a given test accuracy). A finished run of the same manifest in --workdir
is reused, not run again.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "examples" / "quickstart.yaml"
TABLE = ROOT / "benchmarks" / "data" / "digits-curves.csv"


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# --- pure helpers (tests/unit/test_quickstart_vs_random.py) -----------------------------------

def variant(manifest: dict, strategy: str, seed: int, max_trials: Optional[int] = None) -> dict:
    """The manifest for one run: `strategy` "random" replaces the strategy (its parameters go with
    it), anything else keeps the manifest's; training.seed = seed; no maxDuration."""
    doc = copy.deepcopy(manifest)
    spec = doc["spec"]
    if strategy == "random":
        spec["strategy"] = {"algorithm": "random"}
    elif spec.get("strategy", {}).get("algorithm") != strategy:
        raise ValueError(f"strategy {strategy!r}: the manifest's is {spec.get('strategy', {}).get('algorithm')!r}")
    spec.setdefault("training", {})["seed"] = seed
    budget = spec.setdefault("budget", {})
    budget.pop("maxDuration", None)
    if max_trials is not None:
        budget["maxTrials"] = max_trials
    return doc


def finishing_order(trials: list[dict]) -> list[dict]:
    """The trials that finished (any status), in the order they finished."""
    done = [t for t in trials if t.get("finished") is not None]
    return sorted(done, key=lambda t: (t["finished"], t["id"]))


def trajectory(trials: list[dict]) -> list[dict]:
    """After each finished trial: its count, the cumulative trainer-seconds, and the best cell
    so far by observed reward (the earliest finished of equals stays best)."""
    steps, seconds, best = [], 0.0, None
    for n, t in enumerate(finishing_order(trials), start=1):
        seconds += float(t.get("train_seconds") or 0.0)
        ok = t.get("status") == "succeeded" and t.get("reward") is not None
        if ok and (best is None or t["reward"] > best["reward"]):
            best = t
        steps.append({"trials": n, "trainer_seconds": round(seconds, 3),
                      "best_cell": best["genotype"]["cell"] if best else None,
                      "best_reward": best["reward"] if best else None})
    return steps


def later_mean_reward(trials: list[dict]) -> Optional[float]:
    """The mean reward of the succeeded trials among the second half of the finished ones."""
    done = finishing_order(trials)
    later = [t["reward"] for t in done[len(done) // 2:] if t.get("status") == "succeeded"
             and t.get("reward") is not None]
    return statistics.fmean(later) if later else None


def run_record(strategy: str, seed: int, trials: list[dict], truth) -> dict:
    """One run's numbers: its best cell and that cell's ground truth, the later trials' mean
    reward, trainer-seconds, and the trajectory with the truth of every cell once best."""
    from kubenas.local.results import best_trial

    best = best_trial(trials)
    if best is None:
        raise RuntimeError(f"{strategy} seed {seed}: no trial succeeded")
    steps = trajectory(trials)
    cells = dict.fromkeys(s["best_cell"] for s in steps if s["best_cell"])
    return {"strategy": strategy, "seed": seed, "trials": len(steps),
            "best_cell": best["genotype"]["cell"], "best_reward": best["reward"],
            "truth": truth(best["genotype"]["cell"]), "later_mean_reward": later_mean_reward(trials),
            "trainer_seconds": steps[-1]["trainer_seconds"], "trajectory": steps,
            "truth_of_best_so_far": {c: truth(c) for c in cells}}


def read_table(path: Path) -> dict[str, dict]:
    """cellstr -> {"val_acc", "test_acc"} (percent, mean over the table's seeds). Rows that
    are still being written (a running `generate`) are left out."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                out[row["cellstr"]] = {"val_acc": float(row["val_acc"]), "test_acc": float(row["test_acc"])}
            except (TypeError, ValueError, KeyError):
                continue
    return out


def mean_sd(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict]) -> list[dict]:
    """One row per strategy: runs, the later trials' mean reward, observed best reward, the picked
    cell's ground truth, trainer-seconds."""
    rows = []
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        mine = [r for r in runs if r["strategy"] == strategy]
        row = {"strategy": strategy, "runs": len(mine)}
        for key, values in (("later_mean_reward", [r.get("later_mean_reward") for r in mine]),
                            ("best_reward", [r["best_reward"] for r in mine]),
                            ("val_acc", [r["truth"]["val_acc"] for r in mine]),
                            ("test_acc", [r["truth"]["test_acc"] for r in mine]),
                            ("trainer_seconds", [r["trainer_seconds"] for r in mine])):
            row[f"{key}_mean"], row[f"{key}_sd"] = mean_sd([v for v in values if v is not None])
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    def pm(row: dict, key: str, scale: float = 1.0, digits: int = 2) -> str:
        m, s = row[f"{key}_mean"], row[f"{key}_sd"]
        return "-" if m is None else f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"

    lines = [f"{'strategy':<10} {'runs':>4}  {'later trials %':>15}  {'best reward %':>15}  {'truth val_acc %':>15}  "
             f"{'truth test_acc %':>16}  {'trainer-s':>9}"]
    for r in rows:
        seconds = "-" if r["trainer_seconds_mean"] is None else f"{r['trainer_seconds_mean']:.0f}"
        lines.append(f"{r['strategy']:<10} {r['runs']:>4}  {pm(r, 'later_mean_reward', 100):>15}  "
                     f"{pm(r, 'best_reward', 100):>15}  {pm(r, 'val_acc'):>15}  {pm(r, 'test_acc'):>16}  {seconds:>9}")
    return "\n".join(lines)


# --- runs and ground truth ----------------------------------------------------------------------

def run_search(manifest: dict, output: Path, trainers: Optional[int]) -> list[dict]:
    """One `kubenas run` into `output`; its trials.jsonl. A finished run of the same manifest there
    is reused, an unfinished one resumed (kubenas run resumes where it stopped)."""
    text = yaml.safe_dump(manifest, sort_keys=False)
    path, trials_path = output / "manifest.yaml", output / "trials.jsonl"
    if path.is_file() and path.read_text() != text:
        raise RuntimeError(f"{output} holds a run of another manifest; remove it or choose another --workdir")
    summary = output / "summary.json"
    if path.is_file() and summary.is_file() and json.loads(summary.read_text()).get("finished") is True:
        log(f"{output}: finished before, reused")
        return [json.loads(line) for line in trials_path.read_text().splitlines() if line.strip()]
    output.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    command = [sys.executable, "-m", "kubenas.cli", "run", str(path), "--output", str(output), "--no-progress"]
    if trainers:
        command += ["--trainers", str(trainers)]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (output / "run.log").write_text(done.stdout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}; its output is in {output / 'run.log'}:\n"
                           + done.stdout[-2000:])
    log(f"{output}: {time.perf_counter() - began:.0f} s")
    return [json.loads(line) for line in trials_path.read_text().splitlines() if line.strip()]


class Truth:
    """Ground truth of cells: the table's row, else trained here with the table's setting over
    `seeds` (cached in a JSON file keyed by the setting)."""

    def __init__(self, table: Path, cache: Path, truth_seeds: Optional[int], device: str = "cpu"):
        from kubenas.bench import curves

        self.curves = curves
        self.table = read_table(table)
        setting = json.loads(curves.setting_path(table).read_text())
        self.task = curves.CurveTask(**setting["task"])
        self.cfg = curves.CurveConfig(**setting["training"])
        self.seeds = setting["seeds"][:truth_seeds] if truth_seeds else setting["seeds"]
        self.key = json.dumps(curves.settings(self.task, self.cfg, self.seeds), sort_keys=True)
        self.cache_path = cache
        self.cache = json.loads(cache.read_text()) if cache.is_file() else {}
        self.device = device
        self.data = None

    def __call__(self, cell: str) -> dict:
        if cell in self.table:
            return {**self.table[cell], "source": "table"}
        cached = self.cache.get(self.key, {}).get(cell)
        if cached is not None:
            return cached
        if self.data is None:
            self.data = self.curves.make_task(self.task).to(self.device)
        began = time.perf_counter()
        curve = self.curves.train_curves(cell, self.data, self.cfg, list(self.seeds), every_epoch=False)
        truth = {"val_acc": round(100 * statistics.fmean(v[-1] for v in curve.val), 2),
                 "test_acc": round(100 * statistics.fmean(v[-1] for v in curve.test), 2),
                 "source": f"trained here ({len(self.seeds)} seeds)"}
        log(f"ground truth of {cell}: val {truth['val_acc']} test {truth['test_acc']} "
            f"({time.perf_counter() - began:.0f} s)")
        self.cache.setdefault(self.key, {})[cell] = truth
        tmp = self.cache_path.with_name(self.cache_path.name + ".tmp")
        tmp.write_text(json.dumps(self.cache, indent=1) + "\n")
        tmp.replace(self.cache_path)
        return truth


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="S: runs per strategy")
    parser.add_argument("--max-trials", type=int, default=None, help="default: the manifest's maxTrials")
    parser.add_argument("--trainers", type=int, default=None, help="default: the manifest's parallelism")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--truth-seeds", type=int, default=None,
                        help="train missing cells' ground truth with only the table's first K seeds (a smoke test)")
    parser.add_argument("--device", default="cpu", help="where missing ground truth trains (cpu, cuda)")
    parser.add_argument("--workdir", type=Path, default=None, help="the runs' output directories "
                                                                   "(default: beside --json)")
    parser.add_argument("--json", type=Path, required=True, help="write everything here")
    args = parser.parse_args(argv)

    manifest = yaml.safe_load(args.manifest.read_text())
    workdir = args.workdir or args.json.with_name(args.json.stem + "-runs")
    truth = Truth(args.table, args.json.with_name(args.json.stem + ".truth.json"), args.truth_seeds, args.device)
    runs = []
    for i in range(args.seeds):
        for k, strategy in enumerate((manifest["spec"]["strategy"]["algorithm"], "random")):
            seed = i + k * args.seeds
            doc = variant(manifest, strategy, seed, args.max_trials)
            log(f"{strategy} seed {seed}: {doc['spec']['budget'].get('maxTrials')} trials")
            trials = run_search(doc, workdir / f"{strategy}-seed{seed}", args.trainers)
            runs.append(run_record(strategy, seed, trials, truth))
    rows = summarise(runs)
    print(format_table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"manifest": str(args.manifest), "max_trials": args.max_trials,
                                     "table": str(args.table), "truth_seeds": len(truth.seeds),
                                     "summary": rows, "runs": runs}, indent=1) + "\n")
    log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
