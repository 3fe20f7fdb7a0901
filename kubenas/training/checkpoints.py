"""Trial checkpoints: a trial's training state after an epoch, so that a trial
handed back or re-delivered resumes where it stopped, and a child can inherit
its parent's weights.

Layout, under the search's artifact store (a directory every trainer mounts):

    trials/<trial_id>/epoch-<e>.safetensors   tensors: model, optimizer buffers, RNG states
    trials/<trial_id>/epoch-<e>.json          everything else, and the tensors file's size and sha256

(`epoch-<e>-step-<s>` for a checkpoint taken `s` steps into epoch e+1.)
Each file is written under a temporary name, fsynced and renamed; the JSON goes
last and names the exact bytes of its tensors file, so a half-written or
mixed-up checkpoint is never taken for a good one. No pickle: safetensors and
JSON only, and `torch.load` is never used.

Everything read back is checked (`CheckpointInvalid` with a short `reason`:
missing, truncated, corrupt, mismatch, shape); the trainer then trains the
trial from scratch, never a wrong model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

from kubenas.files import write_atomic

if TYPE_CHECKING:  # torch is imported where tensors are made: the controller prunes without it
    import torch

log = logging.getLogger("kubenas.checkpoints")

FORMAT = "kubenas-trial-checkpoint/1"
TRIAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")  # as kubenas.queue.messages.TRIAL_ID_PATTERN
NAME = re.compile(r"^epoch-(\d{1,4})(?:-step-(\d{1,9}))?\.json$")
MAX_METADATA_BYTES = 16 * 1024 * 1024
REASONS = ("missing", "truncated", "corrupt", "mismatch", "shape")


class CheckpointInvalid(Exception):
    """A checkpoint that cannot be used; `reason` is one of REASONS (a metric label)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class TrialCheckpoint:
    """A trial's state after `epoch` epochs (and `step` steps into the next one)."""

    trial_id: str
    epoch: int
    model: dict[str, torch.Tensor]
    genotype_hash: str
    train_config: dict[str, Any]
    optimizer: dict[str, Any] = field(default_factory=dict)  # JSON: param groups, non-tensor state
    optimizer_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # "<param index>/<key>"
    scheduler: dict[str, Any] = field(default_factory=dict)  # JSON
    rng: dict[str, Any] = field(default_factory=dict)  # JSON: python, numpy
    rng_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # torch_cpu, torch_cuda/<i>, generator
    progress: dict[str, Any] = field(default_factory=dict)  # curve, best, attempts, mid-epoch sums
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. the epoch's batch order
    step: int = 0
    created: float = 0.0
    genotype: dict[str, Any] = field(default_factory=dict)  # what a child inheriting from it needs

    @property
    def curve(self) -> list[dict[str, Any]]:
        return list(self.progress.get("curve", []))

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for prefix, group in (("model", self.model), ("optimizer", self.optimizer_tensors),
                              ("rng", self.rng_tensors), ("extra", self.extra_tensors)):
            for name, tensor in group.items():
                out[f"{prefix}/{name}"] = tensor.detach().to("cpu").contiguous()
        return out


class TrialCheckpointStore:
    """Trial checkpoints under `root` (the artifact store); see the module's docstring."""

    def __init__(self, root: str | os.PathLike, fsync: bool = True):
        self.root = Path(root)
        self.trials = self.root / "trials"
        self.fsync = fsync

    def directory(self, trial_id: str) -> Path:
        if not isinstance(trial_id, str) or not TRIAL_ID.match(trial_id):
            raise ValueError(f"trial id {trial_id!r} is not accepted as a checkpoint directory name")
        return self.trials / trial_id

    # --- writing ---------------------------------------------------------------------
    def save(self, trial_id: str, epoch: int, state: TrialCheckpoint) -> Path:
        """Write `state` as the trial's checkpoint after `epoch` epochs (atomically), then drop
        its other checkpoints; returns the metadata file's path."""
        from safetensors.torch import save as save_tensors

        state = replace(state, trial_id=trial_id, epoch=int(epoch), created=state.created or time.time())
        directory = self.directory(trial_id)
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"epoch-{state.epoch}" + (f"-step-{state.step}" if state.step else "")
        data = save_tensors(state.tensors())
        tensors_path = directory / f"{stem}.safetensors"
        self._write(tensors_path, data)
        meta = {
            "format": FORMAT, "trial_id": trial_id, "epoch": state.epoch, "step": state.step,
            "genotype_hash": state.genotype_hash, "train_config": state.train_config,
            "optimizer": state.optimizer, "scheduler": state.scheduler, "rng": state.rng,
            "progress": state.progress, "created": state.created, "genotype": state.genotype,
            "tensors": {"file": tensors_path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        }
        meta_path = directory / f"{stem}.json"
        self._write(meta_path, json.dumps(meta, allow_nan=False, separators=(",", ":")).encode())
        if self.fsync:
            _fsync_dir(directory)
        self._drop_others(directory, stem)
        return meta_path

    def _write(self, path: Path, data: bytes) -> None:
        write_atomic(path, data, fsync=self.fsync)

    def _drop_others(self, directory: Path, keep_stem: str) -> None:
        # Metadata first: a tensors file without its JSON is never read.
        for pattern in ("epoch-*.json", "epoch-*.safetensors"):
            for path in directory.glob(pattern):
                if path.name.rsplit(".", 1)[0] != keep_stem:
                    path.unlink(missing_ok=True)

    # --- reading ---------------------------------------------------------------------
    def stems(self, trial_id: str) -> list[tuple[int, int, str]]:
        """(epoch, step, stem) of the trial's checkpoints, newest first."""
        directory = self.directory(trial_id)
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for name in names:
            m = NAME.match(name)
            if m:
                found.append((int(m.group(1)), int(m.group(2) or 0), name[:-len(".json")]))
        return sorted(found, reverse=True)

    def latest(self, trial_id: str, genotype_hash: Optional[str] = None,
               required: bool = False) -> Optional[TrialCheckpoint]:
        """The trial's newest checkpoint; None when it has none (CheckpointInvalid instead when
        `required`, e.g. a resumed trial whose directory vanished); CheckpointInvalid when the
        newest one is unusable (an older one is not tried: the trial restarts from scratch)."""
        stems = self.stems(trial_id)
        if not stems:
            if required:
                directory = self.directory(trial_id)
                what = "no checkpoint in" if directory.is_dir() else "no directory"
                raise CheckpointInvalid("missing", f"trial {trial_id}: {what} {directory}")
            return None
        return self._load_stem(trial_id, stems[0][2], genotype_hash)

    def load(self, trial_id: str, epoch: int, genotype_hash: Optional[str] = None) -> TrialCheckpoint:
        """The trial's checkpoint after exactly `epoch` epochs (CheckpointInvalid if there is none)."""
        directory = self.directory(trial_id)
        if not directory.is_dir():
            raise CheckpointInvalid("missing", f"trial {trial_id}: no directory {directory}")
        stem = f"epoch-{int(epoch)}"
        if not (directory / f"{stem}.json").is_file():
            raise CheckpointInvalid("missing", f"trial {trial_id}: no checkpoint after epoch {epoch} in {directory}")
        return self._load_stem(trial_id, stem, genotype_hash)

    def _load_stem(self, trial_id: str, stem: str, genotype_hash: Optional[str]) -> TrialCheckpoint:
        from safetensors import SafetensorError
        from safetensors.torch import load as load_tensors

        directory = self.directory(trial_id)
        where = f"trial {trial_id} checkpoint {stem}"
        meta_path = directory / f"{stem}.json"
        try:
            raw = meta_path.read_bytes()[: MAX_METADATA_BYTES + 1]
        except FileNotFoundError:
            raise CheckpointInvalid("missing", f"{where}: {meta_path.name} vanished") from None
        except OSError as exc:
            raise CheckpointInvalid("corrupt", f"{where}: cannot read {meta_path.name}: {exc}") from None
        meta = _parse_metadata(raw, where)
        if meta["trial_id"] != trial_id:
            raise CheckpointInvalid("mismatch", f"{where}: written for trial {meta['trial_id']!r}")
        if genotype_hash is not None and meta["genotype_hash"] != genotype_hash:
            raise CheckpointInvalid("mismatch", f"{where}: written for genotype {meta['genotype_hash']}, "
                                                f"not {genotype_hash}")
        info = meta["tensors"]
        tensors_path = directory / str(info["file"])
        if tensors_path.parent != directory:
            raise CheckpointInvalid("corrupt", f"{where}: tensors file {info['file']!r} is outside its directory")
        try:
            data = tensors_path.read_bytes()
        except FileNotFoundError:
            raise CheckpointInvalid("missing", f"{where}: {tensors_path.name} is missing") from None
        except OSError as exc:
            raise CheckpointInvalid("corrupt", f"{where}: cannot read {tensors_path.name}: {exc}") from None
        if len(data) != info["bytes"]:
            kind = "truncated" if len(data) < info["bytes"] else "corrupt"
            raise CheckpointInvalid(kind, f"{where}: {tensors_path.name} has {len(data)} bytes, "
                                          f"{info['bytes']} were written")
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise CheckpointInvalid("corrupt", f"{where}: {tensors_path.name} does not match its sha256")
        try:
            tensors = load_tensors(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise CheckpointInvalid("corrupt", f"{where}: {tensors_path.name} is not safetensors: {exc}") from None
        groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optimizer": {}, "rng": {}, "extra": {}}
        for key, tensor in tensors.items():
            prefix, _, name = key.partition("/")
            if prefix not in groups or not name:
                raise CheckpointInvalid("corrupt", f"{where}: unexpected tensor {key!r}")
            groups[prefix][name] = tensor
        if not groups["model"]:
            raise CheckpointInvalid("corrupt", f"{where}: holds no model weights")
        return TrialCheckpoint(
            trial_id=trial_id, epoch=meta["epoch"], step=meta["step"], model=groups["model"],
            genotype_hash=meta["genotype_hash"], train_config=meta["train_config"], optimizer=meta["optimizer"],
            optimizer_tensors=groups["optimizer"], scheduler=meta["scheduler"], rng=meta["rng"],
            rng_tensors=groups["rng"], progress=meta["progress"], extra_tensors=groups["extra"],
            created=meta["created"], genotype=meta.get("genotype") or {})

    # --- disk ------------------------------------------------------------------------
    def delete(self, trial_id: str) -> int:
        """Remove the trial's checkpoints; the bytes freed."""
        directory = self.directory(trial_id)
        freed = _size(directory)
        shutil.rmtree(directory, ignore_errors=True)
        return freed

    def trial_ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.trials.iterdir() if p.is_dir() and TRIAL_ID.match(p.name))
        except FileNotFoundError:
            return []

    def retain(self, keep_trial_ids: Iterable[str]) -> int:
        """Remove the checkpoints of every trial not in `keep_trial_ids`; the bytes freed."""
        keep = set(keep_trial_ids)
        return sum(self.delete(trial_id) for trial_id in self.trial_ids() if trial_id not in keep)

    def bytes_used(self) -> int:
        return _size(self.trials)


def checkpoints_to_keep(in_flight: Mapping[str, Optional[str]], rewards: Mapping[str, float],
                        needed: Iterable[str] = (), top_k: int = 0) -> set[str]:
    """The trials whose checkpoints a search still needs: those in flight (to resume) and the
    parents they start from, those the strategy names (`needed`: a population that will have
    children, PBT members), and the `top_k` finished trials by reward (for later stages).
    `in_flight` maps a trial id to its parent's id (or None); `rewards` holds finished trials."""
    keep = set(in_flight) | {parent for parent in in_flight.values() if parent} | set(needed)
    if top_k > 0:
        keep |= set(sorted(rewards, key=lambda t: (-rewards[t], t))[:top_k])
    return keep


class CheckpointRetention:
    """The controller's side of bounded disk: it knows what is in flight, what the strategy
    still needs and the best results, so it alone decides which trial checkpoints stay
    (`checkpoints_to_keep`); trainers only write. Pruning runs at most every `every_seconds`."""

    def __init__(self, store: TrialCheckpointStore, top_k: int = 5, every_seconds: float = 5.0):
        self.store = store
        self.top_k = top_k
        self.every_seconds = every_seconds
        self.best: dict[str, float] = {}  # the top_k finished trials by reward
        self._due = 0.0

    def note(self, trial_id: str, reward: Optional[float]) -> None:
        if reward is None or not math.isfinite(reward) or self.top_k <= 0:
            return
        self.best[trial_id] = reward
        if len(self.best) > self.top_k:
            del self.best[min(self.best, key=lambda t: (self.best[t], t))]

    def due(self, now: float) -> bool:
        return now >= self._due

    def prune(self, in_flight: Mapping[str, Optional[str]], needed: Iterable[str], now: float) -> int:
        """Remove what is not needed; the bytes freed (OSError from the volume propagates)."""
        self._due = now + self.every_seconds
        return self.store.retain(checkpoints_to_keep(in_flight, self.best, needed, self.top_k))


# --- capturing and restoring training state -------------------------------------------------

def capture(trial_id: str, epoch: int, model: torch.nn.Module, genotype_hash: str, train_config: dict[str, Any],
            optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None,
            generator: Optional[torch.Generator] = None, progress: Optional[dict[str, Any]] = None,
            step: int = 0, extra: Optional[dict[str, torch.Tensor]] = None) -> TrialCheckpoint:
    """A checkpoint of live training objects (tensors copied to the CPU)."""
    import torch

    opt_json, opt_tensors = optimizer_parts(optimizer) if optimizer is not None else ({}, {})
    rng_tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            rng_tensors[f"torch_cuda/{i}"] = state
    if generator is not None:
        rng_tensors["generator"] = generator.get_state()
    rng = {"python": _python_rng_json(), "numpy": _numpy_rng_json()}
    state = TrialCheckpoint(
        trial_id=trial_id, epoch=epoch, step=step,
        model={k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        genotype_hash=genotype_hash, train_config=dict(train_config), optimizer=opt_json,
        optimizer_tensors=opt_tensors,
        scheduler=dict(scheduler.state_dict()) if scheduler is not None else {},
        rng=rng, rng_tensors={k: v.detach().to("cpu").clone() for k, v in rng_tensors.items()},
        progress=dict(progress or {}), extra_tensors={k: v.detach().to("cpu").clone() for k, v in (extra or {}).items()})
    json.dumps([state.optimizer, state.scheduler, state.progress, state.train_config], allow_nan=False)  # fail early
    return state


def check_model_fits(checkpoint: TrialCheckpoint, model: torch.nn.Module) -> None:
    """CheckpointInvalid("shape") unless the checkpoint's weights are exactly the model's."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in checkpoint.model.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unexpected:
        raise CheckpointInvalid("shape", f"trial {checkpoint.trial_id}: the checkpoint's weights do not fit the "
                                         f"genotype's network (missing {missing[:3]}, unexpected {unexpected[:3]})")
    wrong = [f"{k} {got[k]} vs {expected[k]}" for k in expected if got[k] != expected[k]]
    if wrong:
        raise CheckpointInvalid("shape", f"trial {checkpoint.trial_id}: the checkpoint's shapes do not fit the "
                                         f"genotype's network: {'; '.join(wrong[:3])}")


def restore(checkpoint: TrialCheckpoint, model: torch.nn.Module,
            optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None,
            generator: Optional[torch.Generator] = None) -> None:
    """Load a checkpoint into live training objects, checking that it fits them first
    (CheckpointInvalid, with nothing changed, when it does not).

    The batch-order generator lives on the GPU or the CPU depending on the free GPU memory,
    so a checkpoint may hold a generator state of the other kind (CUDA: 16 bytes, CPU: 5056).
    That is no reason to throw the checkpoint away: the generator is then re-seeded from
    (its seed, epoch, step), deterministically, with a logged note; only the batch order and
    augmentation draws after the resume differ from an uninterrupted run."""
    import torch

    check_model_fits(checkpoint, model)
    opt_state = None
    if optimizer is not None:
        opt_state = optimizer_state_from_parts(optimizer, checkpoint.optimizer, checkpoint.optimizer_tensors,
                                               f"trial {checkpoint.trial_id}")
    try:
        if scheduler is not None:
            probe = scheduler.state_dict()
            if set(checkpoint.scheduler) != set(probe):
                raise CheckpointInvalid("corrupt", f"trial {checkpoint.trial_id}: the learning-rate schedule state "
                                                   f"has keys {sorted(checkpoint.scheduler)[:6]}")
        # Everything is checked before anything changes: a refused checkpoint leaves the objects as they were.
        torch_cpu = checkpoint.rng_tensors.get("torch_cpu")
        if torch_cpu is None or torch_cpu.dtype != torch.uint8 or torch_cpu.shape != torch.get_rng_state().shape:
            raise CheckpointInvalid("corrupt", f"trial {checkpoint.trial_id}: no torch RNG state")
        cuda_states = _cuda_rng_states(checkpoint)
        generator_state = _generator_state(checkpoint, generator)
        python_state = _python_rng_state(checkpoint.rng.get("python"))
        numpy_state = _numpy_rng_state(checkpoint.rng.get("numpy"))
        model.load_state_dict(checkpoint.model, strict=True)
        if optimizer is not None:
            optimizer.load_state_dict(opt_state)
        if scheduler is not None:
            scheduler.load_state_dict(dict(checkpoint.scheduler))
        torch.set_rng_state(torch_cpu)
        if generator_state is not None:
            generator.set_state(generator_state)
        elif generator is not None and "generator" in checkpoint.rng_tensors:  # another device's generator
            seed = (generator.initial_seed() * 1_000_003 + checkpoint.epoch * 1_009 + checkpoint.step) % 2 ** 63
            generator.manual_seed(seed)
            log.info("trial %s: the checkpoint's batch-order generator is of another device; re-seeded it from "
                     "(seed, epoch %d, step %d)", checkpoint.trial_id, checkpoint.epoch, checkpoint.step)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if python_state is not None:
            random.setstate(python_state)
        if numpy_state is not None:
            import numpy as np

            np.random.set_state(numpy_state)
    except CheckpointInvalid:
        raise
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointInvalid("corrupt", f"trial {checkpoint.trial_id}: cannot restore: "
                                           f"{type(exc).__name__}: {str(exc)[:300]}") from None


def _cuda_rng_states(checkpoint: TrialCheckpoint) -> Optional[list[torch.Tensor]]:
    """The CUDA generators' states to restore: one per visible GPU, when the checkpoint has
    them all. None on a trainer without CUDA, and for a checkpoint written without it (on a
    CPU trainer, or with fewer GPUs): CUDA's generators then stay as seeded, and nothing of
    CUDA is touched, so the CPU path is the same with or without these entries."""
    import torch

    if not torch.cuda.is_available():
        return None
    states = [checkpoint.rng_tensors.get(f"torch_cuda/{i}") for i in range(torch.cuda.device_count())]
    if not states or any(state is None for state in states):
        return None
    if any(state.dtype != torch.uint8 or state.dim() != 1 for state in states):
        raise CheckpointInvalid("corrupt", f"trial {checkpoint.trial_id}: a CUDA RNG state that is no byte vector")
    return states


# --- optimizer state as JSON plus tensors (no pickle) ------------------------------------------
# The layout of trial checkpoints: JSON {"param_groups", "values": {param index: {key: number}}}
# and tensors "<param index>/<key>" (under "<prefix>/" when several optimizers share a file).

def optimizer_parts(optimizer: torch.optim.Optimizer, prefix: str = "") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An optimizer's state as JSON plus CPU tensors."""
    import torch

    head = f"{prefix}/" if prefix else ""
    sd = optimizer.state_dict()
    values: dict[str, dict[str, Any]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{head}{index}/{key}"] = value.detach().to("cpu").clone()
            else:
                values.setdefault(str(index), {})[key] = value
    return {"param_groups": plain_json(sd["param_groups"]), "values": values}, tensors


def load_optimizer_parts(optimizer: torch.optim.Optimizer, values: dict[str, Any], tensors: dict[str, torch.Tensor],
                         prefix: str) -> None:
    """Load what optimizer_parts(optimizer, prefix) wrote (CheckpointInvalid, with nothing changed, if it does not fit)."""
    head = f"{prefix}/"
    own = {key[len(head):]: tensor for key, tensor in tensors.items() if key.startswith(head)}
    optimizer.load_state_dict(optimizer_state_from_parts(optimizer, values, own, prefix))


def optimizer_state_from_parts(optimizer: torch.optim.Optimizer, values: dict[str, Any],
                               tensors: dict[str, torch.Tensor], where: str) -> dict[str, Any]:
    """The state_dict that optimizer_parts' JSON and tensors describe, checked against `optimizer`."""
    groups = values.get("param_groups")
    own = optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or [len(g.get("params", [])) for g in groups] != [len(g["params"]) for g in own]:
        raise CheckpointInvalid("shape", f"{where}: the optimizer state does not fit the network")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        index, _, name = key.partition("/")
        if not index.isdigit() or int(index) >= len(params) or not name:
            raise CheckpointInvalid("corrupt", f"{where}: unexpected optimizer tensor {key!r}")
        if name == "momentum_buffer" and tuple(tensor.shape) != tuple(params[int(index)].shape):
            raise CheckpointInvalid("shape", f"{where}: optimizer buffer {key} has shape "
                                             f"{tuple(tensor.shape)}, its parameter {tuple(params[int(index)].shape)}")
        state.setdefault(int(index), {})[name] = tensor
    for index, entries in (values.get("values") or {}).items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": param_groups_from_json(groups)}


def plain_json(value: Any) -> Any:
    """Tuples to lists and keys to strings, recursively, so optimizer settings are JSON as they will read back."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    return value


def param_groups_from_json(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Param groups as torch writes them: Adam's betas are a tuple (JSON made it a list)."""
    return [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in groups]


def _parse_metadata(raw: bytes, where: str) -> dict[str, Any]:
    if len(raw) > MAX_METADATA_BYTES:
        raise CheckpointInvalid("corrupt", f"{where}: metadata over {MAX_METADATA_BYTES} bytes")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointInvalid("corrupt", f"{where}: metadata is not JSON: {str(exc)[:200]}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointInvalid("corrupt", f"{where}: metadata is not a {FORMAT} record")
    expected = {"trial_id": str, "epoch": int, "step": int, "genotype_hash": str, "train_config": dict,
                "optimizer": dict, "scheduler": dict, "rng": dict, "progress": dict, "created": (int, float),
                "tensors": dict}
    for name, kind in expected.items():
        if not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool):
            raise CheckpointInvalid("corrupt", f"{where}: metadata field {name!r} is missing or not "
                                               f"{getattr(kind, '__name__', 'a number')}")
    if not isinstance(meta.get("genotype", {}), dict):
        raise CheckpointInvalid("corrupt", f"{where}: metadata field 'genotype' is not an object")
    t = meta["tensors"]
    if not (isinstance(t.get("file"), str) and isinstance(t.get("bytes"), int) and isinstance(t.get("sha256"), str)):
        raise CheckpointInvalid("corrupt", f"{where}: metadata field 'tensors' needs file, bytes and sha256")
    if meta["epoch"] < 0 or meta["step"] < 0 or not math.isfinite(meta["created"]):
        raise CheckpointInvalid("corrupt", f"{where}: metadata has a negative epoch or step")
    curve = meta["progress"].get("curve", [])
    if not isinstance(curve, list) or len(curve) != meta["epoch"] or not all(isinstance(c, dict) for c in curve):
        raise CheckpointInvalid("corrupt", f"{where}: the progress curve does not have {meta['epoch']} epochs")
    return meta


def _python_rng_json() -> list[Any]:
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


def _python_rng_state(value: Any) -> Optional[tuple[Any, ...]]:
    """The saved state of Python's RNG, checked on a scratch generator (None: none saved)."""
    if value is None:
        return None
    version, state, gauss = value
    parsed = (version, tuple(state), gauss)
    random.Random().setstate(parsed)  # raises on a malformed state, before anything changes
    return parsed


def _numpy_rng_json() -> Optional[list[Any]]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a core dependency
        return None
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def _numpy_rng_state(value: Any) -> Optional[tuple[Any, ...]]:
    """The saved state of numpy's global RNG, checked on a scratch generator (None: none saved)."""
    if value is None:
        return None
    import numpy as np

    name, keys, pos, has_gauss, cached = value
    parsed = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    np.random.RandomState().set_state(parsed)  # raises on a malformed state, before anything changes
    return parsed


def _generator_state(checkpoint: TrialCheckpoint, generator: Optional[torch.Generator]) -> Optional[torch.Tensor]:
    """The batch-order generator's saved state when it fits `generator`; None when there is no
    generator or no saved state, or when the state is of another device's kind (its size differs)."""
    import torch

    state = checkpoint.rng_tensors.get("generator")
    if generator is None or state is None:
        return None
    if state.dtype != torch.uint8 or state.dim() != 1:
        raise CheckpointInvalid("corrupt", f"trial {checkpoint.trial_id}: a generator state that is no byte vector")
    return state if state.shape == generator.get_state().shape else None


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
