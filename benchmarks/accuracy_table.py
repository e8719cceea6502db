"""Summarise the accuracy runs of one dataset (benchmarks/accuracy_lfm2k.sh, accuracy_office.sh)
into benchmarks/RESULTS.md.

Reads every run under ``--runs`` (named ``<variant>-seed<seed>``), reports mean +- std (sample
std over seeds) of validation Recall@20 (what was selected on) and test Recall/NDCG@10/20 at the
best validation epoch, epochs, and training seconds per epoch and in all (evaluation excluded),
checks the dataset's goals, and replaces only the section between that dataset's markers.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys

ORDER = ["lightgcn", "lightgcn_tuned", "lightgcn_best", "recgoat", "recgoat_content", "no_oat", "no_cmcl", "no_gat",
         "no_user_graph", "default_lightgcn", "default_recgoat"]
# Per dataset: markers' name, heading, what the split is, and MMRec's own figures on it (test R@20, N@20).
DATASETS = {
    "lfm2k": dict(
        heading="## Accuracy on LastFM-2k (benchmarks/accuracy_lfm2k.sh)",
        about="MMRec split of lfm2k (44,327 train / 4,799 valid / 7,219 test), full ranking over all 1,425 items "
              "with training items masked, test metrics at the best validation Recall@20 epoch; mean ± sample std "
              "over seeds. Item modalities: text (MiniLM) and audio (vggish); user LM profiles from lfm2k_text.tsv.",
        mmrec={"LightGCN": (0.4051, 0.2787), "FREEDOM": (0.4003, 0.2738), "VBPR": (0.2459, 0.1659)}),
    "office": dict(
        heading="## Accuracy on Amazon Office (benchmarks/accuracy_office.sh)",
        about="Amazon Office 5-core (../shared/data/office: 4,905 users, 2,420 items, 53,258 interactions), this "
              "project's per-user random split (seed 0), full ranking over all items with training items masked, "
              "test metrics at the best validation Recall@20 epoch; mean ± sample std over seeds. Item modalities: "
              "text (title + description) and text_meta (brand + categories), both MiniLM; no user LM profiles.",
        mmrec={"LightGCN": (0.1196, 0.0556), "FREEDOM": (0.1389, 0.0632), "LGMRec": (0.1389, 0.0649),
               "BM3": (0.1006, 0.0466)}),
}


def load_runs(root: str) -> dict[str, list[dict]]:
    from recgoat_dist.storage import StorageError
    from recgoat_dist.train.run import Run

    runs: dict[str, list[dict]] = {}
    for name in sorted(os.listdir(root)):
        match = re.fullmatch(r"(.+)-seed(\d+)", name)
        if not match:
            continue
        try:
            metrics = Run(os.path.join(root, name)).metrics
        except StorageError:
            continue                                   # unfinished
        runs.setdefault(match.group(1), []).append(metrics)
    return runs


def fmt(values: list[float], digits: int = 4) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(runs: dict[str, list[dict]]) -> list[str]:
    lines = ["| variant | seeds | valid R@20 | test R@10 | test R@20 | test N@10 | test N@20 | epochs run "
             "| best epoch | s/epoch | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant in [v for v in ORDER if v in runs] + sorted(set(runs) - set(ORDER)):
        ms = runs[variant]
        col = lambda key, split="test": [m[split][key] for m in ms]  # noqa: E731
        lines.append(f"| {variant} | {','.join(str(m['seed']) for m in ms)} | {fmt(col('recall@20', 'valid'))} | "
                     f"{fmt(col('recall@10'))} | "
                     f"{fmt(col('recall@20'))} | {fmt(col('ndcg@10'))} | {fmt(col('ndcg@20'))} | "
                     f"{fmt([m['epochs_run'] for m in ms], 1)} | {fmt([m['best_epoch'] for m in ms], 1)} | "
                     f"{fmt([m['seconds_per_epoch'] for m in ms], 2)} | "
                     f"{fmt([m['seconds_per_epoch'] * m['epochs_run'] for m in ms], 0)} |")
    return lines


def _mean(runs, variant: str, key: str, split: str = "test") -> float:
    return statistics.fmean(m[split][key] for m in runs[variant])


def _spread(runs, variant: str) -> float:
    values = [m["test"]["recall@20"] for m in runs[variant]]
    return statistics.stdev(values) if len(values) > 1 else 0.0


def shared_goals(runs: dict[str, list[dict]]) -> list[str]:
    """Goals of issue 15 that hold on every dataset: the full model against its ablations (by more
    than a seed's spread), the new option off, and the default configuration."""
    out = []
    if "recgoat" not in runs:
        return out
    r, spread = _mean(runs, "recgoat", "recall@20"), _spread(runs, "recgoat")
    for other in ("recgoat_content", "no_oat", "no_cmcl", "no_gat", "no_user_graph"):
        if other in runs:
            a = _mean(runs, other, "recall@20")
            margin = max(spread, _spread(runs, other))
            verdict = ("full better by more than a seed's spread" if r - a > margin
                       else "full better, within a seed's spread" if r > a else "full NOT better")
            out.append(f"- recgoat vs {other}: test R@20 {r:.4f} vs {a:.4f} (larger std {margin:.4f}: {verdict})")
    if {"default_recgoat", "default_lightgcn"} <= set(runs):
        d, g = _mean(runs, "default_recgoat", "recall@20"), _mean(runs, "default_lightgcn", "recall@20")
        dv, gv = (_mean(runs, v, "recall@20", "valid") for v in ("default_recgoat", "default_lightgcn"))
        out.append(f"- configs/default.yaml: RecGOAT vs LightGCN, valid R@20 {dv:.4f} vs {gv:.4f}, test R@20 "
                   f"{d:.4f} vs {g:.4f} = {d / g:.3f} (goal > 1: {'met' if d > g else 'NOT met'})")
    return out


def office_goals(runs: dict[str, list[dict]]) -> list[str]:
    out = []
    if "recgoat" in runs:
        r = _mean(runs, "recgoat", "recall@20")
        out.append(f"- RecGOAT (configs/office.yaml) test R@20 {r:.4f} vs MMRec FREEDOM 0.1389 "
                   f"(goal ≥: {'met' if r >= 0.1389 else 'NOT met'})")
        for base in ("lightgcn_best", "lightgcn_tuned", "lightgcn"):
            if base in runs:
                ratio = r / _mean(runs, base, "recall@20")
                out.append(f"- RecGOAT / {base} test R@20 = {ratio:.3f} (goal ≥ 1.10: "
                           f"{'met' if ratio >= 1.10 else 'NOT met'})")
        if "lightgcn_tuned" in runs:
            spe = lambda v: statistics.fmean(m["seconds_per_epoch"] for m in runs[v])  # noqa: E731
            out.append(f"- seconds per epoch (training only, same batch): recgoat {spe('recgoat'):.2f} vs "
                       f"lightgcn_tuned {spe('lightgcn_tuned'):.2f} = {spe('recgoat') / spe('lightgcn_tuned'):.2f}x")
    return out + shared_goals(runs)


def goals(runs: dict[str, list[dict]]) -> list[str]:
    mean = lambda v, k: statistics.fmean(m["test"][k] for m in runs[v])  # noqa: E731
    spe = lambda v: statistics.fmean(m["seconds_per_epoch"] for m in runs[v])  # noqa: E731
    out = []
    if "lightgcn" in runs:
        r = mean("lightgcn", "recall@20")
        within = abs(r / 0.4051 - 1) <= 0.03
        out.append(f"- protocol check: this code's LightGCN test R@20 {r:.4f} vs MMRec's 0.4051 "
                   f"({(r / 0.4051 - 1) * 100:+.1f}%; goal within ±3%): {'met' if within else 'NOT met'}")
    if "recgoat" in runs:
        r, n = mean("recgoat", "recall@20"), mean("recgoat", "ndcg@20")
        out.append(f"- RecGOAT test R@20 {r:.4f} (goal ≥ 0.425: {'met' if r >= 0.425 else 'NOT met'}), "
                   f"N@20 {n:.4f} (goal ≥ 0.293: {'met' if n >= 0.293 else 'NOT met'})")
        if "lightgcn" in runs:
            ratio = r / mean("lightgcn", "recall@20")
            out.append(f"- RecGOAT / LightGCN (MMRec's setting) test R@20 = {ratio:.3f} "
                       f"(goal ≥ 1.03: {'met' if ratio >= 1.03 else 'NOT met'}); "
                       f"seconds per epoch {spe('recgoat'):.2f} vs {spe('lightgcn'):.2f} = "
                       f"{spe('recgoat') / spe('lightgcn'):.2f}x (goal ≤ 2x: "
                       f"{'met' if spe('recgoat') <= 2 * spe('lightgcn') else 'NOT met'})")
        if "lightgcn_tuned" in runs:
            t = mean("lightgcn_tuned", "recall@20")
            out.append(f"- RecGOAT / LightGCN trained with RecGOAT's setting (lightgcn_tuned): test R@20 "
                       f"{r:.4f} / {t:.4f} = {r / t:.3f} (goal ≥ 1.03: {'met' if r / t >= 1.03 else 'NOT met'})")
    return out + shared_goals(runs)


def measure_epoch_times(runs_root: str, variants: list[str], rounds: int) -> dict[str, float]:
    """Median seconds of one training epoch per variant, each rebuilt from its seed-0 run's saved
    config, epochs interleaved in one process (``epoch_time.time_interleaved``)."""
    from epoch_time import time_interleaved       # benchmarks/ is this script's directory

    from recgoat_dist.train.run import Run

    return time_interleaved({v: Run(os.path.join(runs_root, f"{v}-seed0")).config for v in variants}, rounds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="lfm2k")
    p.add_argument("--command", default="benchmarks/accuracy_lfm2k.sh")
    p.add_argument("--note", default="", help="free text appended to the section")
    p.add_argument("--time-epochs", type=int, default=0,
                   help="also time this many interleaved epochs of lightgcn, lightgcn_tuned (when run) "
                        "and recgoat (seed-0 configs)")
    args = p.parse_args(argv)
    runs = load_runs(args.runs)
    if not runs:
        print(f"no finished runs under {args.runs}", file=sys.stderr)
        return 1
    spec = DATASETS[args.dataset]
    begin, end = f"<!-- accuracy_{args.dataset}:begin -->", f"<!-- accuracy_{args.dataset}:end -->"
    ref = " / ".join(f"{k} {r:.4f} / {n:.4f}" for k, (r, n) in spec["mmrec"].items())
    checks = goals(runs) if args.dataset == "lfm2k" else office_goals(runs)
    section = [begin, spec["heading"], "", spec["about"],
               f"MMRec's own code on this split (test R@20 / N@20): {ref}.", "",
               *table(runs), "", *checks, "", f"Command: `{args.command}`"]
    base = next((v for v in ("lightgcn", "lightgcn_tuned") if v in runs), None)
    if args.time_epochs and base and "recgoat" in runs:
        import logging
        logging.getLogger("recgoat_dist.ot.sinkhorn").setLevel(logging.WARNING)
        timed = [v for v in ("lightgcn", "lightgcn_tuned", "recgoat") if v in runs]
        t = measure_epoch_times(args.runs, timed, args.time_epochs)
        line = f"Controlled epoch time ({args.time_epochs} interleaved epochs each, one process, median): "
        if "lightgcn" in t:
            line += (f"lightgcn (MMRec's setting) {t['lightgcn']:.3f} s, recgoat {t['recgoat']:.3f} s = "
                     f"{t['recgoat'] / t['lightgcn']:.2f}x (goal ≤ 2x)")
        if "lightgcn_tuned" in t:   # same batch size and learning rate as recgoat: the per-batch overhead
            line += ("; " if "lightgcn" in t else f"recgoat {t['recgoat']:.3f} s, ")
            line += (f"lightgcn_tuned (RecGOAT's batch size) {t['lightgcn_tuned']:.3f} s, recgoat / "
                     f"lightgcn_tuned = {t['recgoat'] / t['lightgcn_tuned']:.2f}x")
        section += ["", line + "."]
    if args.note:
        section += ["", args.note]
    section.append(end)
    text = open(args.results).read() if os.path.exists(args.results) else "# Benchmark results\n"
    block = "\n".join(section)
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(args.results, "w") as fh:
        fh.write(text)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
