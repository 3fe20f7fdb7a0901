"""The controller's checkpoint: atomic, consistent with its trial log, no pickle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kubenas_controller.checkpoint import Checkpoint, CheckpointError


def test_state_round_trips_with_tensors_and_arrays(tmp_path):
    ck = Checkpoint(tmp_path)
    state = {"strategy": {"weights": torch.arange(6.0).reshape(2, 3), "nested": [{"b": torch.ones(2)}],
                          "array": np.array([1, 2, 3], dtype=np.int64), "plain": [1, "a", None]},
             "log_bytes": 0, "search": "ns/s"}
    ck.save(state)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["state.json", "tensors-1.safetensors"]
    # state.json is plain JSON; the tensors are a safetensors file (no pickle)
    assert json.loads((tmp_path / "state.json").read_text())["strategy"]["weights"] == {"__tensor__": "t0"}
    assert set(load_file(str(tmp_path / "tensors-1.safetensors"))) == {"t0", "t1"}
    loaded = Checkpoint(tmp_path).load()
    assert torch.equal(loaded["strategy"]["weights"], state["strategy"]["weights"])
    assert torch.equal(loaded["strategy"]["nested"][0]["b"], torch.ones(2))
    assert loaded["strategy"]["array"].tolist() == [1, 2, 3] and loaded["strategy"]["array"].dtype == np.int64
    assert loaded["strategy"]["plain"] == [1, "a", None]


def test_old_tensor_files_are_removed(tmp_path):
    ck = Checkpoint(tmp_path)
    for i in range(3):
        ck.save({"strategy": {"w": torch.full((2,), float(i))}, "log_bytes": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "tensors-3.safetensors"]
    assert Checkpoint(tmp_path).load()["strategy"]["w"].tolist() == [2.0, 2.0]


def test_a_format_1_checkpoint_with_torch_save_tensors_still_loads(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps(
        {"format": 1, "generation": 1, "tensors": "tensors-1.pt", "log_bytes": 0, "strategy": {"w": {"__tensor__": "t0"}}}))
    torch.save({"t0": torch.arange(3.0)}, tmp_path / "tensors-1.pt")
    assert Checkpoint(tmp_path).load()["strategy"]["w"].tolist() == [0.0, 1.0, 2.0]


def test_the_log_is_cut_back_to_what_the_state_covers(tmp_path):
    ck = Checkpoint(tmp_path)
    size = ck.append([{"e": "trial", "id": "t0"}, {"e": "result", "id": "t0"}])
    ck.save({"strategy": {}, "log_bytes": size})
    ck.append([{"e": "trial", "id": "t1"}])  # a step that crashed before its state was saved
    again = Checkpoint(tmp_path)
    again.load()
    assert [e["id"] for e in again.events()] == ["t0", "t0"]
    assert (tmp_path / "trials.jsonl").stat().st_size == size


def test_a_log_shorter_than_the_state_says_is_an_error(tmp_path):
    ck = Checkpoint(tmp_path)
    ck.save({"strategy": {}, "log_bytes": 100})
    with pytest.raises(CheckpointError, match="truncated"):
        Checkpoint(tmp_path).load()


def test_a_corrupt_state_is_an_error_that_says_what_to_do(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="move the directory away"):
        Checkpoint(tmp_path).load()


def test_no_temporary_file_is_left_behind(tmp_path):
    ck = Checkpoint(tmp_path)
    for i in range(5):
        ck.save({"strategy": {"i": i}, "log_bytes": 0})
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_resuming_with_another_search_space_is_refused(tmp_path):
    import redis

    from kubenas.queue.keys import SearchKeys
    from kubenas_controller.controller import Controller
    from tests.redis.harness import make_spec

    keys = SearchKeys("ns", "s")
    client = redis.Redis(port=1)  # never contacted: restore() reads only the directory
    first = Controller(make_spec(space="nasbench201"), keys, client, str(tmp_path))
    first.restore()
    first._fill()
    first._save_if_needed()
    with pytest.raises(CheckpointError, match="in use by another controller"):
        Controller(make_spec(space="nasbench201"), keys, client, str(tmp_path)).restore()
    first.checkpoint.unlock()
    with pytest.raises(CheckpointError, match="another search space"):
        Controller(make_spec(space="nasnet"), keys, client, str(tmp_path)).restore()
    with pytest.raises(CheckpointError, match="search 'ns/s'"):
        Controller(make_spec(space="nasbench201"), SearchKeys("ns", "other"), client, str(tmp_path)).restore()
    resumed = Controller(make_spec(space="nasbench201", max_trials=50), keys, client, str(tmp_path))
    resumed.restore()  # a bigger budget is fine
    assert resumed.tally.created == first.tally.created and set(resumed.inflight) == set(first.inflight)
