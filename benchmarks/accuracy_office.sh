#!/usr/bin/env bash
# Accuracy on real data: Amazon Office 5-core (../shared/data/office), the paper's own domain.
#
# Prepares the dataset as its README says (per-user random split, seed 0; text.tsv -> `text`,
# meta.tsv -> `text_meta`, both MiniLM) and its graph once, trains every variant with every seed
# (test metrics at the best validation epoch), and writes the table to benchmarks/RESULTS.md (its
# own section only).
#
#   benchmarks/accuracy_office.sh                        # all variants, seeds 0 1 2
#   VARIANTS="lightgcn_tuned recgoat" SEEDS="0" benchmarks/accuracy_office.sh
#   WORK=/data/bench DATASET=/tmp/recgoat-diag/office/dataset GRAPH=/tmp/recgoat-diag/office/graph \
#     benchmarks/accuracy_office.sh                      # reuse a prepared dataset and graph
#
# Re-running skips finished runs and resumes interrupted ones (train --resume). Runs are niced.
# Variants (each one file, at most one key changed):
#   lightgcn          MMRec's LightGCN setting (3 layers, 64-d, lr 1e-3, reg 1e-4, batch 2048)
#   lightgcn_tuned    LightGCN with configs/office.yaml's setting (same file; ID only: knn_refines=content)
#   lightgcn_best     LightGCN at its own best point (validation) of the batch/lr sweep RecGOAT had:
#                     office.yaml with batch 4096, lr 5e-3 (LIGHTGCN_BEST_SETS)
#   recgoat           configs/office.yaml
#   recgoat_content   configs/office.yaml with model.knn_refines=content (the KNN graphs refine the content only)
#   no_oat, no_cmcl, no_gat   configs/office.yaml with that part removed
#   default_recgoat, default_lightgcn   configs/default.yaml (the untuned recommendation), RecGOAT / LightGCN
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OFFICE=${OFFICE:-$(cd "$REPO/../shared/data/office" && pwd)}
WORK=${WORK:-${TMPDIR:-/tmp}/recgoat-bench-office}
DATASET=${DATASET:-$WORK/dataset}
GRAPH=${GRAPH:-$WORK/graph}
VARIANTS=${VARIANTS:-"lightgcn lightgcn_tuned lightgcn_best recgoat recgoat_content no_oat no_cmcl default_lightgcn default_recgoat"}
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-1}
PY=${PY:-$REPO/.venv/bin/python}
LIGHTGCN_SETS=${LIGHTGCN_SETS:-"model.n_layers=3 model.dim=64 train.lr=0.001 model.reg_weight=0.0001 train.batch_size=2048"}
LIGHTGCN_BEST_SETS=${LIGHTGCN_BEST_SETS:-"train.batch_size=4096 train.lr=0.005"}
export DGLBACKEND=pytorch HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

recgoat() { nice -n 10 "$PY" -m recgoat_dist "$@"; }
mkdir -p "$WORK/logs" "$WORK/runs"

if [ ! -f "$DATASET/manifest.json" ]; then
  recgoat prepare parquet --interactions "$OFFICE/interactions.parquet" --out "$DATASET" --overwrite
  recgoat prepare encode-items --data "$DATASET" --text "$OFFICE/text.tsv" --name text
  recgoat prepare encode-items --data "$DATASET" --text "$OFFICE/meta.tsv" --name text_meta
fi
[ -f "$GRAPH/manifest.json" ] || recgoat graph --data "$DATASET" --out "$GRAPH" --overwrite

train_one() {   # variant seed
  local variant=$1 seed=$2 out="$WORK/runs/$1-seed$2" config="$REPO/configs/office.yaml" sets=()
  [ -f "$out/manifest.json" ] && { echo "done: $out"; return 0; }
  case "$variant" in
    lightgcn) sets+=(--set model.name=lightgcn --set model.knn_refines=content)
              for s in $LIGHTGCN_SETS; do sets+=(--set "$s"); done ;;
    lightgcn_tuned) sets+=(--set model.name=lightgcn --set model.knn_refines=content) ;;
    lightgcn_best) sets+=(--set model.name=lightgcn --set model.knn_refines=content)
                   for s in $LIGHTGCN_BEST_SETS; do sets+=(--set "$s"); done ;;
    recgoat) ;;
    recgoat_content) sets+=(--set model.knn_refines=content) ;;
    no_oat|no_cmcl|no_gat|no_user_graph) sets+=(--set model.name="$variant") ;;
    default_recgoat) config="$REPO/configs/default.yaml"; sets+=(--set model.name=recgoat) ;;
    default_lightgcn) config="$REPO/configs/default.yaml"; sets+=(--set model.name=lightgcn --set model.knn_refines=content) ;;
    *) echo "unknown variant $variant" >&2; return 2 ;;
  esac
  for s in ${EXTRA_SETS:-}; do sets+=(--set "$s"); done
  echo "train: $variant seed $seed -> $out"
  recgoat train --config "$config" --set data.dataset="$DATASET" --set data.graph="$GRAPH" \
    --set train.seed="$seed" --set train.progress=false "${sets[@]}" --resume --out "$out" \
    > "$WORK/logs/$variant-seed$seed.log" 2>&1
}
export -f train_one recgoat
export REPO WORK PY LIGHTGCN_SETS LIGHTGCN_BEST_SETS EXTRA_SETS DATASET GRAPH

for seed in $SEEDS; do for variant in $VARIANTS; do echo "$variant $seed"; done; done |
  xargs -P "$JOBS" -n 2 bash -c 'train_one "$0" "$1"'

"$PY" "$REPO/benchmarks/accuracy_table.py" --dataset office --runs "$WORK/runs" --results "$REPO/benchmarks/RESULTS.md" \
  --time-epochs "${TIME_EPOCHS:-5}" --command "VARIANTS=\"$VARIANTS\" SEEDS=\"$SEEDS\" benchmarks/accuracy_office.sh"
