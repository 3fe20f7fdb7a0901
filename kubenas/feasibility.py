"""Can any network of a search meet its limits? (pure, torch-free)

The CRD bounds `objective.constraints.maxParameters` (no network has fewer than
1000 parameters), but whether the networks of *this* search fit under the limit
depends on the space, the macro settings (N, F) and the dataset: a limit below
the smallest of them would reject every architecture, one proposal at a time.
The operator refuses such a spec before it creates anything; `kubenas run`
can refuse it before it starts.
"""

from __future__ import annotations

from kubenas.errors import InvalidSpec
from kubenas.spec import ArchitectureSearchSpec

# (input channels, classes) of each dataset; an npz file's are unknown until it is read,
# so the smallest possible (1, 2) keeps the bound below every real network.
DATASET_SHAPES = {"digits": (1, 10), "distorted-digits": (1, 10), "cifar10": (3, 10), "cifar100": (3, 100),
                  "npz": (1, 2), "imagefolder": (3, 2)}


def smallest_network_parameters(spec: ArchitectureSearchSpec) -> int:
    """A lower bound on the parameters of any network this spec builds (torch-free).

    Counted: the stem convolution, the classifier, and for nasbench201 the two
    residual blocks (3x3 convolutions C->2C, 2C->2C and a 1x1 shortcut, then the
    same at 2C->4C: 280 C^2); for the cell spaces one 1x1 preprocessing
    convolution per cell (N cells at C, 2C, 4C and two reduction cells: 21 N C^2 + 20 C^2).
    Batch norms and the cells' operations only add to it.
    tests/unit/test_operator_builders.py checks the bound against real networks.
    """
    c, n = spec.training.channels, spec.training.cells_per_stage
    in_channels, classes = DATASET_SHAPES[spec.training.dataset.name]
    if spec.search_space.type == "nasbench201":
        return 9 * in_channels * c + 280 * c * c + 4 * c * classes + classes
    # The imagenet skeleton's stem has 32 filters (kubenas/nn/networks.py), not 3F.
    stem = 32 if spec.training.skeleton == "imagenet" else 3 * c
    return 9 * in_channels * min(stem, 3 * c) + (21 * n + 20) * c * c + 4 * c * classes + classes


def check_feasible(spec: ArchitectureSearchSpec) -> None:
    """A parameter limit below the smallest network would reject every architecture."""
    limit = spec.objective.constraints.max_parameters
    if limit is None:
        return
    floor = smallest_network_parameters(spec)
    if limit < floor:
        raise InvalidSpec(
            f"spec.objective.constraints.maxParameters: {limit} is below the smallest network this search "
            f"can build (at least {floor} parameters with training.channels {spec.training.channels} and "
            f"training.cellsPerStage {spec.training.cells_per_stage} on {spec.training.dataset.name}); "
            f"raise the limit or lower training.channels")
