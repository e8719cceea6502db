"""``recgoat demo nightly --out DIR``: init, three nights, one bad day, a rollback, on the timeline.

Writes ``DIR/timeline`` (bootstrap dataset + daily deltas), ``DIR/registry`` (the model home),
prints one row per night and writes ``DIR/nightly.png``. Re-running reuses what exists: decided
dates are no-ops, so the table is the same.
"""
from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recgoat_dist.config import load_config
from recgoat_dist.data.dataset import DataError
from recgoat_dist.storage import absolute, exists, filesystem, join

logger = logging.getLogger(__name__)

# configs/nightly.yaml, for when no --config is given.
DEMO_SETTINGS = ["model.dim=32", "model.n_layers=2", "model.gat_layers=1", "model.num_landmarks=64",
                 "model.ot_batch=128", "train.epochs=12", "train.batch_size=1024", "train.lr=0.01",
                 "train.progress=false", "nightly.epochs=2", "nightly.gate.min_recall=0.05"]
NIGHTS = 3
START = "2024-01-01"


def _break_day(delta_dir: str) -> None:
    """The bad day: one NaN rating, as a broken upstream join would produce."""
    fs, path = filesystem(join(delta_dir, "interactions.parquet"))
    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh)
    ratings = table["rating"].to_numpy().copy()
    ratings[len(ratings) // 2] = np.nan
    table = table.set_column(table.column_names.index("rating"), "rating", pa.array(ratings, pa.float32()))
    with fs.open(path, "wb") as fh:
        pq.write_table(table, fh)


def _table(rows: list[dict]) -> str:
    head = (f"{'date':<12}{'step':<10}{'+users':>7}{'+items':>7}{'train s':>9}{'cand R@20':>11}{'champ R@20':>11}"
            f"{'new-item':>10}{'churn':>7}  decision")
    lines = [head, "-" * len(head)]

    def f(x, spec=".4f"):
        return "-" if x is None else format(x, spec)
    for r in rows:
        lines.append(f"{r['date']:<12}{r['step']:<10}{r.get('new_users', 0):>7}{r.get('new_items', 0):>7}"
                     f"{f(r.get('train_seconds'), '.1f'):>9}{f(r.get('candidate_recall@20')):>11}"
                     f"{f(r.get('champion_recall@20')):>11}{f(r.get('new_items_recall@20')):>10}"
                     f"{f(r.get('churn_overlap@20'), '.2f'):>7}  {r['decision']}")
    return "\n".join(lines)


def plot(rows: list[dict]) -> bytes:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [r for r in rows if r.get("candidate_recall@20") is not None]
    dates = [r["date"] for r in trained]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for key, label, style in (("candidate_recall@20", "candidate Recall@20 (known slice)", "o-"),
                              ("champion_recall@20", "champion Recall@20 (same holdout)", "s--"),
                              ("new_items_recall@20", "candidate new-item Recall@20", "^:")):
        ys = [np.nan if r.get(key) is None else r[key] for r in trained]
        ax.plot(dates, ys, style, label=label)
    for r in trained:
        ax.annotate(r["decision"], (r["date"], r["candidate_recall@20"]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=7)
    bad = [r["date"] for r in rows if r["step"] == "bad day"]
    for d in bad:
        ax.axvline(len(dates) - 0.5, color="red", alpha=0.3)
        ax.text(len(dates) - 0.55, ax.get_ylim()[1], f"{d}: rejected (bad delta) ", color="red", fontsize=7,
                ha="right", va="top")
    ax.set_ylabel("Recall@20 on the date's holdout")
    ax.set_title("Nightly retraining on the synthetic timeline")
    ax.legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def demo_nightly(args) -> int:
    from recgoat_dist.data.timeline import generate_timeline
    from recgoat_dist.nightly.night import init_registry, rollback, run_night
    from recgoat_dist.nightly.registry import Registry

    out = absolute(args.out)
    timeline_url, registry = join(out, "timeline"), join(out, "registry")
    delta = join(timeline_url, "events", "date={date}")
    dates = [(dt.date.fromisoformat(START) + dt.timedelta(days=d)).isoformat() for d in range(1, NIGHTS + 2)]
    if not exists(join(timeline_url, "base", "manifest.json")):     # a re-run reuses the timeline
        generate_timeline(timeline_url, days=NIGHTS + 1, start_date=START)
        _break_day(delta.format(date=dates[-1]))
    settings = ([] if args.config else DEMO_SETTINGS) + list(args.set or [])
    config = load_config(args.config, settings + [f"nightly.registry={registry}", f"nightly.delta={delta}"])

    rows = []
    outcome = init_registry(config, join(timeline_url, "base"), START)
    rows.append({**outcome.row, "step": "init", "date": outcome.date, "decision": outcome.row.get("decision",
                                                                                                    outcome.decision)})
    for date in dates[:NIGHTS]:
        outcome = run_night(config, date)
        rows.append({**outcome.row, "step": "night", "decision": outcome.row.get("decision", outcome.decision)})
    bad = dates[NIGHTS]
    try:
        outcome = run_night(config, bad)
        rows.append({**outcome.row, "step": "bad day", "decision": outcome.row.get("decision", outcome.decision)})
    except DataError as exc:
        print(f"bad day {bad}: {exc}")
        rows.append({"date": bad, "step": "bad day", "decision": "rejected (bad input)"})
    versions = [v for v in Registry(registry).versions() if v["decision"] == "promoted"]
    target = versions[-2]["version"] if len(versions) >= 2 else versions[-1]["version"]
    outcome = rollback(registry, target, config.nightly.lock_stale_seconds)
    rows.append({"date": target, "step": "rollback", "decision": outcome.message})
    print(_table(rows))
    png = join(out, "nightly.png")
    fs, path = filesystem(png)
    with fs.open(path, "wb") as fh:
        fh.write(plot(rows))
    print(f"registry at {registry} (recgoat registry show --registry {registry}); plot at {png}")
    return 0
