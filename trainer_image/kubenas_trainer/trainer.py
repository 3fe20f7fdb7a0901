"""The trainer loop: claim a trial, train it, report progress and the result.

Long-lived and pull-based: one process trains trial after trial. While a
trial trains, a heartbeat thread keeps its lease alive and watches for a
lost lease (another trainer took the trial over: abandon it) and for stop
signals. Training itself runs in the main thread; the `interrupt` event makes
`train_proxy` raise TrialInterrupted between batches, which is how SIGTERM
hands a trial back at once (costing only the partial epoch).

Outcomes:
  succeeded / diverged (NaN: reward 0, the architecture's fault) / stopped
      -> a result, counted once by the controller;
  an invalid genotype, or a final trial on a trainer without an artifact store
      -> failed at once (retrying cannot help);
  any other exception (OOM, CUDA errors, I/O) -> the error is recorded and the
      trial handed back for another attempt; past max_attempts it is
      dead-lettered as failed with that last error.

Checkpoints (with an artifact store, `--artifacts`): after every epoch, and every
`checkpoint_seconds` within one, the trial's whole training state is saved to the
store every trainer of the search mounts. A trial handed back or taken over
continues there on whichever trainer claims it, so a fault costs at most the
work since the last save; an unusable checkpoint is logged, counted, removed and
the trial trains from scratch. A trial naming a parent (`warm_start`) starts
from the parent's latest checkpoint: "inherit" copies what fits into the child's
network, "resume" loads all of the parent's weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import redis
from redis.exceptions import ResponseError

from kubenas import metrics
from kubenas.errors import InvalidGenotype
from kubenas.queue.connection import RETRYABLE, Outage, is_transient
from kubenas.queue.keys import SearchKeys
from kubenas.queue.messages import ControlMessage, ProgressMessage, ResultMessage, TrialMessage, clip_error
from kubenas.queue.trainer_side import Claim, RejectedEntry, TrainerQueue

log = logging.getLogger("kubenas.trainer")


class CannotTrain(Exception):
    """A trial this trainer can never complete, whatever the attempt: failed at once, like an
    invalid genotype, instead of retried until dead-lettered."""


@dataclass
class TrainerOptions:
    consumer: str
    lease_seconds: float = 30.0
    heartbeat_seconds: Optional[float] = None  # default: a third of the lease
    block_ms: int = 1000
    device: str = "auto"
    threads: Optional[int] = None
    max_trials: Optional[int] = None  # exit after this many trials (tests, one-shot pods)
    exit_when_done: bool = False  # exit once the search's summary says finished
    artifacts: Optional[str] = None  # the search's artifact store (trial checkpoints); None: no checkpoints
    checkpoint_seconds: float = 300.0  # at most this long between checkpoints within an epoch


@dataclass
class TrialOutcome:
    """What training one trial produced."""

    status: str  # succeeded, diverged, stopped
    reward: float
    curve: list[float]
    cost: dict[str, float]
    epochs: int
    device: str
    reason: Optional[str] = None
    resumed_from_epoch: Optional[int] = None
    attempts: int = 1
    test_accuracy: Optional[float] = None  # a final trial's, on the test split
    test_images: Optional[int] = None
    export_path: Optional[str] = None  # a final trial's exported model


class Trainer:
    def __init__(self, client: redis.Redis, keys: SearchKeys, options: TrainerOptions):
        self.keys = keys
        self.search = keys.search
        self.options = options
        self.consumer = options.consumer
        self.queue = TrainerQueue(client, keys, options.consumer, lease_seconds=options.lease_seconds)
        self.terminating = threading.Event()
        self.closed = threading.Event()
        self.current: Optional[Claim] = None
        self.interrupt = threading.Event()  # replaced per trial
        self.lost = threading.Event()
        self.stop_control: Optional[ControlMessage] = None
        self.trials_done = 0
        self.last_beat = time.monotonic()
        self._dataset_key: Optional[str] = None
        self._dataset: Any = None
        self._torch_ready = False
        self._outage = Outage(log, on_error=metrics.REDIS_ERRORS.labels(self.search, "trainer").inc)
        self._summary_at = 0.0
        self.store: Any = None
        if options.artifacts:
            from kubenas.training.checkpoints import TrialCheckpointStore

            self.store = TrialCheckpointStore(options.artifacts)
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name=f"heartbeat-{self.consumer}",
                                           daemon=True)

    # --- control from outside -----------------------------------------------------------
    def terminate(self) -> None:
        """SIGTERM: hand the current trial back at the next batch and exit."""
        self.terminating.set()
        self.interrupt.set()

    def healthy(self) -> tuple[bool, str]:
        alive = self._heartbeat.is_alive() or not self._heartbeat.ident
        busy = f"training {self.current.trial.trial_id}" if self.current else "idle"
        return alive, f"{'ok' if alive else 'heartbeat thread died'}: {busy}; {self.trials_done} trials done"

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        self._heartbeat.start()
        try:
            while not self.terminating.is_set():
                if self.options.max_trials is not None and self.trials_done >= self.options.max_trials:
                    break
                try:
                    if self._search_finished():
                        log.info("the search has finished; exiting")
                        break
                    waited = time.monotonic()
                    got = self.queue.claim(self.options.block_ms)
                    metrics.IDLE_SECONDS.labels(self.search).inc(time.monotonic() - waited)
                    self._outage.ok()
                except RETRYABLE as exc:
                    self._outage.failed(exc, self.terminating)
                    continue
                except ResponseError as exc:
                    if is_transient(exc):
                        self._outage.failed(exc, self.terminating)
                    elif str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                        # Started before the controller, Redis lost its data, or a fresh controller
                        # cleared an earlier search's keys: (re)create the groups and go on.
                        self._ensure_groups()
                    else:
                        log.error("unexpected reply from Redis: %s; retrying", exc)
                        self.terminating.wait(1.0)
                    continue
                if got is None:
                    continue
                if isinstance(got, RejectedEntry):
                    metrics.MESSAGES_REJECTED.labels(self.search, got.stream).inc()
                    metrics.TRAINER_TRIALS.labels(self.search, "rejected").inc()
                    log.warning("rejected entry %s in %s: %s", got.entry_id, got.stream, got.reason)
                    continue
                began = time.monotonic()
                try:
                    self._work(got)
                finally:
                    metrics.BUSY_SECONDS.labels(self.search).inc(time.monotonic() - began)
        finally:
            self.closed.set()
        return 0

    def _ensure_groups(self) -> None:
        try:
            self.queue.ensure_groups()
        except RETRYABLE as exc:
            self._outage.failed(exc, self.terminating)

    def _search_finished(self) -> bool:
        if not self.options.exit_when_done:
            return False
        now = time.monotonic()
        if now - self._summary_at < 2.0:
            return False
        self._summary_at = now
        summary = self.queue.read_summary()
        return bool(summary and summary.get("finished"))

    # --- one trial ----------------------------------------------------------------------
    def _work(self, claim: Claim) -> None:
        trial = claim.trial
        if self.terminating.is_set():
            self._hand_back(claim)
            return
        if claim.reclaimed:
            metrics.TRIALS_RECLAIMED.labels(self.search).inc()
        if claim.attempt > trial.max_attempts:
            self._dead_letter(claim)
            return
        control = self._progress(claim, 0, None)  # "started", and the trial's control if any
        if control is not None and control.action == "stop" and control.epoch is None:
            log.info("trial %s was cancelled (%s); skipping it", trial.trial_id, control.reason)
            self._safe(lambda: self.queue.acknowledge(claim))
            metrics.TRAINER_TRIALS.labels(self.search, "skipped").inc()
            return
        self.interrupt = threading.Event()
        if self.terminating.is_set():
            self.interrupt.set()
        self.lost.clear()
        self.stop_control = None
        self.current = claim
        started = time.time()
        log.info("started trial %s attempt %d%s", trial.trial_id, claim.attempt,
                 " (taken over)" if claim.reclaimed else "")
        try:
            outcome = self._train(claim)
        except Exception as exc:  # noqa: BLE001 - sorted below
            self.current = None
            self._failed(claim, exc)
            return
        finally:
            self.current = None
        result = ResultMessage(
            search=self.search, trial_id=trial.trial_id, trainer=self.consumer, attempt=claim.attempt,
            status=outcome.status, reward=outcome.reward, curve=outcome.curve[-1000:], cost=outcome.cost,
            epochs=outcome.epochs, error=clip_error(outcome.reason) if outcome.reason else None,
            started=started, finished=time.time(), device=outcome.device,
            resumed_from_epoch=outcome.resumed_from_epoch, attempts=max(claim.attempt, outcome.attempts),
            test_accuracy=outcome.test_accuracy, test_images=outcome.test_images, export_path=outcome.export_path)
        if self._post(claim, result):
            self.trials_done += 1
            metrics.TRAINER_TRIALS.labels(self.search, outcome.status).inc()
            resumed = "" if outcome.resumed_from_epoch is None else f" (resumed from epoch {outcome.resumed_from_epoch})"
            log.info("finished trial %s: %s reward %.4f after %d epochs%s", trial.trial_id, outcome.status,
                     outcome.reward, outcome.epochs, resumed)

    def _failed(self, claim: Claim, exc: Exception) -> None:
        trial = claim.trial
        interrupted = type(exc).__name__ == "TrialInterrupted"
        if interrupted and self.lost.is_set():
            metrics.TRAINER_TRIALS.labels(self.search, "lost").inc()
            log.warning("trial %s: lease lost (another trainer has it, or it was applied); abandoned", trial.trial_id)
        elif interrupted and self.terminating.is_set():
            self._hand_back(claim)
        elif isinstance(exc, (InvalidGenotype, CannotTrain)):
            error = f"invalid genotype: {exc}" if isinstance(exc, InvalidGenotype) else str(exc)
            result = ResultMessage(search=self.search, trial_id=trial.trial_id, trainer=self.consumer,
                                   attempt=claim.attempt, status="failed", error=clip_error(error),
                                   finished=time.time())
            if self._post(claim, result):
                self.trials_done += 1
                metrics.TRAINER_TRIALS.labels(self.search, "failed").inc()
            log.error("trial %s failed: %s", trial.trial_id, error)
        else:
            error = clip_error(f"{type(exc).__name__}: {exc} (on {self.consumer}, attempt {claim.attempt}; "
                               f"{_where(exc)})")
            log.error("trial %s attempt %d failed: %s", trial.trial_id, claim.attempt, error)
            self._free_memory()
            if self._safe(lambda: self.queue.retry_later(claim, error)):
                metrics.TRAINER_TRIALS.labels(self.search, "retried").inc()

    def _hand_back(self, claim: Claim) -> None:
        if self._safe(lambda: self.queue.hand_back(claim)):
            metrics.TRAINER_TRIALS.labels(self.search, "handed_back").inc()
            log.info("handed trial %s back (terminating)", claim.trial.trial_id)

    def _dead_letter(self, claim: Claim) -> None:
        trial = claim.trial
        last = self._safe(lambda: self.queue.last_error(trial.trial_id)) or \
            f"lease expired: its trainer stopped heartbeating for {self.options.lease_seconds:g}s (killed, OOM, lost)"
        error = clip_error(f"failed {claim.attempt - 1} attempts (max_attempts={trial.max_attempts}); last error: {last}")
        result = ResultMessage(search=self.search, trial_id=trial.trial_id, trainer=self.consumer,
                               attempt=claim.attempt, status="failed", error=error, finished=time.time())
        if self._safe(lambda: self.queue.dead_letter(claim, result)):
            metrics.TRAINER_TRIALS.labels(self.search, "dead_lettered").inc()
            log.error("trial %s dead-lettered: %s", trial.trial_id, error)

    def _post(self, claim: Claim, result: ResultMessage) -> bool:
        """Post the result, retrying through Redis outages (a finished trial is worth keeping);
        when terminating, give up after a few seconds: the trial will be trained again."""
        deadline = None
        while True:
            try:
                owned = self.queue.complete(claim, result)
                self._outage.ok()
                if not owned:
                    log.warning("trial %s: another trainer took it over meanwhile; result posted, its entry left "
                                "to the new owner", claim.trial.trial_id)
                return True
            except (RETRYABLE + (ResponseError,)) as exc:
                if isinstance(exc, ResponseError) and not is_transient(exc):
                    if "NOGROUP" not in str(exc):
                        log.error("could not post the result of %s: %s", claim.trial.trial_id, exc)
                        return False
                    self._ensure_groups()  # Redis lost its data: posting again is harmless (idempotent)
                    continue
                if self.terminating.is_set():
                    deadline = deadline or time.monotonic() + 5.0
                    if time.monotonic() > deadline:
                        log.error("could not post the result of %s before exiting", claim.trial.trial_id)
                        return False
                self._outage.failed(exc, None)

    def _safe(self, call: Callable[[], Any]) -> Any:
        """One Redis call that may fail without harm: the protocol recovers through the
        lease (progress, controls and hand-backs are not retried)."""
        try:
            value = call()
        except RETRYABLE as exc:
            self._outage.noticed(exc)
            return None
        self._outage.ok()
        return value

    # --- progress, stop signals, early-stopping decisions --------------------------------
    def _progress(self, claim: Claim, epoch: int, report: Any) -> Optional[ControlMessage]:
        message = ProgressMessage(
            search=self.search, trial_id=claim.trial.trial_id, trainer=self.consumer, attempt=claim.attempt,
            epoch=epoch, time=time.time(),
            val_acc=None if report is None else _fraction(report.val_acc),
            train_acc=None if report is None else _fraction(report.train_acc),
            train_loss=None if report is None else _finite(report.train_loss),
            seconds=0.0 if report is None else max(0.0, report.seconds),
            images_per_second=0.0 if report is None else max(0.0, report.images_per_second))
        return self._safe(lambda: self.queue.report_progress(message))

    def _on_epoch(self, claim: Claim, report: Any) -> bool:
        """After each epoch: report it; False stops the trial (stop signal or scheduler)."""
        trial = claim.trial
        metrics.EPOCH_SECONDS.labels(self.search).observe(report.seconds)
        if report.images_per_second:
            metrics.IMAGES_PER_SECOND.labels(self.search).set(report.images_per_second)
        control = self._progress(claim, report.epoch, report)
        if self._stops(control, report.epoch) or self.stop_control is not None:
            return False
        if trial.scheduled and report.epoch < trial.epochs:
            deadline = time.monotonic() + trial.decision_timeout
            while not self.interrupt.is_set():
                if control is not None and (control.epoch is None or control.epoch >= report.epoch):
                    return not self._stops(control, report.epoch)
                if time.monotonic() > deadline:
                    log.warning("trial %s: no early-stopping decision for epoch %d within %gs; going on",
                                trial.trial_id, report.epoch, trial.decision_timeout)
                    break
                self.interrupt.wait(0.02)
                control = self._safe(lambda: self.queue.control(trial.trial_id))
        return True

    @staticmethod
    def _stops(control: Optional[ControlMessage], epoch: int) -> bool:
        if control is None or control.action != "stop":
            return False
        return control.epoch is None or control.epoch >= epoch

    def _heartbeat_loop(self) -> None:
        interval = self.options.heartbeat_seconds or self.options.lease_seconds / 3
        while not self.closed.wait(interval):
            claim = self.current
            if claim is None:
                continue
            try:
                owned, control = self.queue.heartbeat(claim)
            except RETRYABLE as exc:
                log.debug("heartbeat failed: %s", exc)
                continue
            except Exception:  # noqa: BLE001 - the thread must live on
                log.exception("heartbeat failed")
                continue
            self.last_beat = time.monotonic()
            if claim is not self.current:
                continue
            if not owned:
                self.lost.set()
                self.interrupt.set()
            elif control is not None and control.action == "stop" and control.epoch is None:
                self.stop_control = control

    # --- the work itself ----------------------------------------------------------------
    def _train(self, claim: Claim) -> TrialOutcome:
        """Train the trial's network on its dataset (tests replace just this: tests/support/fake_trainer.py)."""
        import torch

        from kubenas.spaces import space_of
        from kubenas.training import TrainConfig, load_dataset_spec, train_proxy
        from kubenas.training.checkpoints import CheckpointInvalid

        if not self._torch_ready:
            if self.options.threads:
                torch.set_num_threads(self.options.threads)
            self._torch_ready = True
        trial = claim.trial
        if trial.final and self.store is None:  # checked before training: it would only fail at the export
            raise CannotTrain(f"final trial {trial.trial_id}: this trainer has no artifact store to export the "
                              "trained model to (trainer --artifacts; in a cluster spec.artifacts.enabled: true)")
        t = trial.training
        space = space_of(trial.genotype)
        genotype = space.validate_architecture(trial.genotype)
        augmentation = t.augmentation.model_dump(mode="json") if t.augmentation is not None else None
        key = json.dumps([t.dataset.model_dump(mode="json"), t.seed, augmentation], sort_keys=True)
        if key != self._dataset_key:
            self._dataset = None
            self._dataset = load_dataset_spec(t.dataset, t.seed, t.augmentation)
            self._dataset_key = key
        cfg = TrainConfig(epochs=trial.epochs, batch_size=t.batch_size, learning_rate=t.learning_rate,
                          momentum=t.momentum, weight_decay=t.weight_decay, drop_path=t.drop_path, seed=t.seed,
                          device=self.options.device, channels=t.channels, cells_per_stage=t.cells_per_stage,
                          auxiliary=t.auxiliary_head, skeleton=t.skeleton, schedule_epochs=trial.schedule_epochs,
                          schedule_start=trial.schedule_start)
        genotype_hash = space.hash(genotype)
        start = self._own_checkpoint(claim, genotype_hash)
        attempts = max(claim.attempt, int(start.progress.get("attempts", 0)) + 1 if start is not None else 1)
        checkpoints: dict[str, Any] = {}
        if self.store is not None:
            checkpoints = dict(on_checkpoint=lambda state: self._save(claim, genotype, genotype_hash, attempts, state),
                               checkpoint_seconds=self.options.checkpoint_seconds,
                               prepare_model=self._warm_start(claim))
        trained: dict[str, Any] = {}  # a final trial's last state: its trained weights, to export
        if trial.final:
            checkpoints = self._keep_last_state(checkpoints, trained)
        try:
            outcome = train_proxy(genotype, self._dataset, cfg, on_epoch=lambda r: self._on_epoch(claim, r),
                                  interrupt=self.interrupt, start=start, **checkpoints)
        except CheckpointInvalid as exc:  # found only once the network is built: the shapes, the settings
            self._discard(claim, exc)
            start = None
            outcome = train_proxy(genotype, self._dataset, cfg, on_epoch=lambda r: self._on_epoch(claim, r),
                                  interrupt=self.interrupt, **checkpoints)
        if start is not None:
            metrics.TRIALS_RESUMED.labels(self.search).inc()
        cost = {"params": float(outcome.parameters), "multiply_adds": float(outcome.multiply_adds),
                "train_seconds": float(outcome.seconds)}
        if trial.measure_latency:
            cost["latency_seconds"] = self._latency(genotype, cfg)
        result = TrialOutcome(outcome.status, float(outcome.reward), [r.val_acc for r in outcome.curve], cost,
                              len(outcome.curve), outcome.device, outcome.reason,
                              resumed_from_epoch=None if start is None else start.epoch, attempts=attempts)
        if trial.final and outcome.status == "succeeded":
            weights = trained.get("state").model if "state" in trained else (start.model if start else None)
            if weights is None:
                raise RuntimeError(f"final trial {trial.trial_id}: no trained weights to export")
            self._test_and_export(trial, genotype, genotype_hash, cfg, weights, result)
        return result

    # --- a final trial: test once, export with the weights ----------------------------------
    @staticmethod
    def _keep_last_state(checkpoints: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
        """Also keep the latest training state in memory: after the last epoch, its weights are the model."""
        save = checkpoints.get("on_checkpoint")

        def keep(state: Any) -> None:
            if not state.step:  # an end-of-epoch state (a mid-epoch one is superseded anyway)
                trained["state"] = state
            if save is not None:
                save(state)

        return {**checkpoints, "on_checkpoint": keep}

    def _test_and_export(self, trial: TrialMessage, genotype: dict, genotype_hash: str, cfg: Any,
                         weights: dict, result: TrialOutcome) -> None:
        """Measure the test accuracy once and export the trained network (safetensors, TorchScript,
        ONNX, model.json) to ARTIFACTS/final/TRIAL, where the controller picks the winner up."""
        from kubenas import export
        from kubenas.nn import ModelConfig, build_model

        data = self._dataset
        t = trial.training
        cfg = cfg.with_hparams(genotype.get("hparams", {}))
        model_cfg = ModelConfig(channels=cfg.channels, cells_per_stage=cfg.cells_per_stage,
                                num_classes=data.num_classes, in_channels=data.input_shape[0],
                                auxiliary=cfg.auxiliary, drop_path=cfg.drop_path, skeleton=t.skeleton)
        model = build_model(genotype, model_cfg)
        export.load_weights(model, weights, f"trial {trial.trial_id}'s checkpoint")
        model.eval()
        mean, std = _channel_list(getattr(data, "mean", None)), _channel_list(getattr(data, "std", None))
        names = getattr(data, "classes", None)
        value_range = None if t.dataset.name == "npz" else (0.0, 1.0)  # npz: images as stored
        # The test split, once: raw images through the model with its normalisation inside, as a user runs it.
        result.test_accuracy, result.test_images = self._test_accuracy(trial, model, mean, std)
        if self.lost.is_set():  # the trial's new owner exports it: two exports would replace each other
            from kubenas.training import TrialInterrupted

            raise TrialInterrupted(f"final trial {trial.trial_id}: lease lost before the export")
        out = Path(self.store.root) / "final" / trial.trial_id
        staging = out.with_name(f".{out.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)  # a pid repeats across container restarts: no stale files
        size = export.compound_scale(cfg.cells_per_stage, cfg.channels, 0.0, tuple(data.input_shape))
        extra = {"final": {"trial": trial.trial_id, "search": self.search, "validation_accuracy": result.reward,
                           "test_accuracy": result.test_accuracy, "test_images": result.test_images,
                           "epochs": result.epochs, "genotype_hash": genotype_hash, "dataset": data.name,
                           "training": t.model_dump(mode="json", by_alias=True)}}
        try:
            export.export(genotype, staging, "both", size, num_classes=data.num_classes, seed=cfg.seed,
                          source=f"final trial {trial.trial_id} of {self.search}", weights=weights,
                          weights_source=f"trial {trial.trial_id}'s checkpoint", model_config=model_cfg,
                          mean=mean, std=std, class_names=list(names) if names else None,
                          value_range=value_range, extra=extra)
        except Exception as exc:  # noqa: BLE001 - ONNX can fail where TorchScript worked: keep what was written
            if not (staging / export.WEIGHTS_FILE).exists():
                raise
            log.warning("final trial %s: export incomplete: %s", trial.trial_id, exc)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)
        result.export_path = str(out)
        log.info("final trial %s: test accuracy %s on %s images; exported to %s", trial.trial_id,
                 result.test_accuracy, result.test_images, out)

    def _test_accuracy(self, trial: TrialMessage, model: Any, mean: Optional[list[float]],
                       std: Optional[list[float]]) -> tuple[Optional[float], Optional[int]]:
        """(accuracy, images) of the trained network on the dataset's held-out test split; (None, None)
        for a dataset without one, or whose test images cannot all be read (said in the log): the
        trained model is kept and exported either way, since training it again cannot mend the data."""
        import torch

        from kubenas import export
        from kubenas.errors import DatasetError
        from kubenas.training.datasets import load_test_split

        graph = export.Normalised(model, mean, std).eval() if mean and std else model.eval()
        correct = seen = 0
        try:
            test = load_test_split(trial.training.dataset)
            loader = torch.utils.data.DataLoader(test.dataset, batch_size=256, shuffle=False, num_workers=0)
            with torch.no_grad():
                for images, labels in loader:
                    correct += int((graph(images).argmax(1) == labels).sum())
                    seen += len(labels)
        except DatasetError as exc:
            log.warning("final trial %s: no test accuracy: %s", trial.trial_id, exc)
            return None, None
        return (correct / seen if seen else None), seen

    # --- trial checkpoints --------------------------------------------------------------
    def _own_checkpoint(self, claim: Claim, genotype_hash: str) -> Any:
        """The trial's latest checkpoint to continue from, or None (none yet, or unusable)."""
        from kubenas.training.checkpoints import CheckpointInvalid

        if self.store is None:
            return None
        trial_id = claim.trial.trial_id
        try:
            start = self.store.latest(trial_id, genotype_hash)
        except CheckpointInvalid as exc:
            self._discard(claim, exc)
            return None
        except OSError as exc:  # the volume itself: unreadable, not mounted
            metrics.TRIAL_CHECKPOINTS_INVALID.labels(self.search, "missing").inc()
            log.warning("trial %s: cannot read checkpoints in %s (%s); training it from scratch", trial_id,
                        self.store.root, exc)
            return None
        if start is None:
            if claim.reclaimed or claim.attempt > 1:
                log.info("trial %s: no checkpoint yet; training it from scratch", trial_id)
            return None
        where = f"epoch {start.epoch}" + (f", step {start.step}" if start.step else "")
        log.info("resuming trial %s from its checkpoint after %s (attempt %d)", trial_id, where, claim.attempt)
        return start

    def _discard(self, claim: Claim, exc: Any) -> None:
        """An unusable checkpoint: logged, counted and removed; the trial trains from scratch."""
        metrics.TRIAL_CHECKPOINTS_INVALID.labels(self.search, exc.reason).inc()
        log.warning("trial %s: checkpoint unusable (%s: %s); training it from scratch", claim.trial.trial_id,
                    exc.reason, exc)
        try:
            self.store.delete(claim.trial.trial_id)
        except OSError as err:
            log.warning("trial %s: could not remove the unusable checkpoint: %s", claim.trial.trial_id, err)

    def _save(self, claim: Claim, genotype: dict, genotype_hash: str, attempts: int, state: Any) -> None:
        """Save one checkpoint; a failure (full or unwritable volume) is logged and training goes on."""
        if self.lost.is_set():
            return  # another trainer owns the trial now: its checkpoints are its own
        state.progress["attempts"] = attempts
        began = time.perf_counter()
        try:
            self.store.save(claim.trial.trial_id, state.epoch,
                            replace(state, genotype_hash=genotype_hash, genotype=genotype))
        except OSError as exc:
            metrics.TRIAL_CHECKPOINT_ERRORS.labels(self.search).inc()
            log.warning("trial %s: could not save its checkpoint after epoch %d: %s", claim.trial.trial_id,
                        state.epoch, exc)
            return
        metrics.TRIAL_CHECKPOINT_SAVE_SECONDS.labels(self.search).observe(time.perf_counter() - began)
        try:
            metrics.TRIAL_CHECKPOINT_BYTES.labels(self.search).set(self.store.bytes_used())
        except OSError:
            pass

    def _warm_start(self, claim: Claim) -> Optional[Callable[[Any], None]]:
        """For a trial naming a parent: set the fresh network's weights from the parent's checkpoint."""
        trial = claim.trial
        if trial.warm_start is None or trial.parent_trial_id is None:
            return None

        def prepare(model: Any) -> None:
            from kubenas.training.checkpoints import CheckpointInvalid, check_model_fits

            try:
                parent = self.store.latest(trial.parent_trial_id, required=True)
                if trial.warm_start == "resume":
                    check_model_fits(parent, model)
                    model.load_state_dict(parent.model, strict=True)
                    log.info("trial %s: starts from all weights of %s (epoch %d)", trial.trial_id,
                             trial.parent_trial_id, parent.epoch)
                else:
                    from kubenas.nn.inherit import inherit_weights

                    counts = inherit_weights(model, trial.genotype, parent.model, parent.genotype)
                    log.info("trial %s: inherited from %s (epoch %d): %s", trial.trial_id, trial.parent_trial_id,
                             parent.epoch, counts)
            except (CheckpointInvalid, ValueError, KeyError, RuntimeError) as exc:
                reason = exc.reason if isinstance(exc, CheckpointInvalid) else "shape"
                metrics.TRIAL_CHECKPOINTS_INVALID.labels(self.search, reason).inc()
                log.warning("trial %s: cannot start from parent %s (%s: %s); starting fresh", trial.trial_id,
                            trial.parent_trial_id, reason, exc)
                _reinitialise(model)

        return prepare

    def _latency(self, genotype: dict, cfg: Any) -> float:
        """Median seconds of one single-image forward pass on this trainer's device."""
        import torch

        from kubenas.nn import ModelConfig, build_model
        from kubenas.training.proxy import resolve_device

        data = self._dataset
        device = resolve_device(cfg.device)
        model = build_model(genotype, ModelConfig(channels=cfg.channels, cells_per_stage=cfg.cells_per_stage,
                                                  num_classes=data.num_classes, in_channels=data.input_shape[0],
                                                  skeleton=cfg.skeleton))
        model = model.to(device).eval()
        x = data.example().to(device)
        times = []
        with torch.no_grad():
            for i in range(12):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                began = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= 2:
                    times.append(time.perf_counter() - began)
        return sorted(times)[len(times) // 2]

    def _free_memory(self) -> None:
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def _reinitialise(model: Any) -> None:
    """Fresh weights again after a warm start failed part-way (never a half-copied model)."""
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _channel_list(value: Any) -> Optional[list[float]]:
    """Per-channel statistics (a tensor of any shape, or a sequence) as a flat list of floats."""
    if value is None:
        return None
    try:
        import torch

        return [float(v) for v in torch.as_tensor(value, dtype=torch.float32).flatten()]
    except (TypeError, ValueError, RuntimeError):
        return None


def _fraction(value: Any) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return min(1.0, max(0.0, value)) if value == value else None


def _finite(value: Any) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "no traceback"
    last = frames[-1]
    return f"at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"
