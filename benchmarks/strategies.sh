#!/usr/bin/env bash
# Search strategies side by side on NAS-Bench-201 (CIFAR-10, 12-epoch table):
# 8 simulated asynchronous workers, 50 seeds, at 50, 100 and 200 trained children.
# Prints one markdown table per budget (test_acc of the best-val cell each search saw).
# Takes a while on 2 cores (gp-bo and tpe dominate); PYTHON, TABLE, SEEDS, WORKERS,
# BUDGETS and PROCESSES override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
TABLE=${TABLE:-../shared/data/nasbench201/cifar10-12epoch.csv}
exec "$PYTHON" -m kubenas.cli bench strategies \
  --table "$TABLE" \
  --budget "${BUDGETS:-50,100,200}" \
  --workers "${WORKERS:-8}" \
  --seeds "${SEEDS:-50}" \
  --processes "${PROCESSES:-2}" \
  --strategies random,evolution,local-search,tpe,ppo,reinforce,gp-bo \
  --param evolution.population=10 --param evolution.sample=3 \
  "$@"
