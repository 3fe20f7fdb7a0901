"""TEST STAND-IN for the one-shot supernet worker (`python -m kubenas.oneshot`).

Not a supernet: it follows the worker's contract, so that the orchestration around it (the
local runner's worker group, the operator's Indexed Job, the controller's hand-off of derived
genotypes) can be tested on its own, quickly:

    python tests/support/oneshot_standin.py --spec SPEC.json --artifacts DIR [--device cpu]

- rank and world size from RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (torchrun's env);
  RANK falls back to JOB_COMPLETION_INDEX (an Indexed Job's pod); world size 1 needs no env;
- real torch.distributed (gloo) collectives, each with a timeout (KUBENAS_ONESHOT_TIMEOUT
  seconds), so a lost peer makes the others exit non-zero instead of hanging;
- a "supernet" (one tensor) checkpointed every epoch to DIR/supernet/epoch-<e>.safetensors
  and .json; every rank resumes from the latest on start;
- at the end rank 0 writes DIR/supernet/derived.json with KUBENAS_STANDIN_TOP_K (default 2)
  genotypes sampled from the spec's space; exit 0; 2 on bad input; 1 on failure.

KUBENAS_STANDIN_EPOCHS (default 3) and KUBENAS_STANDIN_STEP_SECONDS (default 0.2, 5 steps an
epoch) pace it, so that a test can kill a worker in the middle of an epoch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    try:
        from kubenas.spec import ArchitectureSearchSpec

        spec = ArchitectureSearchSpec.model_validate_json(Path(args.spec).read_text())
        rank = int(os.environ.get("RANK", os.environ.get("JOB_COMPLETION_INDEX", "0")))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except Exception as exc:  # noqa: BLE001 - bad input: exit 2 with one line
        print(f"oneshot stand-in: bad input: {exc}", file=sys.stderr)
        return 2

    import time

    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file, save_file

    timeout = float(os.environ.get("KUBENAS_ONESHOT_TIMEOUT", "30"))
    epochs = int(os.environ.get("KUBENAS_STANDIN_EPOCHS", "3"))
    step_seconds = float(os.environ.get("KUBENAS_STANDIN_STEP_SECONDS", "0.2"))
    top_k = int(os.environ.get("KUBENAS_STANDIN_TOP_K", "2"))
    out = Path(args.artifacts) / "supernet"
    out.mkdir(parents=True, exist_ok=True)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout))
    done = sorted(int(p.stem.split("-")[1]) for p in out.glob("epoch-*.json"))
    start = done[-1] if done else 0
    weight = load_file(out / f"epoch-{start}.safetensors")["w"] if done else torch.zeros(4)
    print(f"rank {rank}/{world}: starting at epoch {start + 1} of {epochs} (pid {os.getpid()})", flush=True)
    for epoch in range(start + 1, epochs + 1):
        for _ in range(5):
            time.sleep(step_seconds)
            grad = torch.ones(4)
            if world > 1:
                dist.all_reduce(grad)  # raises once the timeout passes without a peer
            weight += grad / world
        if rank == 0:
            tmp = out / f".epoch-{epoch}.safetensors.tmp"
            save_file({"w": weight}, str(tmp))
            os.replace(tmp, out / f"epoch-{epoch}.safetensors")
            (out / f"epoch-{epoch}.json").write_text(json.dumps({"epoch": epoch, "progress": {"epochs": epochs}}))
        if world > 1:
            dist.barrier()
        print(f"rank {rank}: epoch {epoch} done", flush=True)
    if rank == 0:
        from kubenas.oneshot import supernet_fingerprint
        from kubenas.spaces import build_space

        space = build_space(spec.search_space)
        rng = random.Random(spec.training.seed)
        genotypes, seen = [], set()
        while len(genotypes) < top_k:
            genotype = space.sample(rng)
            digest = space.hash(genotype)
            if digest not in seen:
                seen.add(digest)
                genotypes.append({"genotype": genotype, "hash": digest, "score": 0.5 - 0.01 * len(genotypes)})
        tmp = out / ".derived.json.tmp"
        tmp.write_text(json.dumps({"algorithm": spec.strategy.algorithm, "fingerprint": supernet_fingerprint(spec),
                                   "genotypes": genotypes}))
        os.replace(tmp, out / "derived.json")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # noqa: BLE001 - a lost peer (timeout) or any fault: exit 1, say why
        print(f"oneshot stand-in failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
