"""The search-space section of an ArchitectureSearch spec.

One flat model (not a union) so the generated CRD stays a structural schema;
rules that depend on `type` are checked in `build_space` and by CEL in the CRD.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class CamelModel(BaseModel):
    """Kubernetes spells fields in camelCase; Python code reads snake_case."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# Training hyperparameters a search may decide jointly with the architecture;
# the proxy trainer knows how to apply each of these.
HyperparameterName = Literal["learningRate", "weightDecay", "momentum", "batchSize", "epochs", "dropPath"]
INTEGER_HYPERPARAMETERS = {"batchSize", "epochs"}
# Blocks per cell (nasnet B, darts nodes) a space may have.
MAX_BLOCKS = 10


class HyperparameterSpec(CamelModel):
    name: HyperparameterName
    type: Literal["categorical", "float", "int"]
    choices: Optional[list[Union[int, float]]] = Field(
        default=None, min_length=1, max_length=64, description="Values for type categorical."
    )
    low: Optional[float] = Field(default=None, description="Lower bound for float and int.")
    high: Optional[float] = Field(default=None, description="Upper bound for float and int.")
    log: bool = Field(default=False, description="Sample uniformly in log space.")

    @model_validator(mode="after")
    def _check_shape(self) -> "HyperparameterSpec":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError(f"hyperparameter {self.name}: type categorical needs choices")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"hyperparameter {self.name}: type {self.type} needs low and high")
            if not self.low < self.high:
                raise ValueError(f"hyperparameter {self.name}: low must be below high")
            if self.log and self.low <= 0:
                raise ValueError(f"hyperparameter {self.name}: log scale needs low > 0")
        return self


class SearchSpaceSpec(CamelModel):
    type: Literal["nasnet", "darts", "nasbench201"] = Field(
        default="nasnet", description="nasnet (Zoph et al. 2018), darts (Liu et al. 2019) or nasbench201 (Dong & Yang 2020)."
    )
    blocks: Optional[int] = Field(
        default=None, ge=1, le=MAX_BLOCKS,
        description="Blocks per cell: B for nasnet (default 5), intermediate nodes for darts (default 4).",
    )
    operations: Optional[list[str]] = Field(
        default=None, min_length=1, max_length=16,
        description="Restrict the operations to this subset of the space's own list.",
    )
    combines: Optional[list[Literal["add", "concat"]]] = Field(
        default=None, min_length=1, max_length=2, description="nasnet only: combine operations allowed."
    )
    hyperparameters: list[HyperparameterSpec] = Field(
        default_factory=list, max_length=6,
        description="Training hyperparameters searched jointly with the cell.",
    )
