"""Is the stored spec one the operator can run? (pure: no API server, no Redis)

The CRD refuses at admission what its schema and CEL rules express. What they
cannot, is checked here, before anything is created: the spec models' own
validators (the same ones `kubenas run` applies), the search space building
from its spec, and a parameter limit no network of the search could meet
(`kubenas.feasibility`).
"""

from __future__ import annotations

from typing import Any

from kubenas.errors import InvalidSpec
from kubenas.feasibility import check_feasible
from kubenas.manifest import parse_manifest
from kubenas.spec import API_VERSION, KIND, ONE_SHOT_ALGORITHMS, ArchitectureSearch


def read_spec(body: Any) -> ArchitectureSearch:
    """The stored object as the spec models see it; InvalidSpec names the field otherwise."""
    from kubenas.spaces import build_space

    meta = body["metadata"]
    manifest = parse_manifest(
        {"apiVersion": API_VERSION, "kind": KIND,
         "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
         "spec": body.get("spec") or {}},
        source=f"{KIND} {meta['namespace']}/{meta['name']}",
    )
    try:
        build_space(manifest.spec.search_space)
    except (InvalidSpec, ValueError) as exc:
        raise InvalidSpec(f"spec.{exc}") from None
    check_feasible(manifest.spec)
    if manifest.spec.strategy.algorithm in ONE_SHOT_ALGORITHMS and not manifest.spec.artifacts.enabled:
        # The supernet's workers checkpoint it there and leave the derived genotypes for the controller.
        raise InvalidSpec(f"spec.artifacts.enabled: must be true for strategy.algorithm "
                          f"{manifest.spec.strategy.algorithm}: its supernet workers and the controller share "
                          "the supernet checkpoints and derived genotypes on that volume")
    if manifest.spec.final is not None and not manifest.spec.artifacts.enabled:
        # The final stage's trainers export the trained model there; the controller copies the winner.
        raise InvalidSpec("spec.artifacts.enabled: must be true with spec.final: the final stage's trainers write "
                          "the trained models to that volume, where the final model stays")
    return manifest
