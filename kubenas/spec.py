"""The ArchitectureSearch resource: spec and status models.

One source of truth: these models generate the CRD schema (`kubenas crd`),
validate manifests for `kubenas run`, and type the controller's config.
Field names are Kubernetes-style camelCase on the wire, snake_case in Python.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BeforeValidator, Field, ValidationError, WithJsonSchema, field_validator, model_validator

from kubenas.errors import InvalidSpec, describe_validation_error
from kubenas.spaces.config import CamelModel, SearchSpaceSpec

GROUP = "kubenas.io"
VERSION = "v1alpha1"
KIND = "ArchitectureSearch"
PLURAL = "architecturesearches"
API_VERSION = f"{GROUP}/{VERSION}"

# The strategy registry must offer exactly these (a test checks it).
STRATEGY_NAMES = ("random", "ppo", "reinforce", "evolution", "local-search", "tpe", "gp-bo")
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


def parse_duration(text: str) -> float:
    """Seconds in a duration such as 90s, 30m, 1h30m or 2d."""
    if not DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration such as 30m, 2h or 1h30m")
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * units[u] for n, _, u in re.findall(r"([0-9]+(\.[0-9]+)?)([smhd])", text))


class EarlyStoppingSpec(CamelModel):
    algorithm: Literal["none", "median", "asha", "hyperband"] = Field(
        default="none", description="median: Katib/Vizier median stopping; asha/hyperband: successive halving.")
    min_epochs: int = Field(default=1, ge=1, le=1000, description="Epochs before a trial may be stopped (the lowest rung).")
    reduction_factor: int = Field(default=3, ge=2, le=10, description="eta: 1/eta of trials is promoted per rung.")
    min_trials: int = Field(default=5, ge=1, le=1000, description="median: completed trials needed before stopping any.")


class StrategySpec(CamelModel):
    algorithm: Literal[STRATEGY_NAMES] = Field(default="random", description="The search strategy.")  # type: ignore[valid-type]
    parameters: dict[str, ParamValue] = Field(
        default_factory=dict, description="Strategy parameters, e.g. population: 10 and sample: 3 for evolution; names as in `kubenas bench strategies --help`.")
    repeat_evaluations: bool = Field(
        default=False, description="Train an architecture again when it was already evaluated (otherwise reuse its result).")


class ConstraintsSpec(CamelModel):
    max_parameters: Optional[int] = Field(default=None, ge=1, description="Hard limit, checked before training.")
    max_multiply_adds: Optional[int] = Field(default=None, ge=1, description="Hard limit, checked before training.")


class CostPenaltySpec(CamelModel):
    """MnasNet's soft constraint: reward = accuracy * (cost / target) ** weight."""

    metric: Literal["parameters", "multiplyAdds", "latencySeconds"] = "multiplyAdds"
    target: float = Field(gt=0, description="The cost the search aims at.")
    weight: float = Field(default=-0.07, ge=-1, le=0, description="w in MnasNet; -0.07 there.")


class ObjectiveSpec(CamelModel):
    metric: Literal["validationAccuracy"] = "validationAccuracy"
    goal: Literal["maximize"] = "maximize"
    target: Optional[float] = Field(default=None, ge=0, le=1, description="Stop the search once a reward reaches this.")
    constraints: ConstraintsSpec = Field(default_factory=ConstraintsSpec)
    cost_penalty: Optional[CostPenaltySpec] = None


class BudgetSpec(CamelModel):
    max_trials: int = Field(default=100, ge=1, le=1_000_000, description="Child networks to train.")
    max_duration: Optional[str] = Field(
        default=None, pattern=DURATION.pattern, max_length=32, description="Wall-clock limit such as 12h or 1h30m.")
    max_failed_trials: int = Field(default=10, ge=0, le=1_000_000, description="Fail the search past this many failed trials.")
    parallelism: int = Field(default=2, ge=1, le=1024, description="Trainers (the scale subresource's replicas).")

    @field_validator("max_duration")
    @classmethod
    def _duration(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def max_duration_seconds(self) -> Optional[float]:
        return parse_duration(self.max_duration) if self.max_duration else None


class DatasetSpec(CamelModel):
    name: Literal["digits", "cifar10", "cifar100", "npz"] = Field(
        default="digits", description="digits is bundled with scikit-learn (offline); npz is your own x/y arrays.")
    root: Optional[str] = Field(
        default=None, max_length=4096, description="Directory of the torchvision files, or the .npz file (inside the pod).")
    download: bool = Field(default=False, description="Download when missing (needs network access from the pods).")
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    train_subset: Optional[int] = Field(default=None, ge=10, description="Train on only this many images (a cheaper proxy).")


class TrainingSpec(CamelModel):
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


class Toleration(CamelModel):
    """A core/v1 Toleration."""

    key: Optional[str] = Field(default=None, max_length=316)
    operator: Optional[Literal["Exists", "Equal"]] = None
    value: Optional[str] = Field(default=None, max_length=63)
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None
    toleration_seconds: Optional[int] = None


class EnvVar(CamelModel):
    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str = ""


class ResourcesSpec(CamelModel):
    requests: dict[str, Quantity] = Field(default_factory=dict, description="e.g. cpu: 4, memory: 16Gi")
    limits: dict[str, Quantity] = Field(default_factory=dict, description="e.g. memory: 32Gi (GPUs: use gpus)")


class PodSettings(CamelModel):
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


class SecretKeyRef(CamelModel):
    name: str = Field(min_length=1, max_length=253, description="A Secret in the search's namespace.")
    key: str = Field(default="url", min_length=1, max_length=253)


class PersistenceSpec(CamelModel):
    enabled: bool = Field(
        default=False, description="Keep the search's state on PersistentVolumeClaims: Redis' append-only file "
                                   "and the controller's checkpoint (otherwise both live as long as their pods).")
    size: str = Field(default="1Gi", pattern=QUANTITY, max_length=64)
    storage_class_name: Optional[str] = Field(default=None, max_length=253)


class RedisSpec(CamelModel):
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


class ArchitectureSearchSpec(CamelModel):
    search_space: SearchSpaceSpec = Field(default_factory=SearchSpaceSpec)
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    trainer: PodSettings = Field(
        default_factory=PodSettings, description="The trainer pods (budget.parallelism of them): image, GPUs, scheduling.")
    controller: PodSettings = Field(
        default_factory=PodSettings, description="The controller pod (one, a Job): image, resources, scheduling.")
    redis: RedisSpec = Field(
        default_factory=RedisSpec, description="The Redis of the trial queue: managed by the operator, or external.")
    suspend: bool = Field(default=False, description="Stop handing out trials and scale trainers to zero; resumable.")


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
    namespace: str = "default"


class ArchitectureSearch(CamelModel):
    api_version: Literal["kubenas.io/v1alpha1"]
    kind: Literal["ArchitectureSearch"]
    metadata: ObjectMeta
    spec: ArchitectureSearchSpec = Field(default_factory=ArchitectureSearchSpec)
    status: Optional[ArchitectureSearchStatus] = None


def parse_manifest(data: Any, source: str = "manifest") -> ArchitectureSearch:
    try:
        return ArchitectureSearch.model_validate(data)
    except ValidationError as exc:
        raise InvalidSpec(f"{source}: {describe_validation_error(exc)}") from None


def load_manifest(path: str | Path) -> ArchitectureSearch:
    """An ArchitectureSearch from a YAML file; the first document of that kind wins."""
    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as exc:
        raise InvalidSpec(f"{path}: cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidSpec(f"{path}: not valid YAML: {exc}") from None
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == KIND:
            manifest = parse_manifest(doc, str(path))
            _check_semantics(manifest, str(path))
            return manifest
    raise InvalidSpec(f"{path}: no document with kind: {KIND} (apiVersion {API_VERSION})")


def _check_semantics(manifest: ArchitectureSearch, source: str) -> None:
    """Rules the schema cannot express: the search space must build."""
    from kubenas.spaces import build_space

    try:
        build_space(manifest.spec.search_space)
    except (InvalidSpec, ValueError) as exc:
        raise InvalidSpec(f"{source}: spec.{exc}") from None
