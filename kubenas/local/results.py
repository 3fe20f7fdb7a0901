"""The results directory of a search, written from the controller's trial log.

    trials.jsonl        every trial: genotype, status, reward, curve, cost, timings
    trials.csv          the same, one row per trial (genotype as JSON in a column)
    best_genotype.json  the best trial's genotype (what `kubenas export` reads)
    best.json           the best trial: id, reward, hash, genotype
    summary.json        the controller's summary (counts, best, recent history)
    rewards.png         reward per trial with the running best
    best_cells.png      the best genotype's normal and reduction cells
    pareto.csv, .png    several objective.metrics: every trial's metrics and the Pareto front
    final.json          the final stage (spec.final): its trials and the final model
    final/              the final model, trained (written by the controller: model.safetensors,
                        model.torchscript.pt, model.onnx, model.json)
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, Optional

from kubenas.files import write_atomic
from kubenas.objectives import Objectives

log = logging.getLogger("kubenas.results")

CSV_COLUMNS = ["id", "status", "outcome", "reward", "accuracy", "epochs", "params", "multiply_adds",
               "train_seconds", "trainer", "attempt", "attempts", "resumed_from_epoch", "created", "started", "finished", "hash", "error", "genotype"]


def read_trials(checkpoint_dir: str | Path, final: bool = False) -> list[dict]:
    """Trials from the controller's log (only the part its last checkpoint covers), in id order:
    the search's, or (`final`) the final stage's."""
    checkpoint_dir = Path(checkpoint_dir)
    log_path = checkpoint_dir / "trials.jsonl"
    if not log_path.exists():
        return []
    limit = None
    try:
        limit = int(json.loads((checkpoint_dir / "state.json").read_bytes()).get("log_bytes", 0))
    except (OSError, ValueError):
        pass
    data = log_path.read_bytes()
    if limit is not None:
        data = data[:limit]
    trials: dict[str, dict] = {}
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        kind, trial_id = event.get("e"), event.get("id")
        if kind in ("trial", "result") and bool(event.get("final")) != final:
            continue
        if kind == "trial":
            trials[trial_id] = {"id": trial_id, "status": "unfinished", "genotype": event.get("genotype"),
                                "hash": event.get("hash"), "fidelity": event.get("fidelity"),
                                "created": event.get("created")}
        elif kind in ("result", "cancel") and trial_id in trials:
            record = trials[trial_id]
            if kind == "cancel":
                record.update(status="cancelled", error=f"cancelled: {event.get('reason')}")
                continue
            cost = event.get("cost") or {}
            record.update({k: event.get(k) for k in ("status", "outcome", "reward", "accuracy", "curve", "epochs",
                                                     "error", "trainer", "attempt", "device", "started",
                                                     "finished", "applied", "resumed_from_epoch", "attempts",
                                                     "test_accuracy", "test_images", "export_path")})
            record.update(params=cost.get("params"), multiply_adds=cost.get("multiply_adds"),
                          train_seconds=cost.get("train_seconds"), cost=cost)
    return [trials[k] for k in sorted(trials)]


def count_trials(trials: list[dict]) -> dict[str, int]:
    """Trials by status, as the console prints them: total, succeeded, failed, stopped, unfinished."""
    counts = {"total": len(trials), "succeeded": 0, "failed": 0, "stopped": 0, "cancelled": 0, "unfinished": 0}
    for t in trials:
        status = t.get("status")
        counts[status if status in counts else "unfinished"] += 1
    return counts


def best_trial(trials: list[dict]) -> Optional[dict]:
    done = [t for t in trials if t.get("status") == "succeeded" and t.get("reward") is not None]
    return max(done, key=lambda t: t["reward"]) if done else None  # ties: the earliest trial


def _atomic_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode())


def write_results(output: str | Path, checkpoint_dir: str | Path, summary: Optional[dict] = None,
                  objectives: Optional[Objectives] = None) -> dict[str, Any]:
    """Write the results directory; returns what it holds (paths, best trial, counts). `objectives`:
    the search's (Objectives.from_spec of its manifest); several of them add pareto.csv and .png."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    trials = read_trials(checkpoint_dir)
    files: dict[str, str] = {}

    path = output / "trials.jsonl"
    _atomic_text(path, "".join(json.dumps(t, separators=(",", ":")) + "\n" for t in trials))
    files["trials_jsonl"] = str(path)

    path = output / "trials.csv"
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for t in trials:
        row = dict(t)
        row["genotype"] = json.dumps(t.get("genotype"), separators=(",", ":"))
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    _atomic_text(path, table.getvalue())
    files["trials_csv"] = str(path)

    if summary is not None:
        path = output / "summary.json"
        _atomic_text(path, json.dumps(summary, indent=2) + "\n")
        files["summary"] = str(path)

    best = best_trial(trials)
    if best is not None:
        path = output / "best_genotype.json"
        _atomic_text(path, json.dumps(best["genotype"], indent=2) + "\n")
        files["best_genotype"] = str(path)
        path = output / "best.json"
        _atomic_text(path, json.dumps({k: best.get(k) for k in ("id", "reward", "accuracy", "epochs", "params",
                                                                 "multiply_adds", "hash", "genotype")}, indent=2)
                     + "\n")
        files["best"] = str(path)

    finished = [t for t in trials if t.get("status") in ("succeeded", "failed", "stopped")]
    try:
        from kubenas import viz
    except ImportError as exc:  # matplotlib missing: the tables are still written
        log.warning("no plots: %s", exc)
        viz = None
    if viz is not None and finished:
        try:
            viz.plot_rewards(finished, output / "rewards.png")
            files["rewards_png"] = str(output / "rewards.png")
        except Exception as exc:  # noqa: BLE001 - a plot must not lose the results
            log.warning("rewards.png not drawn: %s", exc)
    if viz is not None and best is not None:
        try:
            viz.draw_cells(best["genotype"], output / "best_cells.png")
            files["best_cells_png"] = str(output / "best_cells.png")
        except Exception as exc:  # noqa: BLE001
            log.warning("best_cells.png not drawn: %s", exc)

    if objectives is not None and objectives.is_multi:  # the front is the result, not one best (even if empty)
        try:
            from kubenas.local.pareto import write_pareto

            files.update(write_pareto(output, trials, objectives))
        except Exception as exc:  # noqa: BLE001 - a plot must not lose the results
            log.warning("pareto.csv/pareto.png not written: %s", exc)

    final_trials = read_trials(checkpoint_dir, final=True)
    final_model = (summary or {}).get("finalModel")
    if final_trials or final_model:
        path = output / "final.json"
        _atomic_text(path, json.dumps({"model": final_model, "error": (summary or {}).get("finalError"),
                                       "trials": final_trials}, indent=2) + "\n")
        files["final_json"] = str(path)
    if final_model and final_model.get("path"):
        files["final_model"] = final_model["path"]

    rewards = [t["reward"] for t in finished if t.get("status") == "succeeded" and t.get("reward") is not None]
    return {"files": files, "trials": len(trials), "finished": len(finished), "counts": count_trials(trials),
            "best": None if best is None else {"id": best["id"], "reward": best["reward"]},
            "final_model": final_model, "final_error": (summary or {}).get("finalError"),
            "worst_reward": min(rewards) if rewards else None}
