"""One-shot supernets (enas, darts, spos) against stand-alone training on digits over the
NAS-Bench-201 space: Kendall tau between each supernet's ranking (batch norm recalibrated
per cell) and the learning-curve table's stand-alone accuracy, the stand-alone accuracy of
each method's top derived cell, its seconds, and DARTS' share of skip/none operations.

    python benchmarks/oneshot.py                     # 5 seeds, every algorithm, the table's 12 epochs
    python benchmarks/oneshot.py --seeds 2 --algorithms darts --json darts.json

A thin front of `kubenas bench oneshot` (kubenas/bench/oneshot.py documents the method);
one process, one torch thread. Beside its table it prints the table's own seed-to-seed
tau, the ceiling of any ranking against it.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

if __name__ == "__main__":
    import torch

    from kubenas.cli import main

    torch.set_num_threads(1)
    sys.exit(main(["bench", "oneshot", *sys.argv[1:]]))
