"""The CUDA generators' states in a trial checkpoint. No GPU here, so CUDA is stood in for
where its functions are called (torch.cuda.*), to check that a GPU trainer saves and
restores one state per device; and a checkpoint that carries CUDA states (written on a GPU
node) resumes bit-for-bit on a CPU-only trainer: the CUDA path cannot break the CPU one."""

from __future__ import annotations

import pytest
import torch

from kubenas.training import TrainConfig, load_dataset, train_proxy
from kubenas.training.checkpoints import CheckpointInvalid, TrialCheckpointStore, capture, restore

torch.set_num_threads(1)
CELL = {"space": "nasbench201",
        "cell": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"}


class StandInCuda:
    """torch.cuda as a trainer with `devices` GPUs sees it, for the functions checkpoints call."""

    def __init__(self, monkeypatch, devices: int, initialized: bool = True):
        self.states = [torch.arange(16, dtype=torch.uint8) + i for i in range(devices)]
        self.restored: list[list[torch.Tensor]] = []
        self.read = 0
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", self._get)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: self.restored.append(list(states)))

    def _get(self) -> list[torch.Tensor]:
        self.read += 1
        return [s.clone() for s in self.states]


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer


def test_a_gpu_trainer_saves_and_restores_each_devices_generator(monkeypatch, tmp_path):
    cuda = StandInCuda(monkeypatch, devices=2)
    model, optimizer = _model_and_optimizer()
    state = capture("t1", 1, model, "h", {}, optimizer, progress={"curve": [{"epoch": 1, "val_acc": 0.5}]})
    assert sorted(k for k in state.rng_tensors if k.startswith("torch_cuda/")) == ["torch_cuda/0", "torch_cuda/1"]
    store = TrialCheckpointStore(tmp_path)
    store.save("t1", 1, state)
    loaded = store.load("t1", 1)  # through safetensors and back
    restore(loaded, *_model_and_optimizer())
    [restored] = cuda.restored
    assert [s.tolist() for s in restored] == [s.tolist() for s in cuda.states]


def test_cuda_is_left_alone_when_training_did_not_use_it(monkeypatch):
    """A GPU host training on the CPU: CUDA not initialised, so no state is read (reading
    would initialise CUDA) and none is saved; restoring sets none."""
    cuda = StandInCuda(monkeypatch, devices=1, initialized=False)
    model, optimizer = _model_and_optimizer()
    state = capture("t1", 1, model, "h", {}, optimizer)
    assert cuda.read == 0 and not any(k.startswith("torch_cuda/") for k in state.rng_tensors)
    restore(state, *_model_and_optimizer())
    assert cuda.restored == []


def test_states_for_fewer_gpus_than_the_trainer_has_are_not_half_restored(monkeypatch):
    model, optimizer = _model_and_optimizer()
    written = capture("t1", 1, model, "h", {}, optimizer)
    written.rng_tensors["torch_cuda/0"] = torch.zeros(16, dtype=torch.uint8)  # from a 1-GPU node
    cuda = StandInCuda(monkeypatch, devices=2)
    restore(written, *_model_and_optimizer())
    assert cuda.restored == []


def test_a_corrupt_cuda_state_is_refused_before_anything_changes(monkeypatch):
    StandInCuda(monkeypatch, devices=1)
    model, optimizer = _model_and_optimizer()
    state = capture("t1", 1, model, "h", {}, optimizer)
    state.rng_tensors["torch_cuda/0"] = torch.zeros(4, dtype=torch.float32)
    target, target_optimizer = _model_and_optimizer()
    with torch.no_grad():
        target.weight.add_(1.0)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointInvalid) as info:
        restore(state, target, target_optimizer)
    assert info.value.reason == "corrupt" and "CUDA RNG state" in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_a_checkpoint_from_a_gpu_node_resumes_bit_for_bit_on_a_cpu_trainer():
    """Real training on digits: epoch 1's checkpoint gets the CUDA entries a GPU node writes;
    resumed here (no CUDA), the trial ends exactly where an uninterrupted one does."""
    assert not torch.cuda.is_available()
    data = load_dataset("digits", train_subset=128, seed=0)
    cfg = TrainConfig(epochs=2, batch_size=32, channels=4, cells_per_stage=1, device="cpu", seed=5)
    whole = train_proxy(CELL, data, cfg)
    saved = []
    train_proxy(CELL, data, cfg, on_checkpoint=saved.append, on_epoch=lambda report: report.epoch < 1)
    after_first = next(s for s in saved if s.epoch == 1 and not s.step)
    after_first.rng_tensors["torch_cuda/0"] = torch.arange(16, dtype=torch.uint8)
    resumed = train_proxy(CELL, data, cfg, start=after_first)
    assert [r.val_acc for r in resumed.curve] == [r.val_acc for r in whole.curve]
    assert [r.train_loss for r in resumed.curve] == [r.train_loss for r in whole.curve]
