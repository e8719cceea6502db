"""Summarise the lfm2k accuracy runs (benchmarks/accuracy_lfm2k.sh) into benchmarks/RESULTS.md.

Reads every run under ``--runs`` (named ``<variant>-seed<seed>``), reports mean +- std (sample
std over seeds) of test Recall/NDCG@10/20 at the best validation epoch, epochs, and training
seconds per epoch and in all (evaluation excluded), checks the goals, and replaces only the
section between this script's markers.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys

BEGIN, END = "<!-- accuracy_lfm2k:begin -->", "<!-- accuracy_lfm2k:end -->"
ORDER = ["lightgcn", "lightgcn_tuned", "recgoat", "no_oat", "no_cmcl", "no_gat", "no_user_graph"]
MMREC = {"LightGCN": (0.4051, 0.2787), "FREEDOM": (0.4003, 0.2738), "VBPR": (0.2459, 0.1659)}


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
    lines = ["| variant | seeds | test R@10 | test R@20 | test N@10 | test N@20 | epochs run | best epoch "
             "| s/epoch | train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for variant in [v for v in ORDER if v in runs] + sorted(set(runs) - set(ORDER)):
        ms = runs[variant]
        col = lambda key: [m["test"][key] for m in ms]  # noqa: E731
        lines.append(f"| {variant} | {','.join(str(m['seed']) for m in ms)} | {fmt(col('recall@10'))} | "
                     f"{fmt(col('recall@20'))} | {fmt(col('ndcg@10'))} | {fmt(col('ndcg@20'))} | "
                     f"{fmt([m['epochs_run'] for m in ms], 1)} | {fmt([m['best_epoch'] for m in ms], 1)} | "
                     f"{fmt([m['seconds_per_epoch'] for m in ms], 2)} | "
                     f"{fmt([m['seconds_per_epoch'] * m['epochs_run'] for m in ms], 0)} |")
    return lines


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
                       f"{r:.4f} / {t:.4f} = {r / t:.3f}")
        for ablation in ("no_oat", "no_cmcl", "no_gat", "no_user_graph"):
            if ablation in runs:
                a = mean(ablation, "recall@20")
                out.append(f"- recgoat vs {ablation}: test R@20 {r:.4f} vs {a:.4f} "
                           f"({'full better' if r > a else 'full NOT better'})")
    return out


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
    ref = " / ".join(f"{k} {r:.4f} / {n:.4f}" for k, (r, n) in MMREC.items())
    section = [BEGIN, "## Accuracy on LastFM-2k (benchmarks/accuracy_lfm2k.sh)", "",
               "MMRec split of lfm2k (44,327 train / 4,799 valid / 7,219 test), full ranking over all 1,425 items "
               "with training items masked, test metrics at the best validation Recall@20 epoch; mean ± sample std "
               "over seeds. Item modalities: text (MiniLM) and audio (vggish); user LM profiles from lfm2k_text.tsv.",
               f"MMRec's own code on this split (test R@20 / N@20): {ref}.", "",
               *table(runs), "", *goals(runs), "", f"Command: `{args.command}`"]
    if args.time_epochs and {"lightgcn", "recgoat"} <= set(runs):
        import logging
        logging.getLogger("recgoat_dist.ot.sinkhorn").setLevel(logging.WARNING)
        timed = [v for v in ("lightgcn", "lightgcn_tuned", "recgoat") if v in runs]
        t = measure_epoch_times(args.runs, timed, args.time_epochs)
        line = (f"Controlled epoch time ({args.time_epochs} interleaved epochs each, one process, median): "
                f"lightgcn (MMRec's setting) {t['lightgcn']:.3f} s, recgoat {t['recgoat']:.3f} s = "
                f"{t['recgoat'] / t['lightgcn']:.2f}x (goal ≤ 2x)")
        if "lightgcn_tuned" in t:   # same batch size and learning rate as recgoat: the per-batch overhead
            line += (f"; lightgcn_tuned (RecGOAT's batch size) {t['lightgcn_tuned']:.3f} s, recgoat / "
                     f"lightgcn_tuned = {t['recgoat'] / t['lightgcn_tuned']:.2f}x")
        section += ["", line + "."]
    if args.note:
        section += ["", args.note]
    section.append(END)
    text = open(args.results).read() if os.path.exists(args.results) else "# Benchmark results\n"
    block = "\n".join(section)
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(args.results, "w") as fh:
        fh.write(text)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
