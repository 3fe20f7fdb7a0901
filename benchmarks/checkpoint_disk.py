"""Peak disk of trial checkpoints during a search, with the retention the controller applies.

A search on digits with real (tiny) training: regularized evolution with weight
inheritance proposes trials, `--parallel` of them are in flight at a time, each
trains `--epochs` epochs through `train_proxy` and checkpoints after every epoch
into a real `TrialCheckpointStore`. After each result the controller's
`CheckpointRetention` keeps only what `checkpoints_to_keep` names (in flight, their
parents, what the strategy still needs as parents, the top-k) and removes the rest.

Reports, over seeds (mean ± sd): trials run, the peak and final checkpoint bytes,
and what the same trials would take with every checkpoint kept.

    python benchmarks/checkpoint_disk.py                      # 1,000 trials or 10 minutes per seed
    python benchmarks/checkpoint_disk.py --trials 200 --seeds 3 --minutes 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubenas.spaces import build_space  # noqa: E402
from kubenas.strategies import Result, make_strategy  # noqa: E402
from kubenas.training import TrainConfig, load_dataset, train_proxy  # noqa: E402
from kubenas.training.checkpoints import CheckpointRetention, TrialCheckpointStore  # noqa: E402


def strategy_needs(strategy) -> list[str]:
    """The finished trials the strategy may still name as parents."""
    needed = getattr(strategy, "checkpoints_needed", None)
    if callable(needed):
        return list(needed())
    return [t for t in getattr(strategy, "member_ids", []) if t]  # evolution's population


def run(seed: int, args: argparse.Namespace, data) -> dict[str, float]:
    space = build_space("nasbench201")
    strategy = make_strategy("evolution", space, seed=seed, population=args.population, sample=args.sample,
                             inherit_weights=True)
    cfg = TrainConfig(epochs=args.epochs, channels=args.channels, cells_per_stage=1, device="cpu", seed=seed)
    with tempfile.TemporaryDirectory(prefix="kubenas-ckpt-bench-") as tmp:
        store = TrialCheckpointStore(tmp, fsync=False)
        retention = CheckpointRetention(store, top_k=args.top_k, every_seconds=0.0)  # after every result
        in_flight: dict[str, object] = {}
        peak = without_retention = 0
        began = time.monotonic()
        trials = 0
        while trials < args.trials and time.monotonic() - began < args.minutes * 60:
            while len(in_flight) < args.parallel:
                for trial in strategy.ask(1):
                    in_flight[trial.id] = trial
            trial = next(iter(in_flight.values()))  # the oldest in flight finishes next

            def save(state, trial_id=trial.id):
                nonlocal peak
                store.save(trial_id, state.epoch, replace(state, genotype_hash=space.hash(trial.genotype),
                                                          genotype=trial.genotype))
                peak = max(peak, store.bytes_used())

            prepare = None
            if trial.parent_id:
                parent = store.latest(trial.parent_id)
                if parent is not None:
                    from kubenas.nn.inherit import inherit_weights

                    def inherit(model, parent=parent, genotype=trial.genotype):
                        inherit_weights(model, genotype, parent.model, parent.genotype)

                    prepare = inherit

            outcome = train_proxy(trial.genotype, data, cfg, on_checkpoint=save, prepare_model=prepare)
            del in_flight[trial.id]
            trials += 1
            # Kept forever, each trial would hold its last checkpoint (earlier ones are replaced).
            without_retention += sum(p.stat().st_size for p in (store.trials / trial.id).iterdir())
            retention.note(trial.id, outcome.reward)
            strategy.tell(trial.id, Result(reward=outcome.reward, curve=[r.val_acc for r in outcome.curve],
                                           epochs=len(outcome.curve)))
            retention.prune({t.id: t.parent_id for t in in_flight.values()}, strategy_needs(strategy),
                            time.monotonic())
        return {"trials": trials, "minutes": (time.monotonic() - began) / 60, "peak": peak,
                "final": store.bytes_used(), "kept": len(store.trial_ids()), "without": without_retention}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--minutes", type=float, default=10.0, help="stop a seed's search after this long")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--parallel", type=int, default=4, help="trials in flight")
    p.add_argument("--population", type=int, default=20)
    p.add_argument("--sample", type=int, default=5)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--train-subset", type=int, default=300, help="training images per epoch (a cheap proxy)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("digits", validation_fraction=0.2, train_subset=args.train_subset, seed=0)
    runs = []
    for seed in range(args.seeds):
        r = run(seed, args, data)
        runs.append(r)
        print(f"seed {seed}: {r['trials']} trials in {r['minutes']:.1f} min; peak {r['peak'] / 1e6:.2f} MB, "
              f"final {r['final'] / 1e6:.2f} MB ({r['kept']} trials kept); every checkpoint kept: "
              f"{r['without'] / 1e6:.1f} MB", flush=True)

    def stat(key: str, scale: float = 1.0) -> str:
        values = [r[key] / scale for r in runs]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.2f} ± {sd:.2f}"

    print(f"\nevolution with inheritance on digits (NB201, N=1, F={args.channels}, {args.epochs} epoch(s), "
          f"{args.parallel} in flight, population {args.population}, top-k {args.top_k}), {len(runs)} seed(s):")
    print(f"  trials run            {stat('trials')}")
    print(f"  peak checkpoint MB    {stat('peak', 1e6)}")
    print(f"  final checkpoint MB   {stat('final', 1e6)}")
    print(f"  without retention MB  {stat('without', 1e6)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
