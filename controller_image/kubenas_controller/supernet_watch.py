"""The controller's view of a one-shot search's supernet, read from the artifact store.

The worker group (`python -m kubenas.oneshot`) checkpoints the supernet every epoch to
ARTIFACTS/supernet/epoch-<e>.json (+ .safetensors) and, at the end, rank 0 writes
ARTIFACTS/supernet/derived.json. The controller polls for both (the workers and the
controller share nothing but that volume): the epochs tell the summary's stage (supernet,
then deriving once the last epoch is checkpointed), derived.json is handed to the strategy
once its fingerprint says it was made for this search's spec (an artifact store reused with a
changed spec may hold another supernet's).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("kubenas.controller")

SUPERNET_DIR = "supernet"
DERIVED_FILE = "derived.json"
_EPOCH = re.compile(r"^epoch-([0-9]+)\.json$")


class SupernetWatch:
    def __init__(self, artifacts: str | Path, poll_seconds: float = 1.0, search: Optional[str] = None,
                 spec: Any = None):
        self.dir = Path(artifacts) / SUPERNET_DIR
        self.search = search  # the metrics' label; None: no metrics
        # The search's ArchitectureSearchSpec: derived.json of another spec is not taken. None: not checked.
        self.fingerprint: Optional[str] = None
        if spec is not None:
            from kubenas.oneshot import supernet_fingerprint

            self.fingerprint = supernet_fingerprint(spec)
        self.last: dict[str, Any] = {}  # the last epoch's numbers (train_loss, val_loss, arch_entropy, ...)
        self.poll_seconds = poll_seconds
        self.epoch = 0  # the latest checkpointed epoch
        self.epochs: Optional[int] = None  # the supernet's epochs, when its checkpoint says
        self._due = 0.0
        self._unreadable: Optional[str] = None  # the last complaint logged (said once, not every poll)

    @property
    def stage(self) -> str:
        return "deriving" if self.epochs is not None and self.epoch >= self.epochs else "supernet"

    def poll(self, now: Optional[float] = None) -> Optional[Any]:
        """derived.json's content once it is there and readable; None until then (at most one
        look at the directory per poll_seconds)."""
        now = time.monotonic() if now is None else now
        if now < self._due:
            return None
        self._due = now + self.poll_seconds
        try:
            text = (self.dir / DERIVED_FILE).read_text()
        except FileNotFoundError:
            self._progress()
            return None
        except OSError as exc:  # an unreachable volume: keep waiting, say so once
            self._complain(f"cannot read {self.dir / DERIVED_FILE}: {exc.strerror or exc}; retrying")
            return None
        try:
            payload = json.loads(text)
        except ValueError as exc:  # written without a rename, and not complete yet
            self._complain(f"{self.dir / DERIVED_FILE} is not JSON yet ({exc}); retrying")
            return None
        made_for = payload.get("fingerprint") if isinstance(payload, dict) else None
        if self.fingerprint is not None and made_for != self.fingerprint:
            # Another spec's supernet: this search's workers train their own (or refuse the store).
            self._complain(f"{self.dir / DERIVED_FILE} was made for another spec (fingerprint {made_for}, this "
                           f"search's {self.fingerprint}); waiting for this search's supernet")
            return None
        return payload

    def _progress(self) -> None:
        try:
            epochs = [int(m.group(1)) for p in self.dir.iterdir() if (m := _EPOCH.match(p.name))]
        except OSError:
            return  # no checkpoint yet
        if not epochs or max(epochs) == self.epoch:
            return
        self.epoch = max(epochs)
        try:
            meta = json.loads((self.dir / f"epoch-{self.epoch}.json").read_text())
            # The worker writes the trial-checkpoint format: the total under progress.epochs.
            progress = meta.get("progress") if isinstance(meta, dict) else None
            total = progress.get("epochs") if isinstance(progress, dict) else None
            self.epochs = int(total) if isinstance(total, int) else self.epochs
            curve = progress.get("curve") if isinstance(progress, dict) else None
            if isinstance(curve, list) and curve and isinstance(curve[-1], dict):
                self.last = curve[-1]
        except (OSError, ValueError):
            pass
        self._export()
        log.info("supernet: epoch %d%s checkpointed", self.epoch, f" of {self.epochs}" if self.epochs else "")

    def progress(self) -> Optional[dict[str, Any]]:
        """The summary's `supernet` field (SupernetProgress), None before the first epoch."""
        if self.epoch == 0:
            return None

        def number(key: str) -> Optional[float]:
            value = self.last.get(key)
            return float(value) if isinstance(value, (int, float)) and value == value else None
        return {"epoch": self.epoch, "epochs": self.epochs, "trainLoss": number("train_loss"),
                "validationLoss": number("val_loss"), "validationAccuracy": number("val_acc"),
                "architectureEntropy": number("arch_entropy")}

    def _export(self) -> None:
        """The last epoch on the controller's /metrics (kubenas_supernet_*)."""
        if self.search is None:
            return
        from kubenas import metrics

        metrics.SUPERNET_EPOCH.labels(self.search).set(self.epoch)
        if self.epochs is not None:
            metrics.SUPERNET_EPOCHS.labels(self.search).set(self.epochs)
        for split, prefix in (("train", "train"), ("validation", "val")):
            for gauge, key in ((metrics.SUPERNET_LOSS, f"{prefix}_loss"), (metrics.SUPERNET_ACCURACY, f"{prefix}_acc")):
                if isinstance(self.last.get(key), (int, float)):
                    gauge.labels(self.search, split).set(self.last[key])
        if isinstance(self.last.get("arch_entropy"), (int, float)):
            metrics.SUPERNET_ARCH_ENTROPY.labels(self.search).set(self.last["arch_entropy"])

    def _complain(self, text: str) -> None:
        if text != self._unreadable:
            log.warning("supernet: %s", text)
            self._unreadable = text
