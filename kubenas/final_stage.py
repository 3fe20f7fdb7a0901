"""The final stage, pure: from a finished search's best architectures to one trained model.

NASNet's point is transfer: a cell found on a cheap proxy is stacked into a larger
network and trained fully, and the paper trains its best few candidates again before
picking one. So when the search ends and `spec.final` is set:

1. the top-k architectures, distinct by canonical hash (a leaderboard the search state
   keeps as results arrive, so a restart rebuilds it from the log), become final trials
   `final-<hash8>`: ordinary TrialMessages whose training spec is the final recipe
   (`final_training`), handed to the same trainers, checkpointed and resumable like any;
2. a trainer that finishes a final trial tests the network once on the test split and
   exports it with its weights; its result carries the test accuracy and the directory;
3. once every final trial has a result, the winner is the one with the best *validation*
   accuracy (`choose_winner`; the test split never takes part in the choice).

The stage's fate is events in the controller's log, like the search's:

    {"e": "finalStage", "candidates": [...], "created"}   the stage began with these candidates
    {"e": "trial", "final": true, "id", "genotype", "hash", "source", "created"}  a final trial
    {"e": "result", "final": true, "id", ..., "test_accuracy", "export_path"}   its result
    {"e": "finalModel", "model": {...} | null, "error"}                      the stage ended

`FinalStage.apply` takes the stage's own events; `kubenas.search_state` routes them.
No I/O, no torch, no Redis here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from kubenas.spec import ArchitectureSearchSpec, EarlyStoppingSpec, FinalModel, FinalSpec, TrainingSpec, TrialCounts

FINAL_PREFIX = "final-"
# Final recipe fields that replace a searched hyperparameter of the same name in the genotype
# (and learningRate, when spec.final gives one: final_genotype).
FINAL_OVERRIDES = ("epochs", "dropPath")


@dataclass(frozen=True)
class Candidate:
    """One of the search's best architectures."""

    trial_id: str  # the search trial that found it
    genotype_hash: str
    genotype: dict
    reward: float

    def to_json(self) -> dict:
        return {"trial": self.trial_id, "hash": self.genotype_hash, "genotype": self.genotype, "reward": self.reward}

    @classmethod
    def from_json(cls, data: dict) -> "Candidate":
        return cls(data["trial"], data["hash"], data["genotype"], float(data["reward"]))


class Leaderboard:
    """The best `size` architectures by reward, one entry per canonical hash (its best result)."""

    def __init__(self, size: int = 5):
        self.size = size
        self.best: dict[str, Candidate] = {}

    def note(self, trial_id: str, genotype_hash: Optional[str], genotype: Optional[dict], reward: Optional[float]) -> None:
        if genotype_hash is None or genotype is None or reward is None or not math.isfinite(reward) or self.size <= 0:
            return
        held = self.best.get(genotype_hash)
        if held is not None and (held.reward, _later(held.trial_id)) >= (reward, _later(trial_id)):
            return
        self.best[genotype_hash] = Candidate(trial_id, genotype_hash, genotype, float(reward))
        if len(self.best) > self.size:
            worst = min(self.best.values(), key=_rank)
            del self.best[worst.genotype_hash]

    def top(self, k: Optional[int] = None) -> list[Candidate]:
        """Best first; ties: the earlier trial first."""
        ranked = sorted(self.best.values(), key=_rank, reverse=True)
        return ranked[: self.size if k is None else k]


def _later(trial_id: str) -> tuple:
    # Trial ids end in a counter ("t000042"); an earlier one wins a tie.
    return tuple(-ord(c) for c in trial_id)


def _rank(c: Candidate) -> tuple:
    return (c.reward, _later(c.trial_id))


def final_trial_ids(candidates: list[Candidate]) -> list[str]:
    """`final-<hash8>`, longer where two hashes share their first 8 characters."""
    ids = []
    for c in candidates:
        width = 8
        while any(o is not c and o.genotype_hash[:width] == c.genotype_hash[:width] for o in candidates) \
                and width < len(c.genotype_hash):
            width += 4
        ids.append(FINAL_PREFIX + c.genotype_hash[:width][:56])
    return ids


def is_final_trial(trial_id: str) -> bool:
    return trial_id.startswith(FINAL_PREFIX)


def final_size(spec: ArchitectureSearchSpec) -> tuple[int, int]:
    """(N, F) of the final networks: the final section's (else the search's), scaled by phi."""
    final = spec.final or FinalSpec()
    cells = final.cells_per_stage or spec.training.cells_per_stage
    channels = final.channels or spec.training.channels
    if final.phi:
        from kubenas.export import compound_scale  # the export's compound scaling (the same rounding)

        size = compound_scale(cells, channels, final.phi, (3, 32, 32))
        cells, channels = size.cells, size.channels
    return cells, channels


def final_training(spec: ArchitectureSearchSpec) -> TrainingSpec:
    """The final recipe: the search's training settings at the final size, with the final
    epochs, auxiliary head, drop path, learning rate and augmentation (cutout), on the whole
    training split (no trainSubset), without early stopping."""
    final = spec.final or FinalSpec()
    cells, channels = final_size(spec)
    training = spec.training
    dataset = training.dataset.model_copy(update={"train_subset": None})
    update: dict[str, Any] = {
        "dataset": dataset, "epochs": final.epochs, "cells_per_stage": cells, "channels": channels,
        "auxiliary_head": final.auxiliary_head, "drop_path": final.drop_path,
        "early_stopping": EarlyStoppingSpec(),
    }
    if final.learning_rate is not None:
        update["learning_rate"] = final.learning_rate
    if final.augmentation is not None:
        update["augmentation"] = final.augmentation
    return training.model_copy(update=update)


def final_genotype(genotype: dict, final: Optional[FinalSpec] = None) -> dict:
    """The candidate's genotype without the searched hyperparameters the final recipe sets:
    the genotype's hparams are applied on top of the recipe, so one left in would win."""
    overrides = FINAL_OVERRIDES
    if final is not None and final.learning_rate is not None:  # set only when given
        overrides += ("learningRate",)
    hparams = {k: v for k, v in (genotype.get("hparams") or {}).items() if k not in overrides}
    out = dict(genotype)
    if "hparams" in genotype:
        out["hparams"] = hparams
    return out


@dataclass
class FinalResult:
    trial_id: str
    status: str  # succeeded | failed | stopped
    accuracy: Optional[float]
    test_accuracy: Optional[float] = None
    test_images: Optional[int] = None
    export_path: Optional[str] = None
    parameters: Optional[int] = None
    error: Optional[str] = None


@dataclass
class FinalStage:
    """The stage's bookkeeping: its candidates, their final trials' results, the outcome."""

    candidates: dict[str, Candidate] = field(default_factory=dict)  # final trial id -> candidate
    results: dict[str, FinalResult] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    model: Optional[FinalModel] = None
    error: Optional[str] = None
    ended: bool = False

    @classmethod
    def begin(cls, candidates: list[Candidate]) -> "FinalStage":
        return cls(candidates=dict(zip(final_trial_ids(candidates), candidates)))

    @property
    def waiting(self) -> list[str]:
        """Final trials without a result yet."""
        return [t for t in self.candidates if t not in self.results and t not in self.cancelled]

    @property
    def trained(self) -> bool:
        """Every final trial has ended (the winner can be chosen)."""
        return not self.waiting

    def note_result(self, event: dict) -> None:
        cost = event.get("cost") or {}
        params = cost.get("params")
        self.results[event["id"]] = FinalResult(
            trial_id=event["id"], status=event["status"], accuracy=event.get("accuracy"),
            test_accuracy=event.get("test_accuracy"), test_images=event.get("test_images"),
            export_path=event.get("export_path"), parameters=int(params) if params is not None else None,
            error=event.get("error"))

    def note_cancel(self, trial_id: str) -> None:
        if trial_id in self.candidates:
            self.cancelled.add(trial_id)

    def end(self, model: Optional[FinalModel], error: Optional[str]) -> None:
        self.model, self.error, self.ended = model, error, True

    def counts(self, running: int = 0) -> TrialCounts:
        done = list(self.results.values())
        succeeded = sum(1 for r in done if r.status == "succeeded")
        failed = sum(1 for r in done if r.status == "failed")
        stopped = sum(1 for r in done if r.status == "stopped")
        waiting = len(self.waiting)
        return TrialCounts(total=len(self.candidates), pending=max(0, waiting - running), running=min(running, waiting),
                           succeeded=succeeded, failed=failed, stopped=stopped + len(self.cancelled))

    def decide(self) -> tuple[Optional[FinalModel], Optional[str]]:
        """(the winner, None) or (None, why there is none), once every final trial has ended."""
        winner = choose_winner(list(self.results.values()))
        if winner is None:
            errors = [f"{r.trial_id}: {r.error}" for r in self.results.values() if r.error]
            why = "; ".join(errors[:3]) or "no final trial finished training"
            return None, f"none of the {len(self.candidates)} final trials produced an exported model ({why})"
        candidate = self.candidates[winner.trial_id]
        trained = sum(1 for r in self.results.values() if r.status == "succeeded")
        return FinalModel(trial=winner.trial_id, source_trial=candidate.trial_id,
                          genotype_hash=candidate.genotype_hash, path=winner.export_path or "",
                          validation_accuracy=float(winner.accuracy or 0.0), test_accuracy=winner.test_accuracy,
                          test_images=winner.test_images, parameters=winner.parameters, candidates=trained), None


def choose_winner(results: list[FinalResult]) -> Optional[FinalResult]:
    """The best validation accuracy among the final trials that trained and exported;
    ties: fewer parameters, then the smaller id. The test accuracy takes no part."""
    usable = [r for r in results if r.status == "succeeded" and r.accuracy is not None and r.export_path]
    if not usable:
        return None
    return min(usable, key=lambda r: (-r.accuracy, r.parameters if r.parameters is not None else math.inf,
                                      r.trial_id))
