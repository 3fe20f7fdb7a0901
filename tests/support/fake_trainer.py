"""A trainer that does no training: the real Trainer's protocol (claim, heartbeat,
progress, early-stopping decisions, hand-backs, results) with a made-up reward,
for tests and benchmarks of the queue and the controller. No torch.

In a process (tests and benchmarks start it by path):

    python tests/support/fake_trainer.py --fake-work SECONDS [--fake-fail IDS] <trainer flags>

In a thread: `FakeTrainer(client, keys, TrainerOptions(...), work_seconds=..., fail=(...))`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import redis

from kubenas.queue.keys import SearchKeys
from kubenas_trainer.main import build_parser, run
from kubenas_trainer.trainer import Claim, Trainer, TrainerOptions, TrialOutcome

PATH = Path(__file__).resolve()


def command(python: str = sys.executable) -> list[str]:
    """The start of a command line that runs a fake trainer in its own process."""
    return [python, str(PATH)]


def run_environment(work_seconds: float) -> dict[str, str]:
    """What `kubenas run` needs in its environment to start fake trainers instead of real ones."""
    return {"KUBENAS_TRAINER_COMMAND": shlex.join([*command(), "--fake-work", str(work_seconds)])}


class TrialInterrupted(Exception):
    """Twin of kubenas.training.TrialInterrupted (which imports torch); the trainer matches it by name."""


@dataclass
class _Report:
    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float
    seconds: float
    images_per_second: float


def fake_reward(genotype: dict) -> float:
    """A reward that depends only on the genotype, in [0.1, 0.9]."""
    digest = hashlib.sha256(json.dumps(genotype, sort_keys=True).encode()).digest()
    return 0.1 + 0.8 * int.from_bytes(digest[:4], "big") / 2 ** 32


class FakeTrainer(Trainer):
    """Spends `work_seconds` per trial (spread over its epochs) instead of training;
    trial ids in `fail` raise an error, as a crashing training run would."""

    def __init__(self, client: redis.Redis, keys: SearchKeys, options: TrainerOptions, work_seconds: float = 0.0,
                 fail: Sequence[str] = ()):
        super().__init__(client, keys, options)
        self.work_seconds = work_seconds
        self.fail = tuple(fail)

    def _train(self, claim: Claim) -> TrialOutcome:
        trial = claim.trial
        if trial.trial_id in self.fail:
            raise RuntimeError(f"injected failure of {trial.trial_id}")
        reward = fake_reward(trial.genotype)
        per_epoch = self.work_seconds / trial.epochs
        curve: list[float] = []
        for epoch in range(1, trial.epochs + 1):
            if per_epoch > 0:
                end = time.monotonic() + per_epoch
                while time.monotonic() < end:
                    if self.interrupt.wait(min(0.05, max(0.0, end - time.monotonic()))):
                        break
            if self.interrupt.is_set():
                raise TrialInterrupted(f"interrupted in epoch {epoch}")
            value = reward * (epoch / trial.epochs) ** 0.5
            curve.append(value)
            report = _Report(epoch, 1.0 - value, value, value, per_epoch, 0.0)
            if not self._on_epoch(claim, report) and epoch < trial.epochs:
                return TrialOutcome("stopped", value, curve, {}, epoch, "fake", f"stopped after epoch {epoch}")
        return TrialOutcome("succeeded", curve[-1] if curve else reward, curve, {}, trial.epochs, "fake")


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser(prog="fake_trainer.py")
    parser.add_argument("--fake-work", type=float, default=0.0, metavar="SECONDS",
                        help="seconds per trial instead of training")
    parser.add_argument("--fake-fail", default="", metavar="IDS", help="comma-separated trial ids that raise an error")
    args = parser.parse_args(argv)
    fail = tuple(t for t in args.fake_fail.split(",") if t)
    return run(args, lambda client, keys, options: FakeTrainer(client, keys, options, args.fake_work, fail))


if __name__ == "__main__":
    sys.exit(main())
