"""The ArchitectureSearch resource: spec and status models.

One source of truth: these models generate the CRD schema (`kubenas crd`),
validate manifests for `kubenas run`, and type the controller's config.
Field names are Kubernetes-style camelCase on the wire, snake_case in Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union, get_args

from pydantic import BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from kubenas.objectives import ACCURACY_NEEDED, MAX_OBJECTIVES
from kubenas.oneshot.parameters import ALGORITHM_PARAMETERS as ONE_SHOT_PARAMETERS
from kubenas.oneshot.parameters import BOUNDS as ONE_SHOT_BOUNDS
from kubenas.spaces.config import CamelModel, HyperparameterName, SearchSpaceSpec

GROUP = "kubenas.io"
VERSION = "v1alpha1"
KIND = "ArchitectureSearch"
PLURAL = "architecturesearches"
API_VERSION = f"{GROUP}/{VERSION}"

# The strategy registry must offer exactly these (a test checks it).
STRATEGY_NAMES = ("random", "ppo", "reinforce", "evolution", "local-search", "tpe", "gp-bo", "bohb", "pbt", "enas", "darts", "spos",
                  "nsga2", "parego")
# The strategies that can optimise several objective.metrics at once (the others learn from one number).
MULTI_OBJECTIVE_STRATEGIES = ("random", "evolution", "local-search", "nsga2", "parego")
# The parameters each strategy accepts, with their JSON types: the CRD refuses an
# unknown name or a wrong type at admission, and so does `kubenas run`. Names are
# camelCase like the rest of the manifest; strategy_keyword_arguments() turns them into
# the constructors' snake_case keywords (generically, so a new entry needs nothing else).
# tests/unit/test_spec_models.py checks this table against the strategies' constructors.
STRATEGY_PARAMETERS: dict[str, dict[str, str]] = {
    "random": {},
    "evolution": {"population": "integer", "sample": "integer", "inheritWeights": "boolean"},
    "local-search": {"initial": "integer", "inheritWeights": "boolean"},
    "tpe": {"multivariate": "boolean", "group": "boolean", "nStartupTrials": "integer",
            "nEiCandidates": "integer", "constantLiar": "boolean"},
    "ppo": {"clip": "number", "epochs": "integer", "hidden": "integer", "lr": "number",
            "entropyWeight": "number", "baselineDecay": "number", "batch": "integer"},
    "reinforce": {"hidden": "integer", "lr": "number", "entropyWeight": "number",
                  "baselineDecay": "number", "batch": "integer"},
    "gp-bo": {"initial": "integer", "acquisition": "string", "beta": "number", "warp": "string",
              "ceiling": "number", "ard": "string", "additive": "boolean", "exhaustiveLimit": "integer",
              "candidates": "integer", "refitEvery": "integer", "believer": "boolean"},
    "bohb": {"maxEpochs": "integer", "minEpochs": "integer", "eta": "integer", "brackets": "integer",
             "randomFraction": "number", "minPoints": "integer", "topFraction": "number", "samples": "integer",
             "bandwidthFactor": "number", "minBandwidth": "number"},
    "pbt": {"population": "integer", "perturbationInterval": "integer", "maxEpochs": "integer",
            "quantileFraction": "number", "resampleProbability": "number", "burnInPeriod": "integer"},
    "nsga2": {"population": "integer", "mutationProbability": "number", "crossoverProbability": "number",
              "swappingProbability": "number"},
    "parego": {"initial": "integer", "acquisition": "string", "beta": "number", "warp": "string",
               "ceiling": "number", "ard": "string", "additive": "boolean", "exhaustiveLimit": "integer",
               "candidates": "integer", "refitEvery": "integer", "believer": "boolean", "rho": "number"},
    # One-shot: the supernet worker's parameters (kubenas/oneshot/parameters.py, which must match).
    "enas": {"topK": "integer", "supernetEpochs": "integer", "calibrationBatches": "integer",
             "fineTuneSteps": "integer", "policySteps": "integer", "policySamples": "integer",
             "policyLearningRate": "number", "entropyWeight": "number", "baselineDecay": "number",
             "hidden": "integer"},
    "darts": {"topK": "integer", "supernetEpochs": "integer", "calibrationBatches": "integer",
              "fineTuneSteps": "integer", "order": "integer", "archLearningRate": "number",
              "archWeightDecay": "number", "maxSkips": "integer"},
    "spos": {"topK": "integer", "supernetEpochs": "integer", "calibrationBatches": "integer",
             "fineTuneSteps": "integer", "evolutionPopulation": "integer", "evolutionCycles": "integer",
             "mutationProbability": "number"},
}
_UPPER = re.compile(r"(?<=[a-z0-9])([A-Z])")


def strategy_keyword(name: str) -> str:
    """A manifest's parameter name as the strategy's keyword argument: nStartupTrials -> n_startup_trials."""
    return _UPPER.sub(r"_\1", name).lower()


def strategy_parameter_name(keyword: str) -> str:
    """A strategy's keyword argument as the manifest spells it: n_startup_trials -> nStartupTrials."""
    head, *rest = keyword.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def strategy_keyword_arguments(parameters: dict[str, Any]) -> dict[str, Any]:
    """strategy.parameters (camelCase, as validated) -> the strategy constructor's keyword arguments."""
    return {strategy_keyword(name): value for name, value in parameters.items()}


def camel_case_hint(name: str, accepted: Any) -> Optional[str]:
    """The accepted camelCase name that `name` spells in snake_case (inherit_weights -> inheritWeights), if any."""
    camel = strategy_parameter_name(name)
    return camel if camel != name and camel in accepted else None


def unknown_strategy_parameter(algorithm: str, name: str, accepted: Any) -> str:
    """Why `name` is refused for `algorithm`, with a hint when it is a snake_case spelling of an accepted name."""
    camel = camel_case_hint(name, accepted)
    if camel:
        return f"strategy.parameters.{name}: did you mean {camel}? (parameter names are camelCase)"
    return (f"strategy.parameters.{name}: {algorithm} has no parameter {name!r}; "
            f"accepted: {sorted(accepted) or 'none'}")
# A field marked so (json_schema_extra) cannot change once the search exists: kubenas/crd.py
# turns the mark into a CEL transition rule. What a running search is built from is
# immutable; the budget, suspend and the pod settings stay editable.
IMMUTABLE: dict[str, Any] = {"x-kubenas-immutable": True}
DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(s|m|h|d))+$")
ParamValue = Union[bool, int, float, str]
QUANTITY = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$"
# Extended resources (GPUs) are always domain-prefixed: nvidia.com/gpu, amd.com/gpu, gpu.intel.com/i915.
RESOURCE_NAME = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,}/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"


def _number_to_quantity(value: Any) -> Any:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# A Kubernetes quantity, written as in a pod spec: cpu: 4, cpu: 500m, memory: 16Gi.
# Numbers are accepted (as kubectl does) and kept as strings.
Quantity = Annotated[
    str,
    BeforeValidator(_number_to_quantity),
    Field(pattern=QUANTITY),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": QUANTITY,
                    "x-kubernetes-int-or-string": True}),
]


class SpecModel(CamelModel):
    """A section of the spec: numbers must be numbers (a quoted "10" is refused, as the
    API server refuses it) and finite."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)


def cel_rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """CEL rules (rule, message) that the CRD carries beside a pydantic validator of the same check."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as 90s, 30m, 1h30m or 2d."""
    if not DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration such as 30m, 2h or 1h30m")
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * units[u] for n, _, u in re.findall(r"([0-9]+(\.[0-9]+)?)([smhd])", text))


class EarlyStoppingSpec(SpecModel):
    algorithm: Literal["none", "median", "asha", "hyperband"] = Field(
        default="none", description="median: Katib/Vizier median stopping; asha/hyperband: successive halving.")
    min_epochs: int = Field(default=1, ge=1, le=1000, description="Epochs before a trial may be stopped (the lowest rung).")
    reduction_factor: int = Field(default=3, ge=2, le=10, description="eta: 1/eta of trials is promoted per rung.")
    min_trials: int = Field(default=5, ge=1, le=1000, description="median: completed trials needed before stopping any.")


def _parameter_types() -> dict[str, str]:
    """Every strategy parameter's JSON type (a name means the same type in every strategy)."""
    types: dict[str, str] = {}
    for accepted in STRATEGY_PARAMETERS.values():
        for name, kind in accepted.items():
            if types.setdefault(name, kind) != kind:
                raise RuntimeError(f"strategy parameter {name!r} has two types: {types[name]} and {kind}")
    return types


def strategy_parameters_schema() -> dict[str, Any]:
    """The CRD's schema of strategy.parameters: each known name with its type, so the API
    server refuses a wrong type (and kubectl an unknown name) at admission."""
    return {"type": "object", "properties": {name: {"type": kind} for name, kind in sorted(_parameter_types().items())}}


def strategy_parameter_rules() -> dict[str, Any]:
    """CEL: a parameter only for the algorithms that have it."""
    rules = []
    for name in sorted(_parameter_types()):
        owners = [a for a, accepted in STRATEGY_PARAMETERS.items() if name in accepted]
        listed = ", ".join(f"'{a}'" for a in owners)
        rules.append((f"!has(self.parameters) || !has(self.parameters.{name}) || self.algorithm in [{listed}]",
                      f"strategy.parameters.{name}: only {' and '.join(owners)} {'has' if len(owners) == 1 else 'have'} "
                      f"this parameter"))
    return cel_rules(*rules)


class StrategySpec(SpecModel):
    algorithm: Literal[STRATEGY_NAMES] = Field(default="random", description="The search strategy.")  # type: ignore[valid-type]
    parameters: Annotated[dict[str, ParamValue], WithJsonSchema(strategy_parameters_schema())] = Field(
        default_factory=dict, description="Strategy parameters, e.g. population: 10 and sample: 3 for evolution; names as in `kubenas bench strategies --help`.")
    repeat_evaluations: bool = Field(
        default=False, description="Train an architecture again when it was already evaluated (otherwise reuse its result).")

    model_config = ConfigDict(json_schema_extra=lambda schema, cls: schema.update(strategy_parameter_rules()))

    @model_validator(mode="after")
    def _known_parameters(self) -> "StrategySpec":
        accepted = STRATEGY_PARAMETERS.get(self.algorithm, {})
        for name, value in self.parameters.items():
            if name not in accepted:
                raise ValueError(unknown_strategy_parameter(self.algorithm, name, accepted))
            if not _has_json_type(value, accepted[name]):
                raise ValueError(f"strategy.parameters.{name}: {value!r} is not accepted; "
                                 f"{self.algorithm} wants {_A[accepted[name]]}")
            if self.algorithm in ONE_SHOT_PARAMETERS:  # the supernet worker's ranges, refused before it runs
                low, high = ONE_SHOT_BOUNDS[strategy_keyword(name)]
                if not low <= value <= high:
                    raise ValueError(f"strategy.parameters.{name}: {value!r} is not accepted; "
                                     f"{self.algorithm} wants {_A[accepted[name]]} in [{low:g}, {high:g}]")
        return self


_A = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string"}


def _has_json_type(value: Any, kind: str) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "integer":
        return isinstance(value, int)
    if kind == "number":
        return isinstance(value, (int, float))
    return isinstance(value, str)


class ConstraintsSpec(SpecModel):
    max_parameters: Optional[int] = Field(
        default=None, ge=1000, description="Hard limit, checked before training (no network has fewer than 1000).")
    max_multiply_adds: Optional[int] = Field(default=None, ge=1, description="Hard limit, checked before training.")


class CostPenaltySpec(SpecModel):
    """MnasNet's soft constraint: reward = accuracy * (cost / target) ** weight."""

    metric: Literal["parameters", "multiplyAdds", "latencySeconds"] = "multiplyAdds"
    target: float = Field(gt=0, le=1e18, description="The cost the search aims at.")
    weight: float = Field(default=-0.07, ge=-1, le=0, description="w in MnasNet; -0.07 there.")


_GOAL_OF_METRIC = (
    "self.goal == (self.name == 'validationAccuracy' ? 'maximize' : 'minimize')",
    "objective.metrics: validationAccuracy can only be maximized; parameters, multiplyAdds, latency and "
    "trainingSeconds only minimized")
_METRICS_ONCE = ("!has(self.metrics) || self.metrics.all(m, self.metrics.exists_one(n, n.name == m.name))",
                 "objective.metrics: each metric may be named once")
_METRICS_NEED_ACCURACY = ("!has(self.metrics) || self.metrics.exists(m, m.name == 'validationAccuracy')",
                          f"objective.metrics: {ACCURACY_NEEDED}")
_METRICS_OR_PENALTY = (
    "!has(self.metrics) || size(self.metrics) <= 1 || !has(self.costPenalty)",
    "objective.costPenalty: cannot be combined with several objective.metrics (the front already trades "
    "accuracy for cost); drop one of them")


class MetricSpec(SpecModel):
    """One objective of a multi-objective search (kubenas.objectives.METRIC_GOALS)."""

    name: Literal["validationAccuracy", "parameters", "multiplyAdds", "latency", "trainingSeconds"] = Field(
        description="validationAccuracy (maximize); parameters, multiplyAdds, latency (seconds per image on the "
                    "trainer's device), trainingSeconds (minimize).")
    goal: Literal["maximize", "minimize"] = Field(description="maximize for validationAccuracy, minimize for the others.")

    model_config = ConfigDict(json_schema_extra=cel_rules(_GOAL_OF_METRIC))

    @model_validator(mode="after")
    def _goal_of_the_metric(self) -> "MetricSpec":
        from kubenas.objectives import METRIC_GOALS

        if self.goal != METRIC_GOALS[self.name]:
            raise ValueError(f"objective.metrics: {self.name} can only be {METRIC_GOALS[self.name]}d, not {self.goal}d")
        return self


class LatencySpec(SpecModel):
    """Where latency comes from: a lookup table made on the target device (`kubenas latency-table`)."""

    table: str = Field(
        min_length=1, max_length=4096,
        description="Path of the JSON table, readable by the controller (locally: relative to the working "
                    "directory). Latency is then the table's prediction for the device it was made on, "
                    "whatever device the trainers have, instead of being measured on the trainer.")


class ObjectiveSpec(SpecModel):
    metric: Literal["validationAccuracy"] = "validationAccuracy"
    goal: Literal["maximize"] = "maximize"
    metrics: Optional[list[MetricSpec]] = Field(
        default=None, min_length=1, max_length=MAX_OBJECTIVES,
        description=f"Several objectives (at most {MAX_OBJECTIVES}, validationAccuracy among them): the search "
                    "keeps the Pareto front of them, e.g. [{name: validationAccuracy, goal: maximize}, "
                    "{name: parameters, goal: minimize}]. Replaces metric and goal; strategy.algorithm random, evolution, local-search, nsga2 or parego.")
    target: Optional[float] = Field(default=None, ge=0, le=1, description="Stop the search once a reward reaches this.")
    constraints: ConstraintsSpec = Field(default_factory=ConstraintsSpec)
    cost_penalty: Optional[CostPenaltySpec] = None
    latency: Optional[LatencySpec] = Field(
        default=None, description="Predict latency from a table made on the target device (see latency.table).")

    model_config = ConfigDict(json_schema_extra=cel_rules(_METRICS_ONCE, _METRICS_NEED_ACCURACY, _METRICS_OR_PENALTY))

    @property
    def uses_latency(self) -> bool:
        """Whether latency is an objective or the cost penalty's metric."""
        return (any(m.name == "latency" for m in self.metrics or [])
                or (self.cost_penalty is not None and self.cost_penalty.metric == "latencySeconds"))

    @model_validator(mode="after")
    def _latency_table_needs_latency(self) -> "ObjectiveSpec":
        if self.latency is not None and not self.uses_latency:
            raise ValueError("objective.latency: a latency table is used only when latency is one of "
                             "objective.metrics or costPenalty.metric is latencySeconds; add one or drop it")
        return self

    @model_validator(mode="after")
    def _metrics_make_sense(self) -> "ObjectiveSpec":
        names = [m.name for m in self.metrics or []]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"objective.metrics: {twice[0]} is named {names.count(twice[0])} times; "
                             "each metric may be named once")
        if names and "validationAccuracy" not in names:
            raise ValueError(_METRICS_NEED_ACCURACY[1])
        if len(names) > 1 and self.cost_penalty is not None:
            raise ValueError(_METRICS_OR_PENALTY[1])
        return self


class BudgetSpec(SpecModel):
    max_trials: int = Field(default=100, ge=1, le=1_000_000, description="Child networks to train.")
    max_duration: Optional[str] = Field(
        default=None, pattern=DURATION.pattern, max_length=32, description="Wall-clock limit such as 12h or 1h30m.",
        json_schema_extra=cel_rules(("self.matches('[1-9]')", "spec.budget.maxDuration: must be longer than zero")))
    max_failed_trials: int = Field(default=10, ge=0, le=1_000_000, description="Fail the search past this many failed trials.")
    parallelism: int = Field(default=2, ge=1, le=1024, description="Trainers (the scale subresource's replicas).")

    @field_validator("max_duration")
    @classmethod
    def _duration(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and parse_duration(value) <= 0:
            raise ValueError(f"{value!r} must be longer than zero, such as 30m or 2h")
        return value

    @property
    def max_duration_seconds(self) -> Optional[float]:
        return parse_duration(self.max_duration) if self.max_duration else None


# Stride-2 steps of each network skeleton between the input and the classifier (kubenas/nn/networks.py):
# an input smaller than 2 ** reductions pixels would shrink to nothing.
SKELETON_REDUCTIONS = {"cifar": 2, "imagenet": 5}
# Height and width of the fixed datasets' images (imagefolder's is training.dataset.resolution).
DATASET_RESOLUTIONS = {"digits": 8, "distorted-digits": 8, "cifar10": 32, "cifar100": 32}
# Their images before the split (torch-free copy of kubenas/training/datasets.py's; a test compares).
DATASET_IMAGES = {"digits": 1797, "cifar10": 50_000, "cifar100": 50_000}


class DatasetSpec(SpecModel):
    name: Literal["digits", "distorted-digits", "cifar10", "cifar100", "npz", "imagefolder"] = Field(
        default="digits", description="digits is bundled with scikit-learn (offline); distorted-digits is the same "
                                      "digits, each rotated, scaled, shifted and noised, with a fixed split (700 "
                                      "training digits, 550x4 validation, 547x4 test images: the task of "
                                      "benchmarks/data/digits-curves.csv); npz is your own x/y arrays; "
                                      "imagefolder is your own images, one subdirectory per class.")
    root: Optional[str] = Field(
        default=None, max_length=4096,
        description="Directory of the torchvision files, the .npz file, or the imagefolder directory (inside the "
                    "pod). imagefolder: either train/ and validation/ (and optionally test/) subdirectories, each "
                    "with the same class subdirectories, or the class subdirectories themselves (one tree, split "
                    "by validationFraction and testFraction).")
    download: bool = Field(default=False, description="Download when missing (needs network access from the pods).")
    validation_fraction: float = Field(
        default=0.2, gt=0, le=0.5, description="The share of the images kept for validation (at most half); "
                                               "imagefolder: only for a single tree (no train/ directory); "
                                               "distorted-digits: leave it out (its split is fixed).")
    test_fraction: float = Field(
        default=0.0, ge=0, le=0.5,
        description="imagefolder, single tree: the share of the images held out as the test split (the same "
                    "images whatever the seed; never trained or validated on). With train/ and validation/ "
                    "directories the test split is test/.")
    train_subset: Optional[int] = Field(
        default=None, ge=10, description="Train on only this many images (a cheaper proxy); distorted-digits: the "
                                         "first this many of its 700 training digits (validation stays whole).")
    resolution: Optional[int] = Field(
        default=None, ge=4, le=4096,
        description="imagefolder: images are resized (shorter side) and centre-cropped to this many pixels "
                    "square (default 32); the other datasets keep their own size.")
    loader_workers: int = Field(
        default=0, ge=0, le=64,
        description="imagefolder read from disk: DataLoader worker processes (0: read in the trainer process).")
    cache_limit_mib: int = Field(
        default=1024, ge=0, le=1_048_576, alias="cacheLimitMiB",
        description="imagefolder: decode the images once and keep them in memory when they take at most this "
                    "many MiB (as float32); larger datasets are read from disk every epoch (0: never keep them).")
    mean: Optional[list[float]] = Field(
        default=None, min_length=1, max_length=3,
        description="Per-channel mean of the inputs in [0, 1] (default: measured on the training split).")
    std: Optional[list[float]] = Field(
        default=None, min_length=1, max_length=3,
        description="Per-channel standard deviation, each above 0 (default: measured on the training split).")

    @model_validator(mode="after")
    def _imagefolder_fields(self) -> "DatasetSpec":
        if self.name != "imagefolder":
            for name, value in (("resolution", self.resolution), ("testFraction", self.test_fraction or None)):
                if value is not None:
                    raise ValueError(f"training.dataset.{name}: only imagefolder accepts it ({self.name} "
                                     "has its own images and split)")
        # The default is what the API server fills in: only another value is refused.
        if self.name == "distorted-digits" and \
                self.validation_fraction != type(self).model_fields["validation_fraction"].default:
            raise ValueError(f"training.dataset.validationFraction: {self.validation_fraction} is not accepted with "
                             "distorted-digits, whose split is fixed (700 training, 550x4 validation, 547x4 test "
                             "images); leave it out (trainSubset trains on fewer digits)")
        if (self.mean is None) != (self.std is None):
            raise ValueError("training.dataset.mean and training.dataset.std: give both or neither")
        if self.std is not None and (len(self.std) != len(self.mean or []) or min(self.std) <= 0):
            raise ValueError(f"training.dataset.std: {self.std} is not accepted; give one value above 0 per "
                             f"value of training.dataset.mean ({self.mean})")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError(f"training.dataset.testFraction: {self.test_fraction} with validationFraction "
                             f"{self.validation_fraction} leaves under a tenth of the images to train on")
        return self

    @property
    def image_size(self) -> Optional[int]:
        """Height and width of the images the networks see (None: an npz, known once read)."""
        if self.name == "imagefolder":
            return self.resolution or 32
        return DATASET_RESOLUTIONS.get(self.name)


class AugmentationSpec(SpecModel):
    """Training-time augmentation (validation and test images are never augmented)."""

    random_crop: bool = Field(default=False, description="Pad by `padding` pixels and crop at a random place.")
    padding: int = Field(default=4, ge=0, le=256, description="Padding of randomCrop, in pixels.")
    horizontal_flip: bool = Field(default=False, description="Mirror half of the images (only where that keeps the label).")
    cutout: int = Field(default=0, ge=0, le=4096,
                        description="Side in pixels of a square erased at a random place (DeVries & Taylor 2017; "
                                    "NASNet trained with 16 on CIFAR); 0: off.")


class TrainingSpec(SpecModel):
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=64, ge=1, le=65536)
    learning_rate: float = Field(default=0.05, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=3e-4, ge=0, le=1)
    drop_path: float = Field(default=0.0, ge=0, lt=1)
    cells_per_stage: int = Field(default=2, ge=1, le=32, description="N: normal cells per stage.")
    channels: int = Field(default=16, ge=2, le=4096, description="F: filters of the first stage.")
    auxiliary_head: bool = False
    seed: int = Field(default=0, ge=0)
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    skeleton: Literal["cifar", "imagenet"] = Field(
        default="cifar", description="The layout around the cells: cifar (a stride-1 stem; for small images) or "
                                     "imagenet (NASNet's: a stride-2 stem and two reduction cells before the "
                                     "stages; for 64 pixels and more). NASNet and DARTS spaces only.")
    augmentation: Optional[AugmentationSpec] = Field(
        default=None, description="Unset: each dataset's default (digits, npz and CIFAR: random translation by an "
                                  "eighth of the size, CIFAR also flips; imagefolder: none).")

    @model_validator(mode="after")
    def _resolution_fits_the_skeleton(self) -> "TrainingSpec":
        size = self.dataset.image_size
        smallest = 2 ** SKELETON_REDUCTIONS[self.skeleton]
        if size is not None and size < smallest:
            field = "training.dataset.resolution" if self.dataset.name == "imagefolder" else "training.skeleton"
            raise ValueError(f"{field}: {size}-pixel images of {self.dataset.name} are too small for the "
                             f"{self.skeleton} skeleton, which halves them {SKELETON_REDUCTIONS[self.skeleton]} "
                             f"times; it needs at least {smallest} pixels")
        return self


class FinalSpec(SpecModel):
    """The final stage: once the search ends, its best architectures (distinct by canonical hash)
    are trained again at the final size with the final recipe, through the same trainers; the best
    by validation accuracy is exported with its trained weights and tested once on the test split."""

    top_k: int = Field(default=5, ge=1, le=50, description="How many of the search's best architectures to train again.")
    epochs: int = Field(default=20, ge=1, le=1000, description="Epochs of each final training run.")
    cells_per_stage: Optional[int] = Field(
        default=None, ge=1, le=32, description="N of the final networks (default: training.cellsPerStage).")
    channels: Optional[int] = Field(
        default=None, ge=2, le=4096, description="F of the final networks (default: training.channels).")
    phi: float = Field(
        default=0.0, ge=0, le=8, description="Compound scaling of N and F (EfficientNet: depth x1.2**phi, "
                                             "width x1.1**phi); 0 keeps them.")
    auxiliary_head: bool = Field(default=True, description="Train with NASNet's auxiliary head (weight 0.4).")
    drop_path: float = Field(default=0.1, ge=0, lt=1, description="Drop-path probability of the final training.")
    learning_rate: Optional[float] = Field(default=None, gt=0, le=10,
                                           description="Default: training.learningRate.")
    augmentation: Optional[AugmentationSpec] = Field(
        default=None, description="The final training's augmentation, e.g. cutout: 16 as NASNet's final training "
                                  "(default: training.augmentation).")


class Toleration(SpecModel):
    """A core/v1 Toleration."""

    key: Optional[str] = Field(default=None, max_length=316)
    operator: Optional[Literal["Exists", "Equal"]] = None
    value: Optional[str] = Field(default=None, max_length=63)
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None
    toleration_seconds: Optional[int] = None


class EnvVar(SpecModel):
    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str = ""


class ResourcesSpec(SpecModel):
    requests: dict[str, Quantity] = Field(default_factory=dict, description="e.g. cpu: 4, memory: 16Gi")
    limits: dict[str, Quantity] = Field(default_factory=dict, description="e.g. memory: 32Gi (GPUs: use gpus)")


class PodSettings(SpecModel):
    """Pod settings of the trainers or of the controller."""

    image: Optional[str] = Field(default=None, max_length=512, description="Defaults to the operator's configured image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    gpus: int = Field(default=0, ge=0, le=64, description="GPUs per pod, requested as a limit of gpuResourceName.")
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu", min_length=1, max_length=253, pattern=RESOURCE_NAME,
        description="The extended resource of the GPUs: nvidia.com/gpu, amd.com/gpu, ...")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    affinity: Optional[dict[str, Any]] = Field(default=None, description="A core/v1 Affinity, passed through.")
    priority_class_name: Optional[str] = Field(default=None, max_length=253)
    env: list[EnvVar] = Field(default_factory=list, max_length=256)
    volumes: list[dict[str, Any]] = Field(
        default_factory=list, max_length=64, description="core/v1 Volumes, e.g. a PersistentVolumeClaim with the dataset.")
    volume_mounts: list[dict[str, Any]] = Field(
        default_factory=list, max_length=64, description="core/v1 VolumeMounts of the volumes, e.g. at training.dataset.root.")


class TrainerPodSettings(PodSettings):
    """The trainers' pod settings: those of every pod, and how many trials share a GPU."""

    # Spelled trialsPerGPU (as GPU is spelled elsewhere in Kubernetes), not the generated trialsPerGpu.
    trials_per_gpu: int = Field(
        default=1, ge=1, le=16, alias="trialsPerGPU",
        description="Trainer processes per trainer pod, each training its own trial at the same time on the "
                    "pod's GPU(s) (or CPU): several small trials keep one GPU busy. Each process is a trainer "
                    "of its own (a consumer of the queue); the pod's memory must hold them all.")


class SecretKeyRef(SpecModel):
    name: str = Field(min_length=1, max_length=253, description="A Secret in the search's namespace.")
    key: str = Field(default="url", min_length=1, max_length=253)


class PersistenceSpec(SpecModel):
    enabled: bool = Field(
        default=False, description="Keep the search's state on PersistentVolumeClaims: Redis' append-only file "
                                   "and the controller's checkpoint (otherwise both live as long as their pods).")
    size: str = Field(default="1Gi", pattern=QUANTITY, max_length=64)
    storage_class_name: Optional[str] = Field(default=None, max_length=253)


class ArtifactsSpec(SpecModel):
    """The search's artifact store in a cluster: trial checkpoints on a volume that every trainer
    (and the controller, which prunes what is no longer needed) mounts. `kubenas run` always
    uses <output>/artifacts and ignores these settings."""

    enabled: bool = Field(
        default=False, description="Checkpoint every trial after each epoch, so that a preempted or crashed "
                                   "trial resumes where it stopped (needs a ReadWriteMany volume).")
    existing_claim: Optional[str] = Field(
        default=None, min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Mount this PersistentVolumeClaim (ReadWriteMany, in the search's namespace) instead of "
                    "creating one; it is not deleted with the search.")
    size: Optional[str] = Field(
        default=None, pattern=QUANTITY, max_length=64,
        description="Size of the claim the operator creates (owned by the search, deleted with it); "
                    "default: the chart's searchDefaults.artifacts.size.")
    storage_class_name: Optional[str] = Field(
        default=None, min_length=1, max_length=253,
        description="Storage class of the created claim (one that offers ReadWriteMany); default: the chart's "
                    "searchDefaults.artifacts.storageClassName, else the cluster's default class.")
    checkpoint_seconds: int = Field(
        default=300, ge=10, le=86400,
        description="Besides after every epoch, checkpoint at most this often within a long epoch.")


# Algorithms that train one weight-sharing supernet (kubenas/oneshot) and then send its derived
# genotypes to stand-alone training through the ordinary trial queue.
ONE_SHOT_ALGORITHMS = ("enas", "darts", "spos")


class OneShotSpec(SpecModel):
    """The supernet's data-parallel worker group (strategy.algorithm enas, darts or spos)."""

    workers: int = Field(
        default=1, ge=1, le=64,
        description="World size of the supernet's data-parallel training (torch.distributed): at most "
                    "budget.parallelism, the trainers whose place the workers take while the supernet trains. "
                    "A cluster runs them as an Indexed Job with a headless Service for the rendezvous; "
                    "`kubenas run` starts as many local processes.")
    max_restarts: int = Field(
        default=3, ge=0, le=100,
        description="How often the whole group is restarted from the last supernet checkpoint after a worker "
                    "is lost (torchrun's --max-restarts; the Job's backoffLimit); past it the search fails.")


class RedisSpec(SpecModel):
    mode: Literal["managed", "external"] = Field(
        default="managed", description="managed: the operator runs a Redis for this search; external: bring your own.")
    url_secret: Optional[SecretKeyRef] = Field(
        default=None, description="external: a Secret key holding redis[s]://[:password@]host:port/db.")
    image: str = Field(default="redis:7.2-alpine", max_length=512)
    persistence: PersistenceSpec = Field(default_factory=PersistenceSpec)

    @model_validator(mode="after")
    def _external_needs_secret(self) -> "RedisSpec":
        if self.mode == "external" and self.url_secret is None:
            raise ValueError("redis.urlSecret is required when redis.mode is external")
        return self


# BOHB runs its own Hyperband brackets: a second scheduler would stop its trials by other rules.
_BOHB_OWN_SCHEDULE = (
    "!has(self.strategy) || !has(self.strategy.algorithm) || self.strategy.algorithm != 'bohb' || "
    "!has(self.training) || !has(self.training.earlyStopping) || !has(self.training.earlyStopping.algorithm) || "
    "self.training.earlyStopping.algorithm == 'none'",
    "training.earlyStopping.algorithm: must be none with strategy.algorithm bohb, which schedules its own epochs "
    "(its rungs come from training.epochs, earlyStopping.minEpochs and earlyStopping.reductionFactor)")
# PBT trains its members in intervals it decides itself: a scheduler would stop them by other rules.
_PBT_OWN_SCHEDULE = (
    "!has(self.strategy) || !has(self.strategy.algorithm) || self.strategy.algorithm != 'pbt' || "
    "!has(self.training) || !has(self.training.earlyStopping) || !has(self.training.earlyStopping.algorithm) || "
    "self.training.earlyStopping.algorithm == 'none'",
    "training.earlyStopping.algorithm: must be none with strategy.algorithm pbt, which trains its members in "
    "intervals of its own (strategy.parameters.perturbationInterval, maxEpochs)")


# The supernet's workers take the trainers' place (their pods, their GPUs) while it trains.
_WORKERS_FIT = (
    "!has(self.oneShot) || !has(self.oneShot.workers) || "
    "self.oneShot.workers <= (has(self.budget) && has(self.budget.parallelism) ? self.budget.parallelism : 2)",
    "oneShot.workers: must be at most budget.parallelism (the supernet's workers take the trainers' place)")
# A supernet shares weights across cells, not across training settings, and its derived cells
# are trained stand-alone to the end (topK of them): nothing for hyperparameters or a scheduler.
_ONE_SHOT_CELL_ONLY = (
    "!has(self.strategy) || !has(self.strategy.algorithm) || !(self.strategy.algorithm in ["
    + ", ".join(f"'{a}'" for a in ONE_SHOT_ALGORITHMS) + "]) || "
    "!has(self.searchSpace) || !has(self.searchSpace.hyperparameters) || size(self.searchSpace.hyperparameters) == 0",
    "searchSpace.hyperparameters: not accepted with strategy.algorithm enas, darts or spos, which search the "
    "cell only (a supernet shares weights across cells, not across training settings); remove them")
_ONE_SHOT_NO_SCHEDULER = (
    "!has(self.strategy) || !has(self.strategy.algorithm) || !(self.strategy.algorithm in ["
    + ", ".join(f"'{a}'" for a in ONE_SHOT_ALGORITHMS) + "]) || "
    "!has(self.training) || !has(self.training.earlyStopping) || !has(self.training.earlyStopping.algorithm) || "
    "self.training.earlyStopping.algorithm == 'none'",
    "training.earlyStopping.algorithm: must be none with strategy.algorithm enas, darts or spos (their few "
    "derived cells are each trained to the end; the supernet is not a trial a scheduler could stop)")
# Several objectives need a strategy that learns from several numbers.
_MULTI_OBJECTIVE_STRATEGY = (
    "!has(self.objective) || !has(self.objective.metrics) || size(self.objective.metrics) <= 1 || "
    "!has(self.strategy) || !has(self.strategy.algorithm) || self.strategy.algorithm in ["
    + ", ".join(f"'{a}'" for a in MULTI_OBJECTIVE_STRATEGIES) + "]",
    "strategy.algorithm: optimises one metric; with several objective.metrics choose one of "
    + ", ".join(MULTI_OBJECTIVE_STRATEGIES))


class ArchitectureSearchSpec(SpecModel):
    search_space: SearchSpaceSpec = Field(default_factory=SearchSpaceSpec, json_schema_extra=IMMUTABLE)
    strategy: StrategySpec = Field(default_factory=StrategySpec, json_schema_extra=IMMUTABLE)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec, json_schema_extra=IMMUTABLE)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec, json_schema_extra=IMMUTABLE)
    trainer: TrainerPodSettings = Field(
        default_factory=TrainerPodSettings, description="The trainer pods (budget.parallelism of them): image, GPUs, scheduling.")
    controller: PodSettings = Field(
        default_factory=PodSettings, description="The controller pod (one, a Job): image, resources, scheduling.")
    redis: RedisSpec = Field(
        default_factory=RedisSpec, description="The Redis of the trial queue: managed by the operator, or external.",
        json_schema_extra=IMMUTABLE)
    suspend: bool = Field(default=False, description="Stop handing out trials and scale trainers to zero; resumable.")
    # Mutable: a change rolls the trainers; a trial then resumes from what the new store holds.
    artifacts: ArtifactsSpec = Field(
        default_factory=ArtifactsSpec,
        description="Trial checkpoints: a ReadWriteMany volume shared by the search's pods (cluster only).")
    final: Optional[FinalSpec] = Field(
        default=None, json_schema_extra=IMMUTABLE,
        description="Train the search's best architectures at the final size and export the best, with its "
                    "weights (needs artifacts in a cluster: the model is written there).")

    one_shot: OneShotSpec = Field(
        default_factory=OneShotSpec, json_schema_extra=IMMUTABLE,
        description="The supernet's worker group, for strategy.algorithm enas, darts or spos (needs "
                    "artifacts.enabled in a cluster: the workers share the supernet checkpoints there).")

    @field_validator("controller", mode="before")
    @classmethod
    def _controller_trains_nothing(cls, value: Any) -> Any:
        if isinstance(value, dict) and ({"trialsPerGPU", "trials_per_gpu", "trialsPerGpu"} & value.keys()):
            raise ValueError("controller.trialsPerGPU: only the trainer pods train trials; "
                             "set trainer.trialsPerGPU instead")
        return value

    @field_validator("search_space", mode="before")
    @classmethod
    def _search_space_strictly(cls, value: Any) -> Any:
        # The search-space models live with the spaces (kubenas/spaces/config.py); validated
        # strictly here, like every section of the spec (a quoted number is refused).
        return SearchSpaceSpec.model_validate(value, strict=True) if isinstance(value, dict) else value

    model_config = ConfigDict(json_schema_extra=cel_rules(_BOHB_OWN_SCHEDULE, _PBT_OWN_SCHEDULE, _WORKERS_FIT,
                                                          _MULTI_OBJECTIVE_STRATEGY, _ONE_SHOT_CELL_ONLY,
                                                          _ONE_SHOT_NO_SCHEDULER))

    @model_validator(mode="after")
    def _strategy_for_several_metrics(self) -> "ArchitectureSearchSpec":
        metrics = self.objective.metrics or []
        if len(metrics) > 1 and self.strategy.algorithm not in MULTI_OBJECTIVE_STRATEGIES:
            raise ValueError(f"strategy.algorithm: {self.strategy.algorithm} optimises one metric, and "
                             f"objective.metrics names {len(metrics)}; choose one of "
                             + ", ".join(MULTI_OBJECTIVE_STRATEGIES))
        return self

    @model_validator(mode="after")
    def _workers_fit_the_trainers(self) -> "ArchitectureSearchSpec":
        if self.one_shot.workers > self.budget.parallelism:
            raise ValueError(_WORKERS_FIT[1] + f" (got oneShot.workers {self.one_shot.workers}, "
                                               f"budget.parallelism {self.budget.parallelism})")
        return self

    @model_validator(mode="after")
    def _one_shot_settings(self) -> "ArchitectureSearchSpec":
        algorithm = self.strategy.algorithm
        if algorithm not in ONE_SHOT_ALGORITHMS:
            return self
        if self.search_space.hyperparameters:
            names = [hp.name for hp in self.search_space.hyperparameters]
            raise ValueError(_ONE_SHOT_CELL_ONLY[1] + f" (got {names} with {algorithm})")
        if self.training.early_stopping.algorithm != "none":
            raise ValueError(_ONE_SHOT_NO_SCHEDULER[1] + f" (got {self.training.early_stopping.algorithm!r})")
        self._one_shot_split_holds_batches(algorithm)
        return self

    def _one_shot_split_holds_batches(self, algorithm: str) -> None:
        """A fixed-size dataset's split must give every worker a batch: the supernet steps on
        training batches (darts: on each half of them) and scores paths on validation images."""
        data, t = self.training.dataset, self.training
        images = DATASET_IMAGES.get(data.name)
        if images is None:  # npz / imagefolder: their size is known once read (the preflight checks)
            return
        validation = int(round(images * data.validation_fraction))
        training = images - validation if data.train_subset is None else min(images - validation, data.train_subset)
        if validation < self.one_shot.workers:
            raise ValueError(f"training.dataset.validationFraction: {data.validation_fraction} of the {images} "
                             f"images of {data.name} leaves {validation} validation images, fewer than "
                             f"oneShot.workers ({self.one_shot.workers}); {algorithm} scores paths on them")
        parts = 2 if algorithm == "darts" else 1  # darts: weights on one half, alphas on the other
        if training // parts < t.batch_size:
            field = "trainSubset" if data.train_subset is not None else "validationFraction"
            raise ValueError(f"training.dataset.{field}: leaves {training} training images; {algorithm} needs "
                             f"at least one training.batchSize ({t.batch_size})"
                             + (" in each half (weights and alphas)" if parts == 2 else "")
                             + "; give more images or a smaller training.batchSize")

    @model_validator(mode="after")
    def _bohb_schedules_its_own_epochs(self) -> "ArchitectureSearchSpec":
        own = {"bohb": _BOHB_OWN_SCHEDULE, "pbt": _PBT_OWN_SCHEDULE}.get(self.strategy.algorithm)
        if own is not None and self.training.early_stopping.algorithm != "none":
            raise ValueError(own[1] + f" (got {self.training.early_stopping.algorithm!r})")
        return self

    @model_validator(mode="after")
    def _skeleton_of_a_cell_space(self) -> "ArchitectureSearchSpec":
        if self.training.skeleton != "cifar" and self.search_space.type == "nasbench201":
            raise ValueError(f"training.skeleton: {self.training.skeleton!r} is not accepted with searchSpace.type "
                             "nasbench201, whose network layout is fixed; use cifar (or a nasnet or darts space)")
        return self

    @model_validator(mode="after")
    def _hyperparameters_within_training_bounds(self) -> "ArchitectureSearchSpec":
        for hp in self.search_space.hyperparameters:
            bounds = HYPERPARAMETER_BOUNDS[hp.name]
            values = list(hp.choices or []) + [v for v in (hp.low, hp.high) if v is not None]
            for value in values:
                if not bounds.admits(value):
                    raise ValueError(f"searchSpace.hyperparameters {hp.name}: {value!r} is out of range; "
                                     f"{bounds.describe()}")
            if bounds.integer and not all(isinstance(c, int) for c in hp.choices or []):
                raise ValueError(f"searchSpace.hyperparameters {hp.name}: choices {hp.choices} are not accepted; "
                                 f"{bounds.describe()}")
        return self


@dataclass(frozen=True)
class Bounds:
    """The bounds of one training field, as its pydantic Field declares them."""

    field: str
    low: float
    low_inclusive: bool
    high: float
    high_inclusive: bool
    integer: bool  # an int field: its choices must be whole numbers

    def admits(self, value: float) -> bool:
        above = value >= self.low if self.low_inclusive else value > self.low
        below = value <= self.high if self.high_inclusive else value < self.high
        return above and below

    def describe(self) -> str:
        return (f"training.{self.field} accepts {'whole numbers ' if self.integer else ''}"
                f"{'>=' if self.low_inclusive else '>'} {self.low:g} "
                f"and {'<=' if self.high_inclusive else '<'} {self.high:g}")

    def cel(self, var: str) -> str:
        return (f"{var} {'>=' if self.low_inclusive else '>'} {float(self.low)!r} && "
                f"{var} {'<=' if self.high_inclusive else '<'} {float(self.high)!r}")


def _bounds(alias: str) -> Bounds:
    from annotated_types import Ge, Gt, Le, Lt

    field = next(f for n, f in TrainingSpec.model_fields.items() if (f.alias or n) == alias)
    low, low_inclusive, high, high_inclusive = float("-inf"), True, float("inf"), True
    for meta in field.metadata:
        if isinstance(meta, Ge):
            low, low_inclusive = meta.ge, True
        elif isinstance(meta, Gt):
            low, low_inclusive = meta.gt, False
        elif isinstance(meta, Le):
            high, high_inclusive = meta.le, True
        elif isinstance(meta, Lt):
            high, high_inclusive = meta.lt, False
    return Bounds(alias, low, low_inclusive, high, high_inclusive, integer=field.annotation is int)


# A searched hyperparameter stays within the bounds of the training field it replaces.
HYPERPARAMETER_BOUNDS: dict[str, Bounds] = {name: _bounds(name) for name in get_args(HyperparameterName)}


def hyperparameter_rules() -> list[dict[str, str]]:
    """CEL for each hyperparameter item: low, high and choices within the training field's bounds."""
    rules = []
    for name, bounds in HYPERPARAMETER_BOUNDS.items():
        check = " && ".join([
            f"(!has(self.low) || ({bounds.cel('self.low')}))",
            f"(!has(self.high) || ({bounds.cel('self.high')}))",
            f"(!has(self.choices) || self.choices.all(c, {bounds.cel('c')}"
            + (" && c == double(int(c))" if bounds.integer else "") + "))",
        ])
        rules.append({"rule": f"self.name != '{name}' || ({check})",
                      "message": f"hyperparameter {name}: low, high and choices must be within the bounds of "
                                 f"training.{name} ({bounds.describe().split(' accepts ', 1)[1]})"})
    return rules


# --- status ------------------------------------------------------------------------

class Condition(CamelModel):
    """The metav1.Condition shape."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", min_length=1, max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    observed_generation: Optional[int] = Field(default=None, ge=0)


class TrialCounts(CamelModel):
    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    stopped: int = 0
    deduplicated: int = 0


class RecentTrial(CamelModel):
    id: str
    status: Literal["succeeded", "failed", "stopped"]
    reward: Optional[float] = None


# Members of the Pareto front the summary (and so the resource's status) carries: the CR stays small.
PARETO_STATUS_MEMBERS = 16
# Members the controller's Pareto archive keeps (kubenas/pareto_archive.py); past it the most crowded goes.
PARETO_ARCHIVE_CAPACITY = 256


class ParetoMember(CamelModel):
    """One trial on the Pareto front: its value for each of objective.metrics."""

    trial: str
    values: dict[str, float] = Field(description="Metric name -> the trial's value, in the metric's own units.")


class FinalModel(CamelModel):
    """The final stage's winner: the trained network, where it is, and how it scores."""

    trial: str = Field(description="The final trial that trained it (final-<hash8>).")
    source_trial: Optional[str] = Field(default=None, description="The search trial that proposed the architecture.")
    genotype_hash: str
    path: str = Field(description="The directory holding model.safetensors, the TorchScript and ONNX graphs and "
                                  "model.json (in a cluster: on the artifacts volume).")
    validation_accuracy: float
    test_accuracy: Optional[float] = Field(default=None, description="Measured once, on the held-out test split.")
    test_images: Optional[int] = None
    parameters: Optional[int] = None
    candidates: int = Field(default=0, description="Final trials that finished training.")


class SupernetProgress(CamelModel):
    """One-shot searches: the supernet's last checkpointed epoch (what its workers wrote)."""

    epoch: int = Field(default=0, ge=0, description="Supernet epochs checkpointed so far.")
    epochs: Optional[int] = Field(default=None, ge=1, description="The supernet's epochs in all.")
    train_loss: Optional[float] = None
    validation_loss: Optional[float] = None
    validation_accuracy: Optional[float] = Field(
        default=None, description="Of the shared weights (darts: the mixture; enas, spos: sampled paths).")
    architecture_entropy: Optional[float] = Field(
        default=None, description="Entropy (nats): darts, mean over edges of its softmax; enas, its policy's summed over "
                    "decisions. Falling means it decides.")


class SearchSummary(CamelModel):
    """What the controller publishes and the operator copies into status (one writer)."""

    trials: TrialCounts = Field(default_factory=TrialCounts)
    best_reward: Optional[float] = None
    best_trial: Optional[str] = None
    best_genotype: Optional[dict[str, Any]] = None
    finished: bool = False
    finish_reason: Optional[str] = None
    stage: Literal["supernet", "deriving", "searching", "finalTraining"] = Field(
        default="searching", description="searching, then finalTraining while spec.final trains the best; "
                                         "one-shot algorithms first train the supernet (supernet) and derive "
                                         "its genotypes (deriving), whose stand-alone training is the search.")
    final_trials: Optional[TrialCounts] = Field(default=None, description="The final stage's trials.")
    supernet: Optional[SupernetProgress] = Field(
        default=None, description="One-shot (enas, darts, spos): the supernet's last checkpointed epoch.")
    final_model: Optional[FinalModel] = None
    final_error: Optional[str] = Field(default=None, max_length=32768,
                                       description="Why the final stage produced no model.")
    updated: Optional[str] = None
    recent: list[RecentTrial] = Field(default_factory=list, max_length=10,
                                      description="The last trials applied, newest last (bounded).")
    pareto_front: list[ParetoMember] = Field(
        default_factory=list, max_length=PARETO_STATUS_MEMBERS,
        description="Several objective.metrics: members of the Pareto front (at most 16, spread along it; "
                    "kubenas export --pareto writes them all).")
    pareto_front_size: Optional[int] = Field(
        default=None, ge=0, description=f"Trials on the Pareto front the controller keeps: the whole front up to "
                                        f"{PARETO_ARCHIVE_CAPACITY}; past that its most crowded members are dropped "
                                        f"and this stays at {PARETO_ARCHIVE_CAPACITY}.")
    hypervolume: Optional[float] = Field(
        default=None, description="The kept front's hypervolume: each cost divided by the largest any trial had, "
                                  "accuracy as it is, up to accuracy 0 and scaled cost 1. It never falls while the "
                                  f"front fits in {PARETO_ARCHIVE_CAPACITY} members; past that, dropping the most "
                                  "crowded member can lower it a little.")


class ArchitectureSearchStatus(SearchSummary):
    phase: Literal["Pending", "Supernet", "Deriving", "Searching", "FinalTraining", "Suspended", "Succeeded",
                   "Failed"] = "Pending"
    conditions: list[Condition] = Field(default_factory=list)
    start_time: Optional[str] = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_time: Optional[str] = Field(default=None, json_schema_extra={"format": "date-time"})
    observed_generation: Optional[int] = None
    replicas: int = Field(default=0, description="Ready trainers (the scale subresource's status).")
    selector: Optional[str] = Field(default=None, description="Label selector of the trainer pods.")


class ObjectMeta(CamelModel):
    model_config = CamelModel.model_config | {"extra": "ignore"}
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    # Checked here, before a local run takes its output directory: Redis keys are built from it.
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)


class ArchitectureSearch(CamelModel):
    api_version: Literal["kubenas.io/v1alpha1"]
    kind: Literal["ArchitectureSearch"]
    metadata: ObjectMeta
    spec: ArchitectureSearchSpec = Field(default_factory=ArchitectureSearchSpec)
    status: Optional[ArchitectureSearchStatus] = None

