"""The controller's checkpoint: a directory on a volume (a PVC in Kubernetes).

    state.json        strategy state and bookkeeping; replaced atomically (temp file, fsync, rename)
    tensors-<n>.safetensors  tensors found in the strategy state, if any, as a flat
                      {name: tensor} safetensors file (a checkpoint of format 1 held them in a
                      tensors-<n>.pt, which is still read, with torch's weights-only loader)
    trials.jsonl      append-only event log: one JSON object per trial created, result
                      applied or trial cancelled; fsynced before the results are acknowledged

`state.json` records how many bytes of the log it covers; a restart truncates
anything after that (events of a step whose results were never acknowledged
and whose trials were never published) and replays the rest. So the pair is
always consistent, and a crash at any point loses nothing that was
acknowledged. No pickle: numpy arrays travel as tagged lists, tensors in safetensors.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

from kubenas.errors import KubenasError

STATE = "state.json"
LOG = "trials.jsonl"
FORMAT_VERSION = 2  # 2: tensors in safetensors (1: torch.save, still readable)
READABLE_FORMATS = (1, 2)


class CheckpointError(KubenasError):
    """A checkpoint that cannot be used (corrupt, or made for another search)."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, fsync: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # no torch loaded: no tensors can exist
    return torch is not None and isinstance(value, torch.Tensor)


def _load_tensors(path: Path) -> dict[str, Any]:
    if path.suffix == ".pt":  # format 1, written before safetensors: torch's weights-only loader
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def dumps_state(state: Any, tensors: dict[str, Any]) -> bytes:
    """JSON of the state; tensors become {"__tensor__": name} (collected in `tensors`),
    numpy arrays tagged lists. The JSON encoder walks the state (in C) and calls back
    only for what it cannot encode itself."""

    def special(value: Any) -> Any:
        if _is_tensor(value):
            name = f"t{len(tensors)}"
            tensors[name] = value.detach().cpu().contiguous()
            return {"__tensor__": name}
        if type(value).__module__ == "numpy":
            if getattr(value, "ndim", 0) > 0:
                return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
            return value.item()
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        raise TypeError(f"a strategy state may hold JSON data, tensors and numpy arrays; not {type(value).__name__}")

    return json.dumps(state, separators=(",", ":"), default=special).encode()


def loads_state(data: bytes, tensors: dict[str, Any]) -> Any:
    def hook(obj: dict) -> Any:
        if len(obj) == 1 and "__tensor__" in obj:
            try:
                return tensors[obj["__tensor__"]]
            except KeyError:
                raise CheckpointError(f"the state refers to tensor {obj['__tensor__']!r}, "
                                      "which the tensors file lacks") from None
        if len(obj) == 2 and "__ndarray__" in obj and "dtype" in obj:
            import numpy as np

            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        return obj

    return json.loads(data, object_hook=hook)


class Checkpoint:
    def __init__(self, directory: str | Path, fsync: bool = True):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.state_path = self.dir / STATE
        self.log_path = self.dir / LOG
        self.generation = 0
        self.last_bytes = 0
        self.tensor_file: Optional[str] = None
        self._append_failed = False

    def lock(self) -> None:
        """Hold the directory for this process (released when it exits, even by SIGKILL):
        two controllers writing one checkpoint would corrupt it."""
        import fcntl

        self._lock = open(self.dir / ".lock", "a+")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise CheckpointError(f"{self.dir} is in use by another controller (is the same search running "
                                  "elsewhere, or another `kubenas run` with the same --output?)") from None

    def unlock(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.close()  # closing the descriptor releases the flock
            self._lock = None

    # --- reading ------------------------------------------------------------------------
    def load(self) -> Optional[dict]:
        """The saved state (tensors restored), or None for a fresh directory. Truncates
        the event log to what the state covers."""
        if not self.state_path.exists():
            if self.log_path.exists() and self.log_path.stat().st_size:
                # Events without any state: the first step never completed; start over.
                self.log_path.write_bytes(b"")
            return None
        try:
            data = self.state_path.read_bytes()
            head = json.loads(data)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.state_path}: unreadable checkpoint ({exc}); move the directory "
                                  "away to start the search afresh") from None
        if not isinstance(head, dict) or head.get("format") not in READABLE_FORMATS:
            raise CheckpointError(f"{self.state_path}: not a kubenas controller checkpoint of format "
                                  f"{' or '.join(map(str, READABLE_FORMATS))}")
        self.generation = int(head.get("generation", 0))
        tensor_file = head.get("tensors")
        self.tensor_file = tensor_file
        state = head
        if tensor_file:
            try:
                tensors = _load_tensors(self.dir / tensor_file)
            except Exception as exc:  # noqa: BLE001 - any failure here means an unusable checkpoint
                raise CheckpointError(f"{self.dir / tensor_file}: cannot load tensors ({exc})") from None
            state = loads_state(data, tensors)
        elif b'"__ndarray__"' in data:
            state = loads_state(data, {})
        log_bytes = int(state.get("log_bytes", 0))
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        if size < log_bytes:
            raise CheckpointError(f"{self.log_path}: {size} bytes, but the state covers {log_bytes}; "
                                  "the trial log was truncated or replaced")
        if size > log_bytes:
            with open(self.log_path, "r+b") as f:
                f.truncate(log_bytes)
        self.last_bytes = log_bytes
        return state

    def events(self) -> Iterator[dict]:
        if not self.log_path.exists():
            return
        with open(self.log_path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    raise CheckpointError(f"{self.log_path}: line {number} is not JSON") from None

    # --- writing ------------------------------------------------------------------------
    def append(self, events: list[dict]) -> int:
        """Append events durably; returns the log's new size in bytes."""
        if events:
            data = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)
            with open(self.log_path, "ab") as f:
                if self._append_failed:  # drop what the failed attempt may have left half-written
                    f.truncate(self.last_bytes)
                self._append_failed = True
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
                self.last_bytes = f.tell()
                self._append_failed = False
        return self.last_bytes

    def save(self, state: dict) -> int:
        """Write the state atomically (log_bytes must be set by the caller); returns its size."""
        tensors: dict[str, Any] = {}
        strategy = dumps_state(state.get("strategy"), tensors)
        head = {k: v for k, v in state.items() if k not in ("strategy", "tensors", "generation")}
        head.update(format=FORMAT_VERSION, tensors=None, generation=self.generation)
        if tensors:
            from safetensors.torch import save_file

            self.generation += 1
            name = f"tensors-{self.generation}.safetensors"
            tmp = self.dir / f".{name}.tmp"
            save_file({k: v.clone() for k, v in tensors.items()}, str(tmp))  # clone: no shared storage
            if self.fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, self.dir / name)
            head.update(tensors=name, generation=self.generation)
        data = json.dumps(head, separators=(",", ":")).encode()[:-1] + b',"strategy":' + strategy + b"}"
        atomic_write(self.state_path, data, self.fsync)
        old, self.tensor_file = self.tensor_file, head["tensors"]
        if old and old != self.tensor_file:
            try:
                (self.dir / old).unlink()
            except OSError:
                pass
        return len(data)
