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

from kubenas.spaces.config import CamelModel, HyperparameterName, SearchSpaceSpec

GROUP = "kubenas.io"
VERSION = "v1alpha1"
KIND = "ArchitectureSearch"
PLURAL = "architecturesearches"
API_VERSION = f"{GROUP}/{VERSION}"

# The strategy registry must offer exactly these (a test checks it).
STRATEGY_NAMES = ("random", "ppo", "reinforce", "evolution", "local-search", "tpe", "gp-bo", "bohb", "pbt")
# The parameters each strategy accepts, with their JSON types: the CRD refuses an
# unknown name or a wrong type at admission, and so does `kubenas run`.
# tests/unit/test_spec_models.py checks this table against the strategies' constructors.
STRATEGY_PARAMETERS: dict[str, dict[str, str]] = {
    "random": {},
    "evolution": {"population": "integer", "sample": "integer", "inherit_weights": "boolean"},
    "local-search": {"initial": "integer", "inherit_weights": "boolean"},
    "tpe": {"multivariate": "boolean", "group": "boolean", "n_startup_trials": "integer",
            "n_ei_candidates": "integer", "constant_liar": "boolean"},
    "ppo": {"clip": "number", "epochs": "integer", "hidden": "integer", "lr": "number",
            "entropy_weight": "number", "baseline_decay": "number", "batch": "integer"},
    "reinforce": {"hidden": "integer", "lr": "number", "entropy_weight": "number",
                  "baseline_decay": "number", "batch": "integer"},
    "gp-bo": {"initial": "integer", "acquisition": "string", "beta": "number", "warp": "string",
              "ceiling": "number", "ard": "string", "additive": "boolean", "exhaustive_limit": "integer",
              "candidates": "integer", "refit_every": "integer", "believer": "boolean"},
    "bohb": {"max_epochs": "integer", "min_epochs": "integer", "eta": "integer", "brackets": "integer",
             "random_fraction": "number", "min_points": "integer", "top_fraction": "number", "samples": "integer",
             "bandwidth_factor": "number", "min_bandwidth": "number"},
    "pbt": {"population": "integer", "perturbation_interval": "integer", "max_epochs": "integer",
            "quantile_fraction": "number", "resample_probability": "number", "burn_in_period": "integer"},
}
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
                raise ValueError(f"strategy.parameters.{name}: {self.algorithm} has no parameter {name!r}; "
                                 f"accepted: {sorted(accepted) or 'none'}")
            if not _has_json_type(value, accepted[name]):
                raise ValueError(f"strategy.parameters.{name}: {value!r} is not accepted; "
                                 f"{self.algorithm} wants {_A[accepted[name]]}")
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


class ObjectiveSpec(SpecModel):
    metric: Literal["validationAccuracy"] = "validationAccuracy"
    goal: Literal["maximize"] = "maximize"
    target: Optional[float] = Field(default=None, ge=0, le=1, description="Stop the search once a reward reaches this.")
    constraints: ConstraintsSpec = Field(default_factory=ConstraintsSpec)
    cost_penalty: Optional[CostPenaltySpec] = None


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


class DatasetSpec(SpecModel):
    name: Literal["digits", "cifar10", "cifar100", "npz"] = Field(
        default="digits", description="digits is bundled with scikit-learn (offline); npz is your own x/y arrays.")
    root: Optional[str] = Field(
        default=None, max_length=4096, description="Directory of the torchvision files, or the .npz file (inside the pod).")
    download: bool = Field(default=False, description="Download when missing (needs network access from the pods).")
    validation_fraction: float = Field(
        default=0.2, gt=0, le=0.5, description="The share of the images kept for validation (at most half).")
    train_subset: Optional[int] = Field(default=None, ge=10, description="Train on only this many images (a cheaper proxy).")


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
    "intervals of its own (strategy.parameters.perturbation_interval, max_epochs)")


class ArchitectureSearchSpec(SpecModel):
    search_space: SearchSpaceSpec = Field(default_factory=SearchSpaceSpec, json_schema_extra=IMMUTABLE)
    strategy: StrategySpec = Field(default_factory=StrategySpec, json_schema_extra=IMMUTABLE)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec, json_schema_extra=IMMUTABLE)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec, json_schema_extra=IMMUTABLE)
    trainer: PodSettings = Field(
        default_factory=PodSettings, description="The trainer pods (budget.parallelism of them): image, GPUs, scheduling.")
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

    @field_validator("search_space", mode="before")
    @classmethod
    def _search_space_strictly(cls, value: Any) -> Any:
        # The search-space models live with the spaces (kubenas/spaces/config.py); validated
        # strictly here, like every section of the spec (a quoted number is refused).
        return SearchSpaceSpec.model_validate(value, strict=True) if isinstance(value, dict) else value

    model_config = ConfigDict(json_schema_extra=cel_rules(_BOHB_OWN_SCHEDULE, _PBT_OWN_SCHEDULE))

    @model_validator(mode="after")
    def _bohb_schedules_its_own_epochs(self) -> "ArchitectureSearchSpec":
        own = {"bohb": _BOHB_OWN_SCHEDULE, "pbt": _PBT_OWN_SCHEDULE}.get(self.strategy.algorithm)
        if own is not None and self.training.early_stopping.algorithm != "none":
            raise ValueError(own[1] + f" (got {self.training.early_stopping.algorithm!r})")
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


class SearchSummary(CamelModel):
    """What the controller publishes and the operator copies into status (one writer)."""

    trials: TrialCounts = Field(default_factory=TrialCounts)
    best_reward: Optional[float] = None
    best_trial: Optional[str] = None
    best_genotype: Optional[dict[str, Any]] = None
    finished: bool = False
    finish_reason: Optional[str] = None
    updated: Optional[str] = None
    recent: list[RecentTrial] = Field(default_factory=list, max_length=10,
                                      description="The last trials applied, newest last (bounded).")


class ArchitectureSearchStatus(SearchSummary):
    phase: Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"] = "Pending"
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

