"""One-shot architecture search: ENAS, DARTS and single-path one-shot on weight-sharing
supernets (kubenas/nn/supernet.py), trained data-parallel by `python -m kubenas.oneshot`.

Torch is imported by the modules that need it (enas, darts, spos, worker), not here:
`kubenas.oneshot.parameters` must stay importable without it."""

ALGORITHM_MODULES = {"enas": "kubenas.oneshot.enas:Enas", "darts": "kubenas.oneshot.darts:Darts",
                     "spos": "kubenas.oneshot.spos:Spos"}
