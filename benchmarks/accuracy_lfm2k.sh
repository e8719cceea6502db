#!/usr/bin/env bash
# Accuracy on real data: LastFM-2k (../shared/data/lfm2k), MMRec's split and protocol.
#
# Prepares the dataset (text = MiniLM, audio = vggish, user profiles from lfm2k_text.tsv) and its
# graph once, trains every variant with every seed (test metrics at the best validation epoch),
# and writes the table to benchmarks/RESULTS.md (its own section only).
#
#   benchmarks/accuracy_lfm2k.sh                        # all variants, seeds 0 1 2
#   VARIANTS="lightgcn recgoat" SEEDS="0" benchmarks/accuracy_lfm2k.sh
#   WORK=/data/bench JOBS=2 benchmarks/accuracy_lfm2k.sh
#
# Re-running skips finished runs and resumes interrupted ones (train --resume). Runs are niced.
# The `lightgcn` variant uses MMRec's LightGCN setting (3 layers, 64-d, lr 1e-3, reg 1e-4, batch
# 2048), the others configs/lfm2k.yaml (the tuned RecGOAT setting, ablations change one part);
# `lightgcn_tuned` (optional, add it to VARIANTS) is LightGCN trained with that same setting (ID
# only: model.knn_refines=content). Optional too: `recgoat_content` (lfm2k.yaml with the KNN graphs
# refining the content streams only), `default_recgoat` / `default_lightgcn` (configs/default.yaml).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
LFM=${LFM:-$(cd "$REPO/../shared/data/lfm2k" && pwd)}
WORK=${WORK:-${TMPDIR:-/tmp}/recgoat-bench-lfm2k}
VARIANTS=${VARIANTS:-"lightgcn recgoat no_oat no_cmcl no_gat no_user_graph"}
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-1}
PY=${PY:-$REPO/.venv/bin/python}
LIGHTGCN_SETS=${LIGHTGCN_SETS:-"model.n_layers=3 model.dim=64 train.lr=0.001 model.reg_weight=0.0001 train.batch_size=2048"}
export DGLBACKEND=pytorch HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

recgoat() { nice -n 10 "$PY" -m recgoat_dist "$@"; }
mkdir -p "$WORK/logs" "$WORK/runs"

. "$REPO/benchmarks/lfm2k_prepare.sh"
prepare_lfm2k

train_one() {   # variant seed
  local variant=$1 seed=$2 out="$WORK/runs/$1-seed$2" config="$REPO/configs/lfm2k.yaml" sets=()
  [ -f "$out/manifest.json" ] && { echo "done: $out"; return 0; }
  local model=$variant
  case "$variant" in
    lightgcn) sets+=(--set model.knn_refines=content); for s in $LIGHTGCN_SETS; do sets+=(--set "$s"); done ;;
    lightgcn_tuned) model=lightgcn; sets+=(--set model.knn_refines=content) ;;   # RecGOAT's training setting
    recgoat_content) model=recgoat; sets+=(--set model.knn_refines=content) ;;
    default_recgoat) model=recgoat; config="$REPO/configs/default.yaml" ;;
    default_lightgcn) model=lightgcn; config="$REPO/configs/default.yaml"; sets+=(--set model.knn_refines=content) ;;
  esac
  for s in ${EXTRA_SETS:-}; do sets+=(--set "$s"); done
  echo "train: $variant seed $seed -> $out"
  recgoat train --config "$config" --set data.dataset="$WORK/dataset" \
    --set data.graph="$WORK/graph" --set model.name="$model" --set train.seed="$seed" \
    --set train.progress=false "${sets[@]}" --resume --out "$out" > "$WORK/logs/$variant-seed$seed.log" 2>&1
}
export -f train_one recgoat
export REPO WORK PY LIGHTGCN_SETS EXTRA_SETS

for seed in $SEEDS; do for variant in $VARIANTS; do echo "$variant $seed"; done; done |
  xargs -P "$JOBS" -n 2 bash -c 'train_one "$0" "$1"'

"$PY" "$REPO/benchmarks/accuracy_table.py" --runs "$WORK/runs" --results "$REPO/benchmarks/RESULTS.md" \
  --time-epochs "${TIME_EPOCHS:-5}" --command "VARIANTS=\"$VARIANTS\" SEEDS=\"$SEEDS\" benchmarks/accuracy_lfm2k.sh"
