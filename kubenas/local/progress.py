"""The live progress bar of `kubenas run`: done, failed, running, best reward, ETA.

A rich progress bar on a terminal; elsewhere (CI, pipes) a plain line now and
then. Fed with the controller's summary (the same JSON the operator reads).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressView:
    def __init__(self, name: str, total: int, console: Any = None, live: Optional[bool] = None):
        self.name = name
        self.total = total
        self.console = console
        self.live = live if live is not None else (console is not None and console.is_terminal)
        self.started = time.monotonic()
        self.done_at_start: Optional[int] = None
        self.last_line = 0.0
        self.last_done = -1
        self.progress = None
        self.task = None

    def __enter__(self) -> "ProgressView":
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                console=self.console, transient=False, refresh_per_second=4)
            self.progress.start()
            self.task = self.progress.add_task(self.name, total=self.total, counts="starting", eta="--:--")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def set_total(self, total: int) -> None:
        """budget.maxTrials changed while the search runs (kubenas scale, the live spec)."""
        if total != self.total:
            self.total = total
            if self.progress is not None:
                self.progress.update(self.task, total=total)

    def eta(self, done: int) -> Optional[float]:
        if self.done_at_start is None:
            return None
        elapsed = time.monotonic() - self.started
        rate = (done - self.done_at_start) / elapsed if elapsed > 0 else 0.0
        if rate <= 0:
            return None
        return max(0.0, (self.total - done) / rate)

    @staticmethod
    def counts(summary: dict) -> tuple[int, str]:
        t = summary.get("trials", {})
        done = t.get("succeeded", 0) + t.get("failed", 0) + t.get("stopped", 0)
        best = summary.get("bestReward")
        text = (f"failed {t.get('failed', 0)}  running {t.get('running', 0)}  "
                f"best {'-' if best is None else f'{best:.4f}'}")
        if summary.get("paretoFrontSize") is not None:  # several objectives: the front, not one best
            hv = summary.get("hypervolume")
            text += f"  front {summary['paretoFrontSize']}  hypervolume {'-' if hv is None else f'{hv:.4f}'}"
        if summary.get("stage") in ("supernet", "deriving"):  # one-shot: the workers train the supernet first
            text += "  supernet training" if summary["stage"] == "supernet" else "  deriving cells from the supernet"
            net = summary.get("supernet") or {}
            if net.get("epoch"):
                text += f" epoch {net['epoch']}/{net.get('epochs') or '?'}"
                for key, label in (("validationAccuracy", "val_acc"), ("architectureEntropy", "entropy")):
                    if net.get(key) is not None:
                        text += f" {label} {net[key]:.3f}"
        final = summary.get("finalTrials")
        if summary.get("stage") == "finalTraining" and final:  # the final stage trains the best again
            ended = final.get("succeeded", 0) + final.get("failed", 0) + final.get("stopped", 0)
            text += f"  final stage {ended}/{final.get('total', 0)}"
        return done, text

    def update(self, summary: dict) -> None:
        done, text = self.counts(summary)
        if self.done_at_start is None:
            self.done_at_start = done
            self.started = time.monotonic()
        if summary.get("finished"):
            text += f"  ({summary.get('finishReason')})"
        eta = 0.0 if summary.get("finished") else self.eta(done)
        if self.progress is not None:
            self.progress.update(self.task, completed=done, counts=text, eta=format_seconds(eta))
            return
        now = time.monotonic()
        # the final stage's progress and the supernet's epochs too
        key = (done, json.dumps(summary.get("finalTrials"), sort_keys=True), (summary.get("supernet") or {}).get("epoch"))
        if key != self.last_done and (now - self.last_line > 5 or summary.get("finished")):
            self.last_line, self.last_done = now, key
            line = f"{self.name}: {done}/{self.total} done  {text}  ETA {format_seconds(eta)}"
            if self.console is not None:
                self.console.print(line, markup=False, highlight=False)
            else:
                print(line, file=sys.stdout, flush=True)
