#!/usr/bin/env bash
# Full-fidelity searches against multi-fidelity ones at equal total epochs, on real
# learning curves (benchmarks/data/digits-curves.csv, written by learning_curves.py):
# a trial trained for e epochs reads epoch e; --budget B is B * 12 epochs per search.
# 8 simulated asynchronous workers, 30 seeds. PYTHON, TABLE, SEEDS, WORKERS, BUDGETS
# and PROCESSES override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
TABLE=${TABLE:-benchmarks/data/digits-curves.csv}
exec "$PYTHON" -m kubenas.cli bench strategies \
  --table "$TABLE" \
  --budget "${BUDGETS:-25,50}" \
  --workers "${WORKERS:-8}" \
  --seeds "${SEEDS:-30}" \
  --processes "${PROCESSES:-1}" \
  --strategies random,evolution,gp-bo,random+asha,random+hyperband,bohb \
  --param evolution.population=10 --param evolution.sample=3 \
  "$@"
