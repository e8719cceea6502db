#!/usr/bin/env bash
# lfm2k with configs/lfm2k.yaml, RecGOAT forced to train.propagation=full and =sampled, seeds 0-2:
# the accuracy cost of sampled propagation (historical layers beyond the sampled hop).
#
#   benchmarks/accuracy_propagation.sh            # WORK=/tmp/recgoat-bench-lfm2k (shared with accuracy_lfm2k.sh)
#
# Prepares the dataset and graph as accuracy_lfm2k.sh does (reused when present), resumes
# unfinished runs, and prints test R@20 / N@20 per run and the mean ratio sampled / full.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
LFM=${LFM:-$(cd "$REPO/../shared/data/lfm2k" && pwd)}
WORK=${WORK:-${TMPDIR:-/tmp}/recgoat-bench-lfm2k}
SEEDS=${SEEDS:-"0 1 2"}
PY=${PY:-$REPO/.venv/bin/python}
export DGLBACKEND=pytorch HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
recgoat() { nice -n 10 "$PY" -m recgoat_dist "$@"; }
mkdir -p "$WORK/logs" "$WORK/runs-propagation"
. "$REPO/benchmarks/lfm2k_prepare.sh"
prepare_lfm2k
for seed in $SEEDS; do
  for prop in full sampled; do
    out="$WORK/runs-propagation/$prop-seed$seed"
    [ -f "$out/manifest.json" ] && continue
    recgoat train --config "$REPO/configs/lfm2k.yaml" --set data.dataset="$WORK/dataset" --set data.graph="$WORK/graph" \
      --set train.seed="$seed" --set train.progress=false --set train.propagation="$prop" --resume --out "$out" \
      > "$WORK/logs/propagation-$prop-seed$seed.log" 2>&1
  done
done
"$PY" - "$WORK/runs-propagation" <<'PY'
import json, statistics, sys
from pathlib import Path
rows = {}
for run in sorted(Path(sys.argv[1]).iterdir()):
    m = json.loads((run / "metrics.json").read_text())
    prop = m["propagation"]
    rows.setdefault(prop, []).append((m["test"]["recall@20"], m["test"]["ndcg@20"], m["valid"]["recall@20"]))
    print(f"{run.name}: valid R@20 {m['valid']['recall@20']:.4f} test R@20 {m['test']['recall@20']:.4f} "
          f"N@20 {m['test']['ndcg@20']:.4f} best epoch {m['best_epoch']} of {m['epochs_run']}")
mean = {p: [statistics.mean(c) for c in zip(*v)] for p, v in rows.items()}
for p, (r, n, v) in mean.items():
    print(f"{p}: mean test R@20 {r:.4f} N@20 {n:.4f} valid R@20 {v:.4f}")
if {"full", "sampled"} <= set(mean):
    print(f"sampled / full test R@20 = {mean['sampled'][0] / mean['full'][0]:.3f} (goal >= 0.97)")
PY
