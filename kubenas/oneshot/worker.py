"""The supernet worker: one rank of a data-parallel one-shot search.

    python -m kubenas.oneshot --spec SPEC.json --artifacts DIR [--device cpu|cuda]

SPEC.json is the ArchitectureSearch spec (camelCase JSON) with strategy.algorithm enas,
darts or spos. The group comes from torchrun's environment: RANK (JOB_COMPLETION_INDEX in
a Kubernetes Indexed Job), WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK; world size 1
needs none of them. Backend gloo on CPU, NCCL on CUDA (gloo where more local ranks than GPUs,
LOCAL_WORLD_SIZE, share them); rendezvous and every collective time
out after KUBENAS_ONESHOT_TIMEOUT seconds (default 120), so a lost peer ends the others
with exit 1 and a one-line message instead of a hang.

Rank 0 checkpoints the supernet after every epoch (DIR/supernet/epoch-<e>.safetensors +
.json, atomically, the trial-checkpoint format); every rank starts from the newest one, so
a group restarted after losing a worker loses at most the epoch in progress. At the end
rank 0 writes DIR/supernet/derived.json:
    {"algorithm": ..., "fingerprint": ..., "genotypes": [{"genotype": {...}, "hash": ..., "score": ...}, ...]}
(the fingerprint of the spec it was made for: kubenas.oneshot.supernet_fingerprint; the score:
minus the cell's validation loss on the shared weights, OneShotAlgorithm.score).
Progress goes to stderr as `kubenas-oneshot rank=R event=... key=value ...` lines.
Exit codes: 0 done, 2 bad input (the message names the field; a diverged training too, which
names training.learningRate), 1 any other failure.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from kubenas.errors import DatasetError, InvalidSpec, describe_validation_error
from kubenas.files import read_bounded, write_atomic
from kubenas.oneshot import ALGORITHM_MODULES, supernet_fingerprint
from kubenas.training.checkpoints import TrialCheckpointStore

DEFAULT_TIMEOUT = 120.0
CHECKPOINT_ID = "supernet"
MAX_SPEC_BYTES = 4 * 1024 * 1024


class BadInput(Exception):
    """Exit 2: the message names the field and what is accepted."""


class GroupLost(Exception):
    """Exit 1: a peer exited or stopped answering."""


@dataclass(frozen=True)
class Group:
    rank: int
    world: int
    local_rank: int
    timeout: float
    master: Optional[tuple[str, int]]
    local_world: int = 1  # ranks on this machine (torchrun's LOCAL_WORLD_SIZE)


def log(rank: int, event: str, **values: Any) -> None:
    parts = [f"kubenas-oneshot rank={rank} event={event}"]
    for key, value in values.items():
        if isinstance(value, float):
            value = f"{value:.4f}" if math.isfinite(value) else "nan"
        parts.append(f"{key}={value}")
    print(" ".join(parts), file=sys.stderr, flush=True)


def fail(rank: int, message: str) -> None:
    print(f"kubenas-oneshot rank={rank} error: {message}", file=sys.stderr, flush=True)


# --- inputs (pure: environment and spec text in, settings out) ---------------------------------

def group_from_env(env: Mapping[str, str]) -> Group:
    def integer(name: str, default: Optional[str], low: int) -> int:
        text = env.get(name, default)
        try:
            value = int(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BadInput(f"environment {name}: {text!r} is not an integer") from None
        if value < low:
            raise BadInput(f"environment {name}: {value} is out of range; accepted >= {low}")
        return value

    world = integer("WORLD_SIZE", "1", 1)
    rank_name = "RANK" if env.get("RANK") not in (None, "") else "JOB_COMPLETION_INDEX"
    rank = integer(rank_name, "0", 0)
    if rank >= world:
        raise BadInput(f"environment {rank_name}: rank {rank} is out of range for WORLD_SIZE {world}; "
                       f"accepted 0..{world - 1}")
    local_rank = integer("LOCAL_RANK", "0", 0)
    text = env.get("KUBENAS_ONESHOT_TIMEOUT", str(DEFAULT_TIMEOUT))
    try:
        timeout = float(text)
    except ValueError:
        timeout = math.nan
    if not math.isfinite(timeout) or timeout <= 0:
        raise BadInput(f"environment KUBENAS_ONESHOT_TIMEOUT: {text!r} is not accepted; give seconds > 0")
    master = None
    if world > 1:
        addr = env.get("MASTER_ADDR", "")
        if not addr:
            raise BadInput(f"environment MASTER_ADDR: needed with WORLD_SIZE {world} (rank 0's host)")
        port = integer("MASTER_PORT", None, 1) if env.get("MASTER_PORT") else None
        if port is None or port > 65535:
            raise BadInput(f"environment MASTER_PORT: {env.get('MASTER_PORT')!r} is not accepted; "
                           "give rank 0's port (1..65535)")
        master = (addr, port)
    local_world = integer("LOCAL_WORLD_SIZE", "1", 1)
    return Group(rank, world, local_rank, timeout, master, local_world)


def read_spec(path: Path):
    from pydantic import ValidationError

    from kubenas.spec import ArchitectureSearchSpec

    text = read_bounded(path, MAX_SPEC_BYTES, f"--spec {path}", hint="a spec is a small JSON file", error=BadInput)
    try:
        return ArchitectureSearchSpec.model_validate_json(text)
    except ValidationError as exc:
        raise BadInput(describe_validation_error(exc, "spec")) from None


def settings_from_spec(spec) -> tuple[str, Any]:
    """The algorithm and its OneShotSettings, or BadInput naming the field."""
    from kubenas.oneshot.common import OneShotSettings
    from kubenas.spec import strategy_keyword_arguments

    algorithm = spec.strategy.algorithm
    if algorithm not in ALGORITHM_MODULES:
        raise BadInput(f"strategy.algorithm: {algorithm!r} is not a one-shot algorithm; this worker runs "
                       f"{', '.join(sorted(ALGORITHM_MODULES))}")
    if spec.search_space.hyperparameters:
        names = [hp.name for hp in spec.search_space.hyperparameters]
        raise BadInput(f"searchSpace.hyperparameters: {algorithm} searches the cell only (a supernet shares "
                       f"weights across cells, not across training settings); remove {names}")
    if getattr(spec.training, "skeleton", "cifar") != "cifar":
        raise BadInput(f"training.skeleton: {spec.training.skeleton!r} is not accepted for {algorithm}; "
                       "supernets use the cifar skeleton")
    # Names, types and ranges were checked by the spec (kubenas/spec.py StrategySpec).
    chosen = strategy_keyword_arguments(spec.strategy.parameters)
    t = spec.training
    epochs = chosen.pop("supernet_epochs", None) or t.epochs
    known = {f.name for f in fields(OneShotSettings)}
    settings = OneShotSettings(epochs=epochs, batch_size=t.batch_size, learning_rate=t.learning_rate,
                               momentum=t.momentum, weight_decay=t.weight_decay, seed=t.seed)
    return algorithm, replace(settings, **{k: v for k, v in chosen.items() if k in known})


# --- the run --------------------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None, env: Optional[Mapping[str, str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubenas.oneshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, type=Path, help="the ArchitectureSearch spec as JSON")
    parser.add_argument("--artifacts", required=True, type=Path, help="the search's artifact directory")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when visible, else cpu")
    args = parser.parse_args(argv)  # exits 2 with argparse's message on a bad command line
    env = os.environ if env is None else env
    rank = 0
    try:
        group = group_from_env(env)
        rank = group.rank
        spec = read_spec(args.spec)
        algorithm, settings = settings_from_spec(spec)
        return run(args, group, spec, algorithm, settings)
    except BadInput as exc:
        fail(rank, str(exc))
        return _leave(2)  # a checkpoint of another search is found after the group is up
    except GroupLost as exc:
        fail(rank, str(exc))
        # A broken process group may block in its destructor: leave at once.
        os._exit(1)
    except FloatingPointError as exc:
        # Bad settings, not a fault: a restart from the last checkpoint would diverge again.
        fail(rank, f"training diverged: {exc}")
        return _leave(2)
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, then the traceback
        fail(rank, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        traceback.print_exc(file=sys.stderr)
        return _leave(1)


def _leave(code: int) -> int:
    """The exit code; at once when a process group of several is still up (its teardown at
    interpreter exit could wait for peers that are gone)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sys.stderr.flush()
        os._exit(code)
    return code


def _device(requested: Optional[str], group: Group):
    import torch

    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BadInput("--device cuda: no CUDA device is visible; use --device cpu")
    # More local ranks than GPUs (N processes of `kubenas run` on one GPU) share them round-robin;
    # NCCL refuses two ranks on one GPU, so such a group talks over gloo (_init_group).
    index = group.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _load_data(spec, group: Group):
    from kubenas.oneshot.common import Shards
    from kubenas.training.datasets import load_dataset_spec

    try:
        data = load_dataset_spec(spec.training.dataset, seed=spec.training.seed)
    except DatasetError as exc:
        raise BadInput(str(exc)) from None
    if getattr(data, "streamed", False):
        raise BadInput("training.dataset: one-shot workers keep the dataset in memory; raise "
                       "training.dataset.cacheLimitMib so that it fits, or use a smaller trainSubset")
    return data, Shards(data.train_x, data.train_y, data.val_x, data.val_y, group.rank, group.world)


def _init_group(group: Group, device) -> None:
    import torch
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=group.timeout)
    shared_gpus = device.type == "cuda" and group.local_world > torch.cuda.device_count()
    backend = "nccl" if device.type == "cuda" and not shared_gpus else "gloo"
    if backend == "nccl":
        # Collectives raise after the timeout instead of the watchdog aborting the process.
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    try:
        if group.world == 1:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        else:
            addr, port = group.master
            dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=group.rank,
                                    world_size=group.world, timeout=timeout)
    except (RuntimeError, ValueError, OSError, TimeoutError) as exc:
        where = f" (rendezvous {group.master[0]}:{group.master[1]})" if group.master else ""
        raise GroupLost(f"could not join the group of {group.world}{where} within {group.timeout:g}s "
                        f"(KUBENAS_ONESHOT_TIMEOUT): {_first_line(exc)}") from None


def _is_group_failure(exc: BaseException) -> bool:
    """Whether an error came from the process group (a peer gone or silent), not from our code."""
    import torch.distributed as dist

    if isinstance(exc, (dist.DistError, ConnectionError, TimeoutError)):
        return True
    text = str(exc)
    # gloo raises plain RuntimeErrors: "Connection reset by peer", "Application timeout caused pair closure".
    return any(mark in text.lower() for mark in ("gloo", "nccl", "connection", "timed out", "timeout", "socket",
                                                 "pair closure", "by peer"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    # gloo appends generic advice to its socket errors; the first sentence says what happened.
    return line.split(" This is typically caused")[0][:300]


def run(args, group: Group, spec, algorithm: str, settings) -> int:
    import torch
    import torch.distributed as dist

    from kubenas.nn.networks import ModelConfig
    from kubenas.nn.supernet import build_supernet
    from kubenas.oneshot.base import top_distinct
    from kubenas.oneshot.common import digest
    from kubenas.spaces import build_space

    try:
        space = build_space(spec.search_space)
    except InvalidSpec as exc:
        raise BadInput(str(exc)) from None
    device = _device(args.device, group)
    data, shards = _load_data(spec, group)
    store = SupernetStore(args.artifacts)
    fp = supernet_fingerprint(spec)
    torch.manual_seed(settings.seed)
    cfg = ModelConfig(channels=spec.training.channels, cells_per_stage=spec.training.cells_per_stage,
                      num_classes=data.num_classes, in_channels=data.input_shape[0])
    supernet = build_supernet(space, cfg)
    _init_group(group, device)
    started = time.perf_counter()
    finished = False
    try:
        module, cls_name = ALGORITHM_MODULES[algorithm].split(":")
        algo = getattr(importlib.import_module(module), cls_name)(supernet, space, settings, shards, device)
        curve = resume(algo, store, fp, group, device)
        log(group.rank, "start", algorithm=algorithm, world=group.world, device=device.type,
            resumed_from=len(curve), epochs=settings.epochs)
        for epoch in range(len(curve), settings.epochs):
            report = algo.timed_epoch(epoch)
            report = {"epoch": epoch + 1, **report}
            curve.append(report)
            if group.rank == 0:
                save(algo, store, fp, epoch + 1, curve, settings)
            log(group.rank, "epoch", epoch=epoch + 1, epochs=settings.epochs,
                **{k: v for k, v in report.items() if k != "epoch"},
                weights=digest(algo.state_module().state_dict()))
        derived = top_distinct(space, algo.derive(), settings.top_k, by_score=algo.rank_by_score)
        if group.rank == 0:
            write_json(args.artifacts / "supernet" / "derived.json",
                       {"algorithm": algorithm, "fingerprint": fp, "genotypes": derived, "epochs": settings.epochs,
                        "seconds": time.perf_counter() - started})
        log(group.rank, "derived", count=len(derived), best_score=derived[0]["score"] if derived else math.nan)
        dist.barrier()
        finished = True
    except (FloatingPointError, BadInput):
        raise
    except (RuntimeError, OSError, TimeoutError) as exc:
        if group.world == 1 or not _is_group_failure(exc):
            raise  # a bug, not a lost peer: main() prints its traceback
        raise GroupLost(f"lost the worker group (a peer exited or did not answer within {group.timeout:g}s; "
                        f"the group restarts from the last epoch checkpoint): {_first_line(exc)}") from None
    finally:
        # A healthy group (or a group of one) is left cleanly; a broken one may block here, so the
        # process exits without it (main).
        if dist.is_initialized() and (finished or group.world == 1):
            dist.destroy_process_group()
    log(group.rank, "done", seconds=time.perf_counter() - started)
    return 0


# --- checkpoints ------------------------------------------------------------------------------------

class SupernetStore(TrialCheckpointStore):
    """The trial-checkpoint store (atomic safetensors + JSON, checked on reading), with the
    supernet's own directory: DIR/supernet."""

    def directory(self, trial_id: str) -> Path:
        return self.root / "supernet"


def save(algo, store, fp: str, epoch: int, curve: list[dict], settings) -> None:
    from kubenas.training.checkpoints import capture

    arch_values, arch_tensors = algo.arch_state()
    progress = {"curve": curve, "epochs": settings.epochs, "algorithm": algo.name, "arch": arch_values}
    state = capture(CHECKPOINT_ID, epoch, algo.state_module(), fp, _jsonable(asdict(settings)), algo.optimizer,
                    algo.scheduler, None, progress, extra=arch_tensors)
    store.save(CHECKPOINT_ID, epoch, state)


def resume(algo, store, fp: str, group: Group, device) -> list[dict]:
    """Load the newest checkpoint on every rank (all must see the same epoch); the curve so far."""
    import torch
    import torch.distributed as dist

    from kubenas.training.checkpoints import CheckpointInvalid, restore

    checkpoint, problem = None, ""
    try:
        checkpoint = store.latest(CHECKPOINT_ID, genotype_hash=fp)
    except CheckpointInvalid as exc:
        if exc.reason == "mismatch":
            raise BadInput(f"--artifacts {store.root}: its supernet checkpoint belongs to another search (other "
                           "algorithm, space, parameters or training settings); give a fresh directory") from None
        problem = str(exc)
    epoch = checkpoint.epoch if checkpoint is not None else 0
    seen = torch.tensor([epoch, -epoch], dtype=torch.int64, device=device)
    if group.world > 1:
        dist.all_reduce(seen, op=dist.ReduceOp.MAX)
    if int(seen[0]) != -int(seen[1]):
        raise GroupLost(f"ranks see different supernet checkpoints (epochs {-int(seen[1])}..{int(seen[0])}) "
                        f"under {store.root}; the artifact directory must be shared by every worker")
    if problem:
        log(group.rank, "checkpoint_unusable", reason=problem.replace(" ", "_")[:120])
    if checkpoint is None:
        return []
    try:
        restore(checkpoint, algo.state_module(), algo.optimizer, algo.scheduler)
        algo.load_arch_state(checkpoint.progress.get("arch", {}), checkpoint.extra_tensors)
    except (CheckpointInvalid, KeyError, ValueError, RuntimeError) as exc:
        raise BadInput(f"--artifacts {store.root}: the supernet checkpoint after epoch {epoch} cannot be "
                       f"loaded ({_first_line(exc)}); give a fresh directory") from None
    return list(checkpoint.progress.get("curve", []))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def write_json(path: Path, data: Any) -> None:
    """Write under a temporary name, fsync, rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, allow_nan=False, indent=1).encode())
