"""Write a genotype's network for full training elsewhere: TorchScript, ONNX, model.json.

Size. NASNet names a network "N @ P": N normal cells per stage, P filters in the
penultimate layer (NASNet-A 6 @ 768 on CIFAR-10). Here F is the first stage's
filters; each reduction doubles it and the last cell concatenates its outputs, so

    P = 4 * F * k,   k = hidden states the normal cell concatenates (a concat block
                         counts twice; DARTS: its 4 nodes; NAS-Bench-201: 1, its last node)

and `channels_for_penultimate` inverts it. (NASNet-A concatenates its k-2 input and
its five blocks, k = 6, so its 6 @ 768 is N=6, F=32.) A compound coefficient phi scales a
base size the EfficientNet way (Tan & Le 2019): depth N * 1.2**phi rounded up,
width F * 1.1**phi to a multiple of 4 (never more than 10% under), resolution
H * 1.15**phi to a multiple of 4, reported as the suggested input size.

Formats. TorchScript by `torch.jit.trace` of the eval-mode model (the cells loop
over Python data, which `torch.jit.script` cannot compile; traced in eval mode
they are static graphs, and batch and resolution stay free). ONNX by
`torch.onnx.export` (batch free, resolution fixed at the export's input shape):
the torch.export-based exporter when onnxscript is installed, otherwise the
TorchScript-based one (deprecated since torch 2.9).
Both files are inference graphs (batch norm uses running statistics, no drop
path, no auxiliary head); to train, rebuild the network from model.json:
`build_model(meta["genotype"], ModelConfig(**meta["model_config"]))`.

Trained weights (the final stage, `kubenas export --weights`): the network's state
dict in model.safetensors, with model.json's description in the file's metadata, so
the file alone rebuilds the network. A trained export carries its input normalisation
inside the graphs (`Normalised`): it takes images as they come (float NCHW in the
dataset's own units, e.g. RGB in [0, 1], any batch size), and model.json records the
mean, std, resolution and class names.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import math
import re
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubenas.errors import KubenasError
from kubenas.nn import ModelConfig, build_model, count_parameters, multiply_adds
from kubenas.spaces import space_of
from kubenas.spaces.nasnet import cell_outputs
from kubenas.spec import SKELETON_REDUCTIONS

FORMATS = ("torchscript", "onnx", "both")
# The sizes the spaces' papers train their final networks at: (N, F).
DEFAULT_SIZE = {"nasnet": (6, 32), "darts": (6, 36), "nasbench201": (5, 16)}
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # EfficientNet's depth, width, resolution bases
WIDTH_DIVISOR = 4
TORCHSCRIPT_FILE, ONNX_FILE, METADATA_FILE = "model.torchscript.pt", "model.onnx", "model.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_METADATA_KEY = "kubenas"  # model.json's description, in the safetensors file's metadata
GENOTYPE_FILE = "best_genotype.json"


# --- size ----------------------------------------------------------------------------

def penultimate_multiplier(genotype: dict) -> int:
    """k in P = 4 F k: how many cell-widths the last cell concatenates."""
    if genotype["space"] == "nasbench201":
        return 1
    blocks = genotype["normal"]
    return sum(2 if state >= 2 and blocks[state - 2].get("combine") == "concat" else 1
               for state in cell_outputs(genotype, "normal"))


def penultimate_filters(genotype: dict, channels: int) -> int:
    return 4 * channels * penultimate_multiplier(genotype)


def channels_for_penultimate(genotype: dict, filters: int) -> int:
    """The F whose penultimate layer is closest to `filters` (exact when it divides)."""
    return max(1, round(filters / (4 * penultimate_multiplier(genotype))))


def round_width(value: float, divisor: int = WIDTH_DIVISOR) -> int:
    """EfficientNet's rounding: nearest multiple of divisor, never 10% under."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def round_resolution(value: float) -> int:
    """Nearest multiple of 4: the networks halve the resolution twice."""
    return max(4, 4 * round(value / 4))


@dataclass(frozen=True)
class Size:
    cells: int  # N, normal cells per stage
    channels: int  # F, first stage's filters
    phi: float
    base_cells: int
    base_channels: int
    input_shape: tuple[int, int, int]  # what the graphs were exported (and costed) at
    suggested_input_shape: tuple[int, int, int]  # the resolution phi calls for


def compound_scale(cells: int, channels: int, phi: float, input_shape: tuple[int, int, int]) -> Size:
    """N and F scaled by phi (depth x1.2**phi up, width x1.1**phi); phi 0 keeps them as given."""
    if not math.isfinite(phi) or phi < 0:
        raise KubenasError(f"--phi: {phi} is not accepted; give a compound coefficient >= 0 (0 keeps N and F)")
    c, h, w = input_shape
    if phi == 0:
        return Size(cells, channels, 0.0, cells, channels, input_shape, input_shape)
    # The epsilon keeps 5 * 1.2 = 6.000000000000001 at 6.
    scaled_cells = math.ceil(cells * ALPHA ** phi - 1e-9)
    scaled_channels = round_width(channels * BETA ** phi)
    suggested = (c, round_resolution(h * GAMMA ** phi), round_resolution(w * GAMMA ** phi))
    return Size(scaled_cells, scaled_channels, float(phi), cells, channels, input_shape, suggested)


def plan_size(genotype: dict, cells: int | None = None, channels: int | None = None,
              penultimate: int | None = None, phi: float = 0.0,
              input_shape: tuple[int, int, int] = (3, 32, 32)) -> Size:
    """The base N and F (given, from a penultimate width, or the space's default), then phi."""
    default_cells, default_channels = DEFAULT_SIZE[genotype["space"]]
    if channels is not None and penultimate is not None:
        raise KubenasError("--channels and --penultimate both set the width; give one of them")
    if penultimate is not None:
        if penultimate < 1:
            raise KubenasError(f"--penultimate: {penultimate} is not accepted; give a number of filters >= 1")
        channels = channels_for_penultimate(genotype, penultimate)
    cells = default_cells if cells is None else cells
    channels = default_channels if channels is None else channels
    if cells < 1:
        raise KubenasError(f"--cells: {cells} is not accepted; give N >= 1 normal cells per stage")
    if channels < 2:
        raise KubenasError(f"--channels: {channels} is not accepted; give F >= 2 filters")
    shape = "x".join(map(str, input_shape))
    if any(v < 1 for v in input_shape):
        raise KubenasError(f"--input: {shape} is too small; every dimension must be at least 1 "
                           "(the smallest input the network runs on is 1x1x1)")
    return compound_scale(cells, channels, phi, input_shape)


# --- where the genotype comes from ---------------------------------------------------

def resolve_source(source: str, results_root: str | Path = "results") -> Path | str:
    """A genotype JSON file, a results directory holding best_genotype.json, or a
    search name looked up as RESULTS_ROOT/NAME/best_genotype.json ('-' is stdin)."""
    if source == "-":
        return source
    path = Path(source)
    if path.is_dir():
        genotype = path / GENOTYPE_FILE
        if not genotype.is_file():
            raise KubenasError(f"{source}: a directory without {GENOTYPE_FILE}; give a genotype JSON file or the "
                               "results directory of a search that has finished at least one trial")
        return genotype
    if path.is_file():
        return path
    named = Path(results_root) / source
    if named.is_dir():
        return resolve_source(str(named))
    raise KubenasError(f"{source}: no such genotype file or results directory, and no search of that name "
                       f"(looked for {named / GENOTYPE_FILE})")


# --- formats -------------------------------------------------------------------------

@contextmanager
def _quiet():
    """torch.jit and the ONNX exporters warn about their own deprecations and constant
    folding, and onnxscript logs its graph rewrites at INFO; the export either works (and is
    checked) or fails with its error."""
    chatty = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(chatty, levels):
            logger.setLevel(level)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path,
                       extra_files: dict[str, str] | None = None) -> float:
    """Trace the eval-mode model, save it, load it back and return the largest
    difference of its logits from the eager model's on a fresh batch of another size."""
    model.eval()
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files=extra_files or {})
        loaded = torch.jit.load(str(path), map_location="cpu")
    probe = torch.randn(example.shape[0] + 1, *example.shape[1:])
    with torch.no_grad():
        return max_abs_diff(loaded(probe), model(probe))


def onnx_exporter() -> str:
    """'dynamo' (torch.export-based, needs onnxscript) where it can run, else 'legacy'."""
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters
    return "dynamo" if has_dynamo and importlib.util.find_spec("onnxscript") is not None else "legacy"


def _run_onnx_exporter(model: nn.Module, example: torch.Tensor, path: str | Path, exporter: str) -> None:
    names = {"input_names": ["input"], "output_names": ["logits"]}
    # The batch stays free; the resolution is fixed at --input (simpler graphs).
    if exporter == "dynamo":
        torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False, **names)
    else:
        kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(model, (example,), str(path), dynamic_axes=axes, opset_version=17, **names, **kwargs)


def _error_summary(exc: BaseException) -> str:
    """One line from an exporter's error: its 'Exception summary' where it has one."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    if "Exception summary" in text:
        tail = text.split("Exception summary", 1)[1].split("(Refer", 1)[0]
        text = " ".join(line.strip() for line in tail.splitlines() if line.strip())
    return text.splitlines()[0] if text else type(exc).__name__


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, exporter: str = "auto",
                metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Export, then check the file with onnx.checker and, where onnxruntime is
    installed, compare its logits with the eager model's. Raises KubenasError
    with the exporter's own message when the export fails."""
    if importlib.util.find_spec("onnx") is None:
        raise KubenasError("ONNX export needs the onnx package (pip install 'kubenas[controller]'); "
                           "--format torchscript works without it")
    import onnx

    exporter = onnx_exporter() if exporter == "auto" else exporter
    if exporter not in ("dynamo", "legacy"):
        raise KubenasError(f"ONNX exporter {exporter!r} is not accepted; choose 'dynamo', 'legacy' or 'auto'")
    model.eval()
    try:
        with _quiet():
            _run_onnx_exporter(model, example, path, exporter)
    except Exception as exc:  # the exporters raise many types; the user gets their message
        raise KubenasError(f"ONNX export failed with torch {torch.__version__} ({exporter} exporter): "
                           f"{_error_summary(exc)}") from None

    proto = onnx.load(str(path))
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise KubenasError(f"ONNX check failed for {path}: {str(exc).strip().splitlines()[0]}") from None
    onnx.save(proto, str(path))
    info: dict[str, Any] = {
        "exporter": f"torch.onnx.export ({'torch.export-based' if exporter == 'dynamo' else 'TorchScript-based'})",
        "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "checker": "passed",
        "input": f"batch free, resolution fixed at {'x'.join(map(str, example.shape[1:]))}",
        "onnxruntime_max_abs_diff": None,
    }
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        probe = torch.randn(example.shape[0] + 1, *example.shape[1:])
        (out,) = session.run(["logits"], {"input": probe.numpy()})
        with torch.no_grad():
            diff = max_abs_diff(torch.from_numpy(out), model(probe))
        if not diff <= 1e-3:
            raise KubenasError(f"ONNX check failed: onnxruntime's logits differ from the model's by {diff:.3g}")
        info["onnxruntime_max_abs_diff"] = diff
    return info


# --- trained weights and the input normalisation --------------------------------------

class Normalised(nn.Module):
    """The network behind its own input normalisation: images as they come (float NCHW in the
    dataset's units, any batch size) are normalised with the training set's mean and std."""

    def __init__(self, network: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images - self.mean) / self.std)


def save_weights(state: dict[str, torch.Tensor], path: str | Path, description: dict[str, Any]) -> None:
    """The state dict as safetensors (contiguous CPU copies), with `description` as JSON in its metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(path), metadata={WEIGHTS_METADATA_KEY: json.dumps(description, sort_keys=True)})


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(the tensors, the description kubenas wrote into the file; {} for a file of other origin)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(WEIGHTS_METADATA_KEY)
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise KubenasError(f"--weights: {path} is not a readable safetensors file: {exc}") from None
    try:
        description = json.loads(text) if text else {}
    except ValueError:
        description = {}
    return tensors, description if isinstance(description, dict) else {}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load exactly the network's weights; a KubenasError naming what does not fit otherwise."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = [f"{k} {got[k]} vs {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    if missing or unexpected or wrong:
        raise KubenasError(f"--weights: {source} does not fit this network (N, F, classes, auxiliary head and the "
                           f"genotype must be those it was trained with): missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}, other shapes {wrong[:3]}")
    model.load_state_dict(state, strict=True)


def preprocessing(mean: list[float] | None, std: list[float] | None, input_shape: tuple[int, int, int],
                  class_names: list[str] | None, value_range: tuple[float, float] | None) -> dict[str, Any]:
    """model.json's account of what the model takes: it normalises inside itself."""
    c, h, w = input_shape
    inside = mean is not None and std is not None
    return {
        "input": f"float32 tensor N x {c} x {h} x {w} (NCHW), any batch size N",
        "value_range": list(value_range) if value_range else None,
        "normalisation_inside_model": inside,
        "mean": list(mean) if inside else None,
        "std": list(std) if inside else None,
        "resolution": [h, w],
        "class_names": list(class_names) if class_names else None,
        "note": ("give images as they come (no mean/std subtraction: the model does it)" if inside else
                 "the dataset recorded no normalisation: give images normalised as in training"),
    }


def trained_options(path: str | Path, genotype: dict, cells: int | None = None, channels: int | None = None,
                    phi: float = 0.0, num_classes: int | None = None,
                    input_shape: tuple[int, int, int] | None = None) -> tuple[Size, dict[str, Any]]:
    """The size and `export` arguments for trained weights (`kubenas export --weights`): the network
    as the weights file describes it (a kubenas export or final model), else as given."""
    weights, description = read_weights(path)
    options: dict[str, Any] = {"weights": weights, "weights_source": str(path)}
    if phi:
        raise KubenasError("--phi: trained weights cannot be rescaled; leave --phi out with --weights")
    config = description.get("model_config")
    if not config:  # a state dict of other origin: the shapes are checked against what is given
        size = plan_size(genotype, cells, channels, None, 0.0, input_shape or (3, 32, 32))
        return size, options
    expected = description.get("architecture_hash")
    got = space_of(genotype).hash({**genotype, "hparams": {}})
    if expected and expected != got:
        raise KubenasError(f"--weights: {path} holds the weights of architecture {expected}, not of this genotype "
                           f"({got}); give the genotype it was trained with (its model.json holds it)")
    cfg = _stored_model_config(config, path)
    for flag, given, trained in (("--cells", cells, cfg.cells_per_stage), ("--channels", channels, cfg.channels),
                                 ("--classes", num_classes, cfg.num_classes)):
        if given is not None and given != trained:
            raise KubenasError(f"{flag}: {given} is not what {path} was trained with ({trained}); leave it out")
    shape = description.get("input_shape") or (cfg.in_channels, 32, 32)
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
        raise KubenasError(f"--weights: {path}: the metadata's input_shape {shape!r} is not accepted; "
                           "give [channels, height, width] of positive integers")
    shape = tuple(shape)
    if input_shape is not None and tuple(input_shape) != shape and input_shape[0] != cfg.in_channels:
        raise KubenasError(f"--input: {'x'.join(map(str, input_shape))} has {input_shape[0]} channels; {path} was "
                           f"trained on {cfg.in_channels}")
    size = compound_scale(cfg.cells_per_stage, cfg.channels, 0.0, tuple(input_shape or shape))
    pre = description.get("preprocessing") or {}
    if not isinstance(pre, dict):
        raise KubenasError(f"--weights: {path}: the metadata's preprocessing is not a mapping "
                           f"(got {type(pre).__name__})")
    options.update(model_config=cfg, num_classes=cfg.num_classes, mean=pre.get("mean"), std=pre.get("std"),
                   class_names=pre.get("class_names"), value_range=pre.get("value_range"))
    return size, options


def _stored_model_config(config: Any, path: str | Path) -> ModelConfig:
    """The ModelConfig a weights file's metadata names, checked field by field: the metadata is
    user-editable text, and a bad field must be a KubenasError naming it, never a TypeError."""
    where = f"--weights: {path}: the metadata's model_config"
    if not isinstance(config, dict):
        raise KubenasError(f"{where} is not a mapping (got {type(config).__name__})")
    kinds = {f.name: type(f.default) for f in fields(ModelConfig)}  # every field has a default
    for key, value in config.items():
        kind = kinds.get(key)
        if kind is None:
            raise KubenasError(f"{where}.{key}: unknown field; accepted: {', '.join(kinds)}")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is bool:
            ok, wanted = isinstance(value, bool), "true or false"
        elif kind is int:
            ok, wanted = number and isinstance(value, int) and value >= 1, "an integer of at least 1"
        elif kind is float:  # drop_path
            ok, wanted = number and 0.0 <= value < 1.0, "a number in [0, 1)"
        else:  # skeleton
            ok, wanted = value in SKELETON_REDUCTIONS, f"one of {', '.join(SKELETON_REDUCTIONS)}"
        if not ok:
            raise KubenasError(f"{where}.{key}: {value!r} is not accepted; give {wanted}")
    return ModelConfig(**config)


# --- the whole export ----------------------------------------------------------------

def build(genotype: dict, size: Size, num_classes: int = 10, auxiliary: bool = False, drop_path: float = 0.0,
          seed: int = 0) -> tuple[nn.Module, ModelConfig]:
    """The network at this size, its weights drawn from `seed` (the global RNG is left alone)."""
    if num_classes < 1:
        raise KubenasError(f"--classes: {num_classes} is not accepted; give at least 1")
    if not 0.0 <= drop_path < 1.0:
        raise KubenasError(f"--drop-path: {drop_path} is not accepted; give a probability in [0, 1)")
    cfg = ModelConfig(channels=size.channels, cells_per_stage=size.cells, num_classes=num_classes,
                      in_channels=size.input_shape[0], auxiliary=auxiliary, drop_path=drop_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(genotype, cfg)
    return model.eval(), cfg


def describe(genotype: dict, size: Size, model: nn.Module, cfg: ModelConfig, seed: int) -> dict[str, Any]:
    """model.json without the files and checks: what the network is and costs."""
    space = space_of(genotype)
    penultimate = penultimate_filters(genotype, size.channels)
    return {
        "space": genotype["space"],
        "architecture_hash": space.hash({**genotype, "hparams": {}}),
        "genotype": genotype,
        "cells_per_stage": size.cells,
        "channels": size.channels,
        "penultimate_filters": penultimate,
        "size": f"{size.cells} @ {penultimate} (N @ penultimate filters, F={size.channels})",
        "phi": size.phi,
        "compound_scaling": {"alpha": ALPHA, "beta": BETA, "gamma": GAMMA, "base_cells": size.base_cells,
                             "base_channels": size.base_channels, "width_divisor": WIDTH_DIVISOR},
        "classes": cfg.num_classes,
        "input_shape": list(size.input_shape),
        "suggested_input_shape": list(size.suggested_input_shape),
        "parameters": count_parameters(model),
        "parameters_with_auxiliary": count_parameters(model, include_auxiliary=True),
        "multiply_adds": multiply_adds(model, size.input_shape),
        "model_config": asdict(cfg),
        "seed": seed,
        "torch_version": torch.__version__,
        "graphs": "inference (eval mode: batch norm running statistics, no drop path, no auxiliary head); "
                  "to train, rebuild with kubenas.nn.build_model(genotype, ModelConfig(**model_config))",
    }


def export(genotype: dict, output: str | Path, fmt: str, size: Size, num_classes: int = 10,
           auxiliary: bool = False, drop_path: float = 0.0, seed: int = 0, source: str | None = None,
           onnx_exporter_name: str = "auto", weights: dict[str, torch.Tensor] | None = None,
           weights_source: str = "the weights", model_config: ModelConfig | None = None,
           mean: list[float] | None = None, std: list[float] | None = None, class_names: list[str] | None = None,
           value_range: tuple[float, float] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the requested formats and model.json under `output`; returns model.json's content.
    With `weights` (a trained state dict) the network carries them, model.safetensors is written
    too, and `mean`/`std` put the input normalisation inside the graphs."""
    if fmt not in FORMATS:
        raise KubenasError(f"--format: {fmt!r} is not accepted; choose one of {list(FORMATS)}")
    genotype = space_of(genotype).validate_architecture(genotype)
    if model_config is not None:  # exactly the trained network's configuration
        cfg = model_config
        model = build_model(genotype, cfg).eval()
    else:
        model, cfg = build(genotype, size, num_classes, auxiliary, drop_path, seed)
    if weights is not None:
        load_weights(model, weights, weights_source)
    try:
        meta = describe(genotype, size, model, cfg, seed)  # runs the network once
    except RuntimeError as exc:
        shape = "x".join(map(str, size.input_shape))
        raise KubenasError(f"--input: the network cannot run on {shape}: {str(exc).splitlines()[0]}") from None
    if source is not None:
        meta["source"] = str(source)
    meta["weights"] = "trained" if weights is not None else f"untrained (initial weights from seed {seed})"
    meta["preprocessing"] = preprocessing(mean, std, size.input_shape, class_names, value_range)
    meta.update(extra or {})
    graph: nn.Module = Normalised(model, mean, std).eval() if mean is not None and std is not None else model
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise KubenasError(f"--output: {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KubenasError(f"--output: cannot create {out}: {exc.strerror or exc}; choose a directory you can write") from None
    embedded = json.dumps(meta, sort_keys=True)
    example = torch.randn(2, *size.input_shape)
    meta["files"] = {}
    if weights is not None:
        save_weights(model.state_dict(), out / WEIGHTS_FILE, meta)
        meta["files"]["safetensors"] = WEIGHTS_FILE
    if fmt in ("torchscript", "both"):
        diff = export_torchscript(graph, example, out / TORCHSCRIPT_FILE, {METADATA_FILE: embedded})
        if not diff <= 1e-4:
            raise KubenasError(f"TorchScript check failed: reloaded logits differ from the model's by {diff:.3g}")
        meta["files"]["torchscript"] = TORCHSCRIPT_FILE
        meta["torchscript"] = {"method": "torch.jit.trace in eval mode", "reload_max_abs_diff": diff}
    if fmt in ("onnx", "both"):
        try:
            meta["onnx"] = export_onnx(graph, example, out / ONNX_FILE, onnx_exporter_name, {"kubenas": embedded})
        except KubenasError as exc:
            if not meta["files"]:
                raise
            _write_metadata(out, meta)
            raise KubenasError(f"{exc} ({', '.join(meta['files'].values())} written to {out})") from None
        meta["files"]["onnx"] = ONNX_FILE
    _write_metadata(out, meta)
    return meta


def _write_metadata(out: Path, meta: dict[str, Any]) -> None:
    meta["files"]["metadata"] = METADATA_FILE
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
