"""The proxy task: train a child network briefly and report validation accuracy.

One code path for CPU and CUDA. On CUDA the data sits on the GPU when it fits,
the model runs channels_last under bf16 autocast; on CPU everything is float32.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch.utils.data import DataLoader

from kubenas.errors import InvalidGenotype, describe_validation_error
from kubenas.nn import ModelConfig, build_model, count_parameters, multiply_adds
from kubenas.nn.ops import scheduled_drop_path
from kubenas.training.checkpoints import CheckpointInvalid, TrialCheckpoint, capture, restore
from kubenas.training.datasets import Augment, Splits

# Genotype hyperparameter names (camelCase, as in the spec) -> TrainConfig fields.
HPARAM_FIELDS = {
    "learningRate": "learning_rate",
    "weightDecay": "weight_decay",
    "momentum": "momentum",
    "batchSize": "batch_size",
    "epochs": "epochs",
    "dropPath": "drop_path",
}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-4
    drop_path: float = 0.0
    auxiliary_weight: float = 0.4
    grad_clip: float = 5.0
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    channels: int = 16  # F
    cells_per_stage: int = 2  # N
    auxiliary: bool = False
    augment: bool = True
    skeleton: str = "cifar"  # cifar | imagenet (training.skeleton)
    # The cosine learning-rate schedule spans schedule_epochs (None: epochs) and this run
    # enters it at epoch schedule_start: a PBT interval continues its member's schedule.
    schedule_epochs: Optional[int] = None
    schedule_start: int = 0

    def with_hparams(self, hparams: dict) -> "TrainConfig":
        """Apply a genotype's searched hyperparameters on top of the defaults, each
        within the bounds the spec gives the training field it replaces."""
        from kubenas.spec import TrainingSpec

        unknown = set(hparams) - set(HPARAM_FIELDS)
        if unknown:
            raise InvalidGenotype(f"genotype.hparams: {sorted(unknown)} cannot be applied; accepted: {sorted(HPARAM_FIELDS)}")
        try:
            checked = TrainingSpec.model_validate(hparams)
        except ValidationError as exc:
            raise InvalidGenotype(describe_validation_error(exc, "genotype.hparams")) from None
        return replace(self, **{field: getattr(checked, field) for key, field in HPARAM_FIELDS.items() if key in hparams})


@dataclass
class EpochReport:
    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float
    seconds: float
    images_per_second: float


@dataclass
class TrainOutcome:
    status: Literal["succeeded", "diverged", "stopped"]
    reward: float  # final validation accuracy in [0, 1]; 0 when diverged
    curve: list[EpochReport] = field(default_factory=list)
    reason: Optional[str] = None
    parameters: int = 0
    multiply_adds: int = 0
    seconds: float = 0.0
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)


class TrialInterrupted(Exception):
    """Raised between batches when the trainer must hand the trial back (SIGTERM)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"training.device: {name!r} was asked for but no CUDA device is visible")
    return device


def _augment(x: torch.Tensor, mirror_ok: bool, gen: torch.Generator, augment: Optional[Augment] = None) -> torch.Tensor:
    """Random translation by up to H/8 pixels (pad and crop) and, where it keeps labels, flips;
    or what `augment` (training.augmentation) asks for. In-memory batches only: streamed
    images are augmented by torchvision transforms as they are read (imagefolder.py)."""
    if augment is not None:
        return _augment_as_asked(x, augment, gen)
    n, _, h, w = x.shape
    out = _translate(x, max(1, h // 8), gen)
    if mirror_ok:
        flip = torch.rand(n, generator=gen, device=gen.device) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


def _augment_as_asked(x: torch.Tensor, augment: Augment, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    if augment.padding:
        x = _translate(x, augment.padding, gen)
    if augment.flip:
        flip = torch.rand(n, generator=gen, device=gen.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if augment.cutout:
        # Cutout (DeVries & Taylor 2017): a square centred anywhere, clipped at the border, set to 0
        # (the mean: the batch is normalised).
        cy = torch.randint(0, h, (n,), generator=gen, device=gen.device)
        cx = torch.randint(0, w, (n,), generator=gen, device=gen.device)
        half = augment.cutout // 2
        rows = torch.arange(h, device=x.device)[None] - cy[:, None] + half
        cols = torch.arange(w, device=x.device)[None] - cx[:, None] + half
        inside = ((rows >= 0) & (rows < augment.cutout))[:, :, None] & ((cols >= 0) & (cols < augment.cutout))[:, None, :]
        x = x.masked_fill(inside[:, None], 0.0)
    return x


def _translate(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Pad by `pad` zeros and crop back at a random offset per image."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None].expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :].expand(n, c, h, w)
    return out.gather(3, cols)


def _loader(dataset: Any, batches: list[list[int]], workers: int, pin: bool, seed: int) -> DataLoader:
    """Batches of a streamed dataset in the given order; the seed fixes the workers' augmentation."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin,
                      generator=torch.Generator().manual_seed(seed))


def _batches(data: Splits, train_x: Optional[torch.Tensor], train_y: Optional[torch.Tensor], order: torch.Tensor,
             first: int, steps: int, cfg: TrainConfig, gen: torch.Generator, device: torch.device,
             epoch: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(step, images, labels) of one epoch from `first` on, on the device and augmented; in-memory
    batches come from train_x and train_y (on the GPU where they fit)."""
    if data.streamed:
        batches = [order[s * cfg.batch_size:(s + 1) * cfg.batch_size].tolist() for s in range(first, steps)]
        loader = _loader(data.train_set, batches, data.loader_workers, device.type == "cuda",
                         cfg.seed * 100_003 + epoch * 1009 + first)
        for step, (xb, yb) in enumerate(loader, start=first):
            yield step, xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        return
    assert train_x is not None and train_y is not None
    for step in range(first, steps):
        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        xb = train_x[idx.to(train_x.device)].to(device, non_blocking=True)
        yb = train_y[idx.to(train_y.device)].to(device, non_blocking=True)
        if cfg.augment:
            xb = _augment(xb, data.mirror_ok, gen, data.augment) if xb.device == gen.device else xb
        yield step, xb, yb


def _accuracy_streamed(model: torch.nn.Module, data: Splits, device: torch.device, batch: int, amp: bool,
                       memory_format: torch.memory_format) -> float:
    model.eval()
    correct = seen = 0
    batches = [list(range(i, min(i + batch, len(data.val_set)))) for i in range(0, len(data.val_set), batch)]
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for xb, yb in _loader(data.val_set, batches, data.loader_workers, device.type == "cuda", 0):
            logits = model(xb.to(device, non_blocking=True).contiguous(memory_format=memory_format))
            correct += (logits.argmax(1) == yb.to(device)).sum().item()
            seen += len(yb)
    return correct / max(1, seen)


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
              batch: int, amp: bool, memory_format: torch.memory_format) -> float:
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for i in range(0, len(x), batch):
            xb = x[i:i + batch].to(device, non_blocking=True).contiguous(memory_format=memory_format)
            logits = model(xb)
            correct += (logits.argmax(1) == y[i:i + batch].to(device)).sum().item()
    return correct / max(1, len(x))


def train_proxy(
    genotype: dict,
    data: Splits,
    cfg: TrainConfig,
    on_epoch: Optional[Callable[[EpochReport], bool]] = None,
    interrupt: Optional[threading.Event] = None,
    start: Optional[TrialCheckpoint] = None,
    on_checkpoint: Optional[Callable[[TrialCheckpoint], None]] = None,
    checkpoint_seconds: Optional[float] = None,
    prepare_model: Optional[Callable[[torch.nn.Module], None]] = None,
) -> TrainOutcome:
    """Train `genotype` on `data`; `on_epoch` returning False stops early (the
    scheduler's stop signal); a set `interrupt` raises TrialInterrupted between batches.

    `on_checkpoint` receives the training state after every epoch (before `on_epoch`)
    and, every `checkpoint_seconds` within an epoch, between batches; `start` continues
    from such a state (CheckpointInvalid, before any training, when it does not fit) and
    first hands its last epoch to `on_epoch` again, so that a scheduler's decision on it is
    known. `prepare_model` may set the fresh network's weights (a warm start from a parent)."""
    cfg = cfg.with_hparams(genotype.get("hparams", {}))
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model_cfg = ModelConfig(channels=cfg.channels, cells_per_stage=cfg.cells_per_stage,
                            num_classes=data.num_classes, in_channels=data.input_shape[0],
                            auxiliary=cfg.auxiliary, drop_path=cfg.drop_path, skeleton=cfg.skeleton)
    model = build_model(genotype, model_cfg)
    if prepare_model is not None and start is None:
        prepare_model(model)
    params = count_parameters(model)
    madds = multiply_adds(model, data.input_shape)
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)

    # Keep the whole dataset on the GPU when it takes under a quarter of free memory.
    train_x, train_y, val_x, val_y = data.train_x, data.train_y, data.val_x, data.val_y
    if cuda and not data.streamed:
        free, _ = torch.cuda.mem_get_info(device)
        if (train_x.numel() + val_x.numel()) * 4 < free // 4:
            train_x, train_y = train_x.to(device), train_y.to(device)
            val_x, val_y = val_x.to(device), val_y.to(device)
    gen = torch.Generator(device=train_x.device if train_x is not None else "cpu").manual_seed(cfg.seed)

    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    steps_per_epoch = max(1, math.ceil(data.num_train / cfg.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=(cfg.schedule_epochs or cfg.epochs) * steps_per_epoch)
    if cfg.schedule_start and start is None:
        _enter_schedule(scheduler, cfg.schedule_start * steps_per_epoch)

    curve: list[EpochReport] = []
    first_epoch, first_step, resumed_order, sums = 0, 0, None, (0.0, 0, 0)
    if start is not None:
        mismatched = sorted(k for k, v in _resume_fields(cfg).items() if start.train_config.get(k) != v)
        if mismatched:
            raise CheckpointInvalid("mismatch", f"trial {start.trial_id}: the checkpoint was trained with other "
                                                f"settings ({', '.join(mismatched)})")
        restore(start, model, optimizer, scheduler, gen)
        curve = [EpochReport(**report) for report in start.curve]
        first_epoch, first_step = start.epoch, start.step
        if first_step:
            resumed_order = start.extra_tensors.get("order")
            if resumed_order is None or len(resumed_order) != data.num_train or first_step >= steps_per_epoch:
                raise CheckpointInvalid("corrupt", f"trial {start.trial_id}: a mid-epoch checkpoint without its "
                                                   f"batch order")
            mid = start.progress.get("epoch_sums") or [0.0, 0, 0]
            sums = (float(mid[0]), int(mid[1]), int(mid[2]))
    # The trial's training time before this process (trainingSeconds counts the trial's, not the attempt's);
    # checkpoints written before it was kept have none.
    earlier_seconds = 0.0 if start is None else start.progress.get("train_seconds", 0.0)
    if type(earlier_seconds) not in (int, float) or not 0 <= earlier_seconds < math.inf:
        raise CheckpointInvalid("corrupt", f"trial {start.trial_id}: train_seconds {earlier_seconds!r} is not "
                                           f"a number of seconds")
    started = time.perf_counter()
    saved_at = time.monotonic()

    def checkpoint(epoch: int, step: int = 0, **extra) -> None:
        nonlocal saved_at
        if on_checkpoint is None:
            return
        progress = {"curve": [asdict(r) for r in curve], "best": max((r.val_acc for r in curve), default=None),
                    "train_seconds": earlier_seconds + time.perf_counter() - started}
        if step:
            progress["epoch_sums"] = [loss_sum, correct, seen]
        on_checkpoint(capture("", epoch, model, "", _resume_fields(cfg), optimizer, scheduler, gen, progress,
                              step=step, extra=extra))
        saved_at = time.monotonic()

    def outcome(status, reward, reason=None) -> TrainOutcome:
        return TrainOutcome(status=status, reward=reward, curve=curve, reason=reason, parameters=params,
                            multiply_adds=madds, seconds=earlier_seconds + time.perf_counter() - started,
                            device=str(device))

    # Drop-path rises over the same span as the learning-rate schedule (a PBT member's epochs).
    total_steps = (cfg.schedule_epochs or cfg.epochs) * steps_per_epoch
    schedule_offset = cfg.schedule_start * steps_per_epoch
    if curve and not first_step and on_epoch is not None and on_epoch(curve[-1]) is False \
            and first_epoch < cfg.epochs:
        return outcome("stopped", curve[-1].val_acc, f"stopped by the scheduler after epoch {first_epoch}")
    for epoch in range(first_epoch, cfg.epochs):
        model.train()
        epoch_start = time.perf_counter()
        if resumed_order is not None:
            order, resumed_order = resumed_order.to(gen.device), None
            (loss_sum, correct, seen), skip = sums, first_step
        else:
            order = torch.randperm(data.num_train, generator=gen, device=gen.device)
            (loss_sum, correct, seen), skip = (0.0, 0, 0), 0
        if interrupt is not None and interrupt.is_set():
            raise TrialInterrupted(f"interrupted in epoch {epoch + 1}")
        for step, xb, yb in _batches(data, train_x, train_y, order, skip, steps_per_epoch, cfg, gen, device, epoch):
            if interrupt is not None and interrupt.is_set():
                raise TrialInterrupted(f"interrupted in epoch {epoch + 1}")
            model.set_drop_path(scheduled_drop_path(cfg.drop_path, schedule_offset + epoch * steps_per_epoch + step,
                                                     total_steps))
            xb = xb.contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                out = model(xb)
                logits, aux = out if isinstance(out, tuple) else (out, None)
                loss = F.cross_entropy(logits.float(), yb)
                if aux is not None:
                    loss = loss + cfg.auxiliary_weight * F.cross_entropy(aux.float(), yb)
            if not torch.isfinite(loss):
                return outcome("diverged", 0.0, f"loss became {loss.item()} in epoch {epoch + 1}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
            if (checkpoint_seconds and step + 1 < steps_per_epoch
                    and time.monotonic() - saved_at >= checkpoint_seconds):
                checkpoint(epoch, step + 1, order=order)
        train_seconds = time.perf_counter() - epoch_start
        if data.streamed:
            val_acc = _accuracy_streamed(model, data, device, max(256, cfg.batch_size), cuda, memory_format)
        else:
            val_acc = _accuracy(model, val_x, val_y, device, max(256, cfg.batch_size), cuda, memory_format)
        report = EpochReport(epoch=epoch + 1, train_loss=loss_sum / seen, train_acc=correct / seen, val_acc=val_acc,
                             seconds=time.perf_counter() - epoch_start, images_per_second=seen / train_seconds)
        curve.append(report)
        checkpoint(epoch + 1)
        if on_epoch is not None and on_epoch(report) is False and epoch + 1 < cfg.epochs:
            return outcome("stopped", val_acc, f"stopped by the scheduler after epoch {epoch + 1}")
    return outcome("succeeded", curve[-1].val_acc if curve else 0.0)


def _enter_schedule(scheduler: torch.optim.lr_scheduler.CosineAnnealingLR, steps: int) -> None:
    """Advance a fresh schedule by `steps` optimizer steps without training: the learning
    rate is then the one an uninterrupted run has at that point (scaled by this run's base
    rate). Stepped rather than computed so the arithmetic is the uninterrupted run's own."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        for _ in range(steps):
            scheduler.step()


def _resume_fields(cfg: TrainConfig) -> dict:
    """The settings a checkpoint must share with the run that continues it (not the device)."""
    fields = asdict(cfg)
    fields.pop("device")
    if fields["schedule_epochs"] is None and not fields["schedule_start"]:
        del fields["schedule_epochs"], fields["schedule_start"]  # as checkpoints from before the option
    if fields["skeleton"] == "cifar":
        fields.pop("skeleton")  # checkpoints from before the option have no skeleton: cifar
    return fields
