"""Do the modalities carry signal, and what does RecGOAT do with it? (issue 15, "Diagnose with measurements")

On lfm2k and Amazon Office (../shared/data/*), prepared as their READMEs say in a work dir:

1. **Content alone** (no training): a content-only scorer (user = mean of the standardised,
   L2-normalised features of the user's training items; score = cosine) and item-KNN on the
   content features (score of item j = sum over the user's training items i of cos(x_i, x_j),
   over i's k most similar items), next to popularity and item-KNN on interactions (ID-only CF).
2. **A trained RecGOAT** (configs/lfm2k.yaml, one seed, `recgoat train`, single process; also
   LightGCN with the same file), its best checkpoint probed: the OAT gammas; norms of the content
   and ID parts of the ranked item vectors, and how much of the content part varies across items;
   Recall@20 with the content part removed (and with it alone); the GAT residual relative to the
   projection (and Recall@20 without it); what OAT transports: effective number of landmarks per
   plan row (exp of its entropy), effective rank of the transported content, and cosine of an
   item's transported content with its own ID vector (against a random item's, the landmarks'
   mean, and a ridge map from content to ID fitted on half the items as a ceiling).

All metrics: recgoat_dist.eval.evaluate_ranking (MMRec protocol, training items excluded), valid
and test Recall@20 / NDCG@20. Prints Markdown tables and writes benchmarks/out/diagnose_modalities.json.

    nice -n 10 .venv/bin/python benchmarks/diagnose_modalities.py --work /tmp/recgoat-diag
    (steps: --steps prepare train content probe; default all)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
KS = [10, 20, 50]


def recgoat(*args: str) -> None:
    """One `recgoat` CLI call (niced), failing loudly."""
    cmd = ["nice", "-n", "10", sys.executable, "-m", "recgoat_dist", *args]
    print("$ recgoat " + " ".join(args), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)


def done(url: Path) -> bool:
    return (url / "manifest.json").exists()


# ---- step 1: datasets, as the READMEs say ----------------------------------------------------------
def prepare(work: Path) -> None:
    lfm, office = SHARED / "lfm2k", SHARED / "office"
    ds, graph = work / "lfm2k" / "dataset", work / "lfm2k" / "graph"
    if not done(ds):
        recgoat("prepare", "mmrec", "--inter", str(lfm / "lfm2k.inter"),
                "--original-ids", str(lfm / "lfm2k_og_ids.inter"),
                "--feature", f"text={lfm / 'all-MiniLM-L6-v2.npy'}", "--feature", f"audio={lfm / 'vggish.npy'}",
                "--out", str(ds), "--overwrite")
        recgoat("prepare", "user-profiles", "--data", str(ds), "--text", str(lfm / "lfm2k_text.tsv"))
    if not done(graph):
        recgoat("graph", "--data", str(ds), "--out", str(graph), "--overwrite")
    ds, graph = work / "office" / "dataset", work / "office" / "graph"
    if not done(ds) or "text_meta" not in json.loads((ds / "manifest.json").read_text()).get("modalities", {}):
        recgoat("prepare", "parquet", "--interactions", str(office / "interactions.parquet"), "--out", str(ds),
                "--overwrite")
        recgoat("prepare", "encode-items", "--data", str(ds), "--text", str(office / "text.tsv"), "--name", "text")
        recgoat("prepare", "encode-items", "--data", str(ds), "--text", str(office / "meta.tsv"), "--name", "text_meta")
    if not done(graph):
        recgoat("graph", "--data", str(ds), "--out", str(graph), "--overwrite")


# ---- step 2: trained runs ---------------------------------------------------------------------------
def train(work: Path, seed: int) -> None:
    for name in ("lfm2k", "office"):
        for model in ("recgoat", "lightgcn"):
            out = work / name / "runs" / f"{model}-seed{seed}"
            if done(out):
                continue
            recgoat("train", "--config", str(REPO / "configs" / "lfm2k.yaml"),
                    "--set", f"data.dataset={work / name / 'dataset'}", "--set", f"data.graph={work / name / 'graph'}",
                    "--set", f"model.name={model}", "--set", f"train.seed={seed}", "--set", "train.progress=false",
                    "--resume", "--out", str(out))



# ---- shared helpers ---------------------------------------------------------------------------------
def load_data(work: Path, name: str):
    """The training inputs (graph, standardised features, splits) of one prepared dataset."""
    from recgoat_dist.config import load_config
    from recgoat_dist.train.inputs import load_inputs

    config = load_config(str(REPO / "configs" / "lfm2k.yaml"),
                         [f"data.dataset={work / name / 'dataset'}", f"data.graph={work / name / 'graph'}",
                          "train.progress=false"])
    return config, load_inputs(config)


def evaluate(users: torch.Tensor, items: torch.Tensor, inputs) -> dict:
    from recgoat_dist.eval import evaluate_ranking

    out = {}
    for split in ("valid", "test"):
        m = evaluate_ranking(users.float(), items.float(), inputs.train, getattr(inputs, split), KS)
        out[split] = {k: round(m[k], 4) for k in ("recall@20", "ndcg@20")}
    return out


def l2n(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)


def train_matrix(inputs) -> torch.Tensor:
    r = torch.zeros(inputs.num_users, inputs.num_items)
    users = np.repeat(np.arange(inputs.num_users), inputs.train.degree())
    r[torch.from_numpy(users), torch.from_numpy(inputs.train.indices)] = 1.0
    return r


def item_knn_scores(sim: torch.Tensor, r: torch.Tensor, k: int | None) -> torch.Tensor:
    """(U, I) scores: sum over the user's training items i of sim(i, j), j among i's k nearest."""
    sim = sim.clone()
    sim.fill_diagonal_(0.0)
    if k is not None and k < sim.shape[1]:
        keep = torch.zeros_like(sim, dtype=torch.bool)
        keep.scatter_(1, sim.topk(k, dim=1).indices, True)
        sim = torch.where(keep, sim, torch.zeros_like(sim))
    return r @ sim


# ---- step 3: what the content carries on its own -------------------------------------------------------
def content_only(work: Path, name: str) -> dict:
    _, inputs = load_data(work, name)
    r = train_matrix(inputs)
    eye = torch.eye(inputs.num_items)
    feats = {m: l2n(x) for m, x in inputs.item_feats.items()}
    if len(feats) > 1:      # every modality, each normalised, concatenated
        feats["+".join(feats)] = l2n(torch.cat(list(feats.values()), 1))
    rows = {"popularity": evaluate(torch.ones(inputs.num_users, 1), r.sum(0)[:, None], inputs)}
    cf = l2n(r.T)           # item-KNN on interactions (ID-only collaborative filtering)
    for k in (20, 100, None):
        rows[f"item-KNN on interactions, k={k or 'all'}"] = evaluate(item_knn_scores(cf @ cf.T, r, k), eye, inputs)
    for m, x in feats.items():
        profile = l2n(r @ x / r.sum(1, keepdim=True).clamp(min=1))
        rows[f"content mean-profile cosine ({m})"] = evaluate(profile, x, inputs)
        for k in (20, 100, None):
            rows[f"item-KNN on {m}, k={k or 'all'}"] = evaluate(item_knn_scores(x @ x.T, r, k), eye, inputs)
    # Does content add to collaborative signal? Interaction item-KNN (k=100) + alpha * text item-KNN
    # (k=20), alpha chosen on validation: a gain means the text holds what co-occurrence lacks.
    text = "text" if "text" in feats else next(iter(feats))
    cf_scores = item_knn_scores(cf @ cf.T, r, 100)
    text_scores = item_knn_scores(feats[text] @ feats[text].T, r, 20)
    hybrid = {a: evaluate(cf_scores + a * text_scores, eye, inputs) for a in (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)}
    alpha = max(hybrid, key=lambda a: hybrid[a]["valid"]["recall@20"])
    label = f"item-KNN interactions k=100 + {alpha} x item-KNN {text} k=20 (alpha of 0..0.5 best on valid)"
    rows[label] = hybrid[alpha]
    rows["(hybrid alphas tried: valid R@20)"] = {"alphas": {str(a): m["valid"]["recall@20"] for a, m in hybrid.items()}}
    return rows


# ---- step 4: probes of a trained RecGOAT ---------------------------------------------------------------
def effective_rank(x: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the item-centred matrix (Roy & Vetterli 2007)."""
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum()))


def mean_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((l2n(a) * l2n(b)).sum(1).mean())


def centred_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return mean_cos(a - a.mean(0), b - b.mean(0))


def ridge_ceiling(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> dict:
    """Cosine of a ridge map content -> ID vector on held-out items (best lambda on that half: optimistic)."""
    n = len(x)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fit, held = perm[: n // 2], perm[n // 2:]
    x1 = torch.cat([x, torch.ones(n, 1)], 1)
    best = None
    for lam in (1.0, 10.0, 100.0, 1000.0):
        a = x1[fit]
        w = torch.linalg.solve(a.T @ a + lam * torch.eye(a.shape[1]), a.T @ y[fit])
        pred = x1[held] @ w
        score = mean_cos(pred, y[held])
        if best is None or score > best["cos"]:
            best = {"lambda": lam, "cos": round(score, 4),
                    "centred_cos": round(mean_cos(pred - y[fit].mean(0), y[held] - y[fit].mean(0)), 4)}
    return best


@torch.no_grad()
def probe(work: Path, name: str, run_name: str) -> dict:
    from recgoat_dist.eval import topk_items
    from recgoat_dist.train.run import Run
    from recgoat_dist.train.engine import LocalEngine
    from recgoat_dist.train.inputs import load_inputs

    run = Run(str(work / name / "runs" / run_name))
    model, config = run.load_model(), run.config
    inputs = load_inputs(config)
    # One full-graph forward of every stream (the local engine's own), CPU, eval mode.
    engine = LocalEngine(config, inputs, model, out=str(work / "unused"), rng=np.random.default_rng(0),
                         device=torch.device("cpu"))
    model.eval()
    reps = engine.full_forward()
    users, items = model.final_embeddings(reps)
    landmarks = model.landmarks(reps)
    oat, gamma = model.oat, model.oat.gamma()
    out: dict = {"run": run.url, "best_epoch": run.metrics["best_epoch"],
                 "run_metrics": {s: {k: round(run.metrics[s][k], 4) for k in ("recall@20", "ndcg@20")}
                                 for s in ("valid", "test")},
                 "gamma": {m: round(float(g), 4) for m, g in gamma.items()},
                 "num_landmarks": int(len(landmarks)), "cold_items": int(inputs.cold_items.sum()),
                 "user_lm_weight": model.user_lm_weight}
    transported = {m: oat.transport(m, reps.item_modal[m], landmarks) for m in model.modalities}
    content = sum(gamma[m] * transported[m] for m in model.modalities)
    warm = torch.from_numpy(~inputs.cold_items)
    assert torch.allclose((items - reps.item_id)[warm], content[warm], atol=1e-4)   # the parts, as ranked
    ident = reps.item_id

    def norms(x: torch.Tensor) -> dict:
        return {"mean_norm": round(float(x.norm(dim=1).mean()), 4),
                "mean_norm_item_varying": round(float((x - x.mean(0)).norm(dim=1).mean()), 4),
                "effective_rank": round(effective_rank(x), 1)}

    out["norms"] = {"id_part": norms(ident), "content_part": norms(content),
                    **{f"transported_{m}": norms(t) for m, t in transported.items()},
                    "content_over_id": round(float(content.norm(dim=1).mean() / ident.norm(dim=1).mean()), 4),
                    "varying_content_over_varying_id": round(float((content - content.mean(0)).norm(dim=1).mean()
                                                                   / (ident - ident.mean(0)).norm(dim=1).mean()), 4)}
    no_content = torch.where(torch.from_numpy(inputs.cold_items)[:, None], content, ident)
    out["ranking"] = {"full": evaluate(users, items, inputs),
                      "without_content_part": evaluate(users, no_content, inputs),
                      "content_part_alone": evaluate(users, content, inputs)}
    evaluated = np.nonzero((inputs.valid.degree() > 0) & (inputs.train.degree() > 0))[0]
    top_full = topk_items(users, items, evaluated, inputs.train, 20)
    top_id = topk_items(users, no_content, evaluated, inputs.train, 20)
    overlap = [len(set(a) & set(b)) / 20 for a, b in zip(top_full, top_id)]
    out["ranking"]["top20_overlap_full_vs_without_content"] = round(float(np.mean(overlap)), 4)

    gat, no_gat_modal = {}, {}
    for m, stream in model.item_streams.items():
        proj = stream.project(inputs.item_feats[m])
        resid = reps.item_modal[m] - proj
        gat[m] = {"relative_norm_frobenius": round(float(resid.norm() / proj.norm()), 4),
                  "relative_norm_median_item": round(float((resid.norm(dim=1) / proj.norm(dim=1)).median()), 4),
                  "cos_output_vs_projection": round(mean_cos(reps.item_modal[m], proj), 4)}
        no_gat_modal[m] = proj
    content_no_gat = sum(gamma[m] * oat.transport(m, no_gat_modal[m], landmarks) for m in model.modalities)
    items_no_gat = torch.where(torch.from_numpy(inputs.cold_items)[:, None], content_no_gat, ident + content_no_gat)
    gat["ranking_without_gat_residual"] = evaluate(users, items_no_gat, inputs)
    out["gat"] = gat

    plans = {}
    perm = torch.randperm(len(ident), generator=torch.Generator().manual_seed(0))
    for k, m in enumerate(model.modalities):
        g = oat.landmark_potentials[k].clone()
        _, plan = oat.adapted_transport(m, reps.item_modal[m], landmarks, g)
        w = plan * plan.shape[0]                                   # rows sum to 1
        entropy = -(w * torch.log(w.clamp(min=1e-30))).sum(1)
        plans[m] = {"effective_landmarks_mean": round(float(entropy.exp().mean()), 1),
                    "effective_landmarks_median": round(float(entropy.exp().median()), 1),
                    "max_weight_mean": round(float(w.max(1).values.mean()), 4),
                    "distinct_argmax_landmarks": int(w.argmax(1).unique().numel()),
                    "cos_transported_vs_own_id": round(mean_cos(transported[m][warm], ident[warm]), 4),
                    "cos_transported_vs_random_item_id": round(mean_cos(transported[m][warm], ident[perm][warm]), 4),
                    # the item-varying parts only: a vector shared by every item cannot change a ranking
                    "cos_centred_transported_vs_own_id": round(centred_cos(transported[m][warm], ident[warm]), 4)}
    plans["cos_fused_content_vs_own_id"] = round(mean_cos(content[warm], ident[warm]), 4)
    plans["cos_centred_fused_content_vs_own_id"] = round(centred_cos(content[warm], ident[warm]), 4)
    plans["cos_landmark_mean_vs_own_id"] = round(mean_cos(landmarks.mean(0).expand_as(ident)[warm], ident[warm]), 4)
    x = torch.cat([inputs.item_feats[m] for m in model.modalities], 1)
    plans["ridge_content_to_id_heldout_cos"] = ridge_ceiling(x[warm], ident[warm])
    out["oat"] = plans
    return out


def table(rows: dict, lightgcn: dict | None) -> str:
    lines = ["| scorer | valid R@20 | valid N@20 | test R@20 | test N@20 |", "|---|---|---|---|---|"]
    if lightgcn:
        rows = {"LightGCN, configs/lfm2k.yaml (trained, this split)": lightgcn, **rows}
    for name, m in rows.items():
        if "alphas" in m:
            lines.append(f"| {name} | " + ", ".join(f"{a}: {v:.4f}" for a, v in m["alphas"].items()) + " | | | |")
            continue
        lines.append(f"| {name} | {m['valid']['recall@20']:.4f} | {m['valid']['ndcg@20']:.4f} | "
                     f"{m['test']['recall@20']:.4f} | {m['test']['ndcg@20']:.4f} |")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    """Test R@20 per dataset: LightGCN, content alone, hybrid item-KNN, and RecGOAT with / without its parts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("lfm2k", "office") if "probe" in results.get(n, {}) and "content_only" in results[n]]
    if not names:
        print("nothing to plot yet (run the content and probe steps)")
        return
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        r, content, pr = results[name], results[name]["content_only"], results[name]["probe"]
        text_knn = max((k for k in content if k.startswith("item-KNN on text, k=")),
                       key=lambda k: content[k]["valid"]["recall@20"])
        hybrid = next(k for k in content if k.startswith("item-KNN interactions k=100 + "))
        bars = {"LightGCN": r["lightgcn"]["test"], "popularity": content["popularity"]["test"],
                "item-KNN interactions k=100": content["item-KNN on interactions, k=100"]["test"],
                text_knn.replace("item-KNN on ", "item-KNN ") + " (no training)": content[text_knn]["test"],
                "item-KNN interactions + text": content[hybrid]["test"],
                "RecGOAT": pr["ranking"]["full"]["test"],
                "RecGOAT without content part": pr["ranking"]["without_content_part"]["test"],
                "RecGOAT content part alone": pr["ranking"]["content_part_alone"]["test"],
                "RecGOAT without GAT residual": pr["gat"]["ranking_without_gat_residual"]["test"]}
        colours = ["tab:grey", "tab:grey", "tab:grey", "tab:green", "tab:green"] + ["tab:blue"] * 4
        ax.barh(range(len(bars)), [m["recall@20"] for m in bars.values()], color=colours)
        ax.set_yticks(range(len(bars)), list(bars))
        ax.invert_yaxis()
        for i, m in enumerate(bars.values()):
            ax.text(m["recall@20"], i, f" {m['recall@20']:.4f}", va="center", fontsize=8)
        ax.set_xlim(0, 1.15 * max(m["recall@20"] for m in bars.values()))
        ax.set_xlabel("test Recall@20 (MMRec protocol)")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/recgoat-diag",
                   help="work dir for datasets, graphs and runs (never the repo)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--datasets", nargs="+", default=["lfm2k", "office"])
    p.add_argument("--steps", nargs="+", default=["prepare", "train", "content", "probe"],
                   choices=["prepare", "train", "content", "probe", "plot"], help="plot: only redraw from --json")
    p.add_argument("--extra-probes", nargs="*", default=[], metavar="RUN",
                   help="also probe these runs of <work>/<dataset>/runs/ (e.g. recgoat-eps0.1-seed1)")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "out" / "diagnose_modalities.json"))
    p.add_argument("--plot", default=str(REPO / "benchmarks" / "diagnose_modalities.png"))
    args = p.parse_args(argv)
    work = Path(args.work).resolve()
    if REPO in work.parents or work == REPO:
        raise SystemExit(f"--work {work}: keep datasets out of the repository")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if "prepare" in args.steps:
        prepare(work)
    if "train" in args.steps:
        train(work, args.seed)
    results = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
    for name in args.datasets:
        entry = results.setdefault(name, {})
        lightgcn_run = work / name / "runs" / f"lightgcn-seed{args.seed}"
        lightgcn = None
        if done(lightgcn_run):
            from recgoat_dist.train.run import Run
            metrics = Run(str(lightgcn_run)).metrics
            lightgcn = {s: {k: round(metrics[s][k], 4) for k in ("recall@20", "ndcg@20")} for s in ("valid", "test")}
            entry["lightgcn"] = lightgcn
        if "content" in args.steps:
            start = time.perf_counter()
            entry["content_only"] = content_only(work, name)
            print(f"\n### {name}: content alone ({time.perf_counter() - start:.1f} s)\n")
            print(table(entry["content_only"], lightgcn))
        if "probe" in args.steps:
            start = time.perf_counter()
            entry["probe"] = probe(work, name, f"recgoat-seed{args.seed}")
            print(f"\n### {name}: probes of the trained RecGOAT ({time.perf_counter() - start:.1f} s)\n")
            print(json.dumps(entry["probe"], indent=1))
        for run_name in args.extra_probes:      # other trained runs under <work>/<dataset>/runs/
            entry.setdefault("extra_probes", {})[run_name] = probe(work, name, run_name)
            print(f"\n### {name}: probes of {run_name}\n")
            print(json.dumps(entry["extra_probes"][run_name], indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    plot(results, args.plot)
    print(f"\nwrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
