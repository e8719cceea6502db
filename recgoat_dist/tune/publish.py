"""The tune artifact: best config, trials table and plot, published with a manifest (written last).

Layout under the output URL::

    best.yaml        the complete config of the best trial (``recgoat train --config best.yaml``)
    space.yaml       the search space as given
    trials.parquet   one row per trial: params, best validation score and epoch, curve, status
    trials.md        the same table in Markdown, best first
    trials.png       validation score per epoch of every trial, and each trial's best
"""
from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import yaml

from recgoat_dist.config import Config
from recgoat_dist.storage import ArtifactWriter
from recgoat_dist.tune.space import SearchSpace, apply_params


def _column(values: list[Any]) -> pa.Array:
    """A Parquet column for one param: its own type, or strings when a choice mixes types."""
    types = {type(v) for v in values if v is not None}
    if types <= {int, float} or len(types) <= 1:
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
    return pa.array([None if v is None else json.dumps(v) if not isinstance(v, str) else v for v in values])


def trials_table(rows: list[dict], space: SearchSpace) -> pa.Table:
    columns: dict[str, pa.Array] = {
        "trial": pa.array([r["trial"] for r in rows], pa.int64()),
        "trial_id": pa.array([r["trial_id"] for r in rows], pa.string()),
        "status": pa.array([r["status"] for r in rows], pa.string()),
    }
    for key in space.keys:
        columns[key] = _column([r["params"].get(key) for r in rows])
    columns["best_valid_score"] = pa.array([r["best_score"] for r in rows], pa.float64())
    columns["best_epoch"] = pa.array([r["best_epoch"] for r in rows], pa.int64())
    columns["epochs_reported"] = pa.array([r["epochs"] for r in rows], pa.int64())
    columns["valid_curve"] = pa.array([r["curve"] for r in rows], pa.list_(pa.float64()))
    columns["seconds"] = pa.array([r["seconds"] for r in rows], pa.float64())
    return pa.table(columns)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def trials_markdown(rows: list[dict], space: SearchSpace, metric: str, best: dict) -> str:
    header = ["trial", *space.keys, f"valid {metric} (best epoch)", "best epoch", "epochs", "seconds", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ordered = sorted(rows, key=lambda r: (r["best_score"] is None, -(r["best_score"] or 0.0), r["trial"]))
    for r in ordered:
        score = "–" if r["best_score"] is None else f"{r['best_score']:.4f}"
        if r is best:
            score = f"**{score}**"
        cells = [str(r["trial"]), *(_fmt(r["params"].get(k)) for k in space.keys), score,
                 _fmt(r["best_epoch"]), str(r["epochs"]), f"{r['seconds']:.1f}", r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def trials_plot(rows: list[dict], metric: str, best: dict, title: str) -> bytes:
    """PNG: per-epoch validation score of every trial (best in bold), and each trial's best score."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - MaxNLocator below

    fig, (ax_curve, ax_best) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        if r["curve"]:
            is_best = r is best
            ax_curve.plot(range(1, len(r["curve"]) + 1), r["curve"], marker=".", linewidth=2.5 if is_best else 1,
                          alpha=1.0 if is_best else 0.6, label=f"trial {r['trial']}" + (" (best)" if is_best else ""))
    ax_curve.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_curve.set_xlabel("epochs trained")
    ax_curve.set_ylabel(f"valid {metric}")
    ax_curve.set_title("validation per epoch (best trial bold)")
    if any(r["curve"] for r in rows):
        ax_curve.legend(fontsize="small")
    scored = sorted((r for r in rows if r["best_score"] is not None), key=lambda r: -r["best_score"])
    ax_best.bar(range(len(scored)), [r["best_score"] for r in scored],
                color=["tab:red" if r is best else "tab:blue" for r in scored])
    ax_best.set_xticks(range(len(scored)), [str(r["trial"]) for r in scored])
    ax_best.set_xlabel("trial")
    ax_best.set_ylabel(f"best valid {metric}")
    ax_best.set_title("best validation epoch per trial")
    fig.suptitle(title)
    from recgoat_dist.train.report import png_bytes
    return png_bytes(fig)


def best_config(config: Config, best: dict) -> Config:
    """The user's config (its cluster section included) with the best trial's params set."""
    return apply_params(config.to_dict(), best["params"])


def publish_tune(out: str, config: Config, space: SearchSpace, rows: list[dict], best: dict, *, seed: int,
                 seconds: float, overwrite: bool = False) -> dict:
    metric = config.train.valid_metric
    chosen = best_config(config, best)
    header = (f"# recgoat tune: best of {len(rows)} trials by validation {metric} = {best['best_score']:.4f} "
              f"(trial {best['trial']}, best epoch {best['best_epoch']}).\n"
              f"# Tuned: {', '.join(f'{k}={v}' for k, v in best['params'].items())}\n")
    with ArtifactWriter(out, kind="tune", overwrite=overwrite) as writer:
        writer.write_bytes("best.yaml", (header + chosen.to_yaml()).encode())
        writer.write_bytes("space.yaml", yaml.safe_dump(space.raw, sort_keys=False).encode())
        writer.write_table("trials.parquet", trials_table(rows, space))
        writer.write_bytes("trials.md", trials_markdown(rows, space, metric, best).encode())
        title = f"recgoat tune (base model {config.model.name}), {space.scheduler} scheduler, {len(rows)} trials"
        writer.write_bytes("trials.png", trials_plot(rows, metric, best, title))
        return writer.commit({
            "metric": f"valid {metric}", "mode": "max", "scheduler": space.scheduler, "num_trials": len(rows),
            "completed": sum(r["status"] == "completed" for r in rows),
            "stopped_by_scheduler": sum(r["status"] == "stopped by scheduler" for r in rows),
            "errors": sum(r["status"].startswith("error") for r in rows),
            "seed": seed, "seconds": round(seconds, 1), "graph": config.data.graph,
            "best": {"trial": best["trial"], "params": best["params"], "valid_score": best["best_score"],
                     "best_epoch": best["best_epoch"]},
        })
