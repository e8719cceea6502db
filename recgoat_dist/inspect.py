"""``recgoat inspect URL [--json]``: the summary of any artifact's manifest."""
from __future__ import annotations

import json

SUMMARY_KEYS = {
    "dataset": ["num_users", "num_items", "num_interactions", "splits", "modalities", "user_modalities"],
    "graph": ["dataset", "num_users", "num_items", "num_edges", "knn_k", "user_knn_k", "engine",
              "recall_vs_exact"],
    "partitions": ["graph", "num_parts", "method", "dgl_config", "parts", "edge_cut"],
}


def summary(url: str) -> dict:
    """The artifact's metadata (everything in its manifest but the per-file table)."""
    from recgoat_dist.storage import Artifact

    artifact = Artifact(url)
    info = {k: v for k, v in artifact.manifest.items() if k != "files"}
    info["url"] = artifact.url
    info["num_files"] = len(artifact.manifest.get("files", {}))
    return info


def _text(info: dict) -> str:
    keys = SUMMARY_KEYS.get(info["kind"], [])
    lines = [f"{info['kind']} at {info['url']} (created {info.get('created_utc', '?')})"]
    for key in keys + sorted(k for k in info if k not in keys and k not in ("kind", "url", "created_utc")):
        if key in info:
            lines.append(f"  {key}: {json.dumps(info[key], sort_keys=True)}")
    return "\n".join(lines)


def _run(args) -> None:
    info = summary(args.url)
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else _text(info))


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="summarise an artifact (dataset, graph, partitions, run)")
    p.add_argument("url")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)
