# Sourced by the lfm2k benchmark scripts: prepares lfm2k's dataset (MMRec split; text = MiniLM,
# audio = vggish; user profiles from lfm2k_text.tsv) and its graph under $WORK, once.
# Needs LFM (../shared/data/lfm2k), WORK and a `recgoat` shell function.
prepare_lfm2k() {
  if [ ! -f "$WORK/dataset/manifest.json" ]; then
    recgoat prepare mmrec --inter "$LFM/lfm2k.inter" --original-ids "$LFM/lfm2k_og_ids.inter" \
      --feature text="$LFM/all-MiniLM-L6-v2.npy" --feature audio="$LFM/vggish.npy" --out "$WORK/dataset" --overwrite
    recgoat prepare user-profiles --data "$WORK/dataset" --text "$LFM/lfm2k_text.tsv"
  fi
  [ -f "$WORK/graph/manifest.json" ] || recgoat graph --data "$WORK/dataset" --out "$WORK/graph" --overwrite
}
