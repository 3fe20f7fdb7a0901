"""One-shot architecture search: ENAS, DARTS and single-path one-shot on weight-sharing
supernets (kubenas/nn/supernet.py), trained data-parallel by `python -m kubenas.oneshot`.

Torch is imported by the modules that need it (enas, darts, spos, worker), not here:
`kubenas.oneshot.parameters` must stay importable without it."""

import hashlib
import json

ALGORITHM_MODULES = {"enas": "kubenas.oneshot.enas:Enas", "darts": "kubenas.oneshot.darts:Darts",
                     "spos": "kubenas.oneshot.spos:Spos"}


def supernet_fingerprint(spec) -> str:
    """What the supernet's checkpoints and derived.json must share with the spec that reads them
    (the worker, the runner and the controller): the algorithm, its parameters, the space and the
    training settings; not the world size. The parameters with their defaults filled in, so that a
    default changed between versions does not resume a supernet trained with the old one."""
    from kubenas.oneshot.parameters import ALGORITHM_PARAMETERS
    from kubenas.spec import strategy_keyword_arguments  # here: kubenas.spec imports this package

    algorithm = spec.strategy.algorithm
    parameters = {**ALGORITHM_PARAMETERS.get(algorithm, {}), **strategy_keyword_arguments(spec.strategy.parameters)}
    data = {"algorithm": algorithm, "parameters": parameters,
            "searchSpace": spec.search_space.model_dump(mode="json", by_alias=True),
            "training": spec.training.model_dump(mode="json", by_alias=True, exclude={"early_stopping"})}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
