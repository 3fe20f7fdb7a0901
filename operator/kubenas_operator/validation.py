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
from kubenas.spec import API_VERSION, KIND, ArchitectureSearch


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
    return manifest
