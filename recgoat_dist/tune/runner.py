"""``run_tune``: sample trials from a search space, run them in parallel on Ray Tune, publish the best.

Trials are single-process training runs (``cluster.num_workers = 0``), each holding
``cpus_per_trial`` Ray CPUs, so as many run side by side as the cluster has CPUs for. The cluster is
the one at ``cluster.address`` / ``RAY_ADDRESS`` when set (every node must then read ``data.graph``:
use an ``s3://`` URL), otherwise a local Ray started here with ``num_cpus`` CPUs.

Selection is on validation only: trials report validation metrics (never test) and the best trial
is the one with the highest best-epoch value of ``train.valid_metric``.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Optional

from recgoat_dist.config import Config, ConfigError
from recgoat_dist.storage import MANIFEST, Artifact, StorageError, exists, join
from recgoat_dist.tune.space import SearchSpace, SpaceError, sample_values

logger = logging.getLogger(__name__)


def _trial_base(config: Config) -> dict:
    """The config dict every trial starts from: single-process, fresh, quiet."""
    base = config.to_dict()
    base["cluster"]["num_workers"] = 0
    base["train"]["resume"] = False
    base["train"]["progress"] = False
    return base


def check_inputs(config: Config, space: SearchSpace, trials: int, out: str, overwrite: bool,
                 num_cpus: Optional[int] = None, cpus_per_trial: int = 1) -> None:
    """Everything that can be refused before Ray starts."""
    if trials < 1:
        raise ConfigError("--trials: must be >= 1")
    if cpus_per_trial < 1:
        raise ConfigError("--cpus-per-trial: must be >= 1")
    if num_cpus is not None and cpus_per_trial > num_cpus and not _cluster_address(config):
        raise ConfigError(f"--cpus-per-trial {cpus_per_trial} exceeds --num-cpus {num_cpus}: no trial could start")
    grid = space.grid_size()
    if trials % grid:
        raise SpaceError(f"{space.source}: the grid parameters have {grid} combinations; --trials {trials} "
                         f"must be a multiple of {grid} (each combination gets --trials / {grid} samples)")
    graphs = [config.data.graph] + [v for p in space.params if p.key == "data.graph" for v in p.values]
    if not any(graphs):
        raise ConfigError("config key data.graph: tune trains on a built graph (`recgoat graph`); set it "
                          "in --config or with --set data.graph=URL")
    for url in filter(None, graphs):
        Artifact(url, kind="graph")       # a clear error now, not in every trial
    if exists(join(out, MANIFEST)) and not overwrite:
        raise StorageError(f"{out}: a tune result already exists here (pass --overwrite)")


def _cluster_address(config: Config) -> Optional[str]:
    return config.cluster.address or os.environ.get("RAY_ADDRESS")


def ensure_ray(config: Config, num_cpus: Optional[int], cpus_per_trial: int) -> bool:
    """Connect to ``cluster.address`` / ``RAY_ADDRESS`` or start a local Ray; True if started here."""
    import ray

    if ray.is_initialized():
        return False
    env = {"DGLBACKEND": "pytorch", "OMP_NUM_THREADS": str(cpus_per_trial)}
    address = _cluster_address(config)
    if address:
        ray.init(address=address, runtime_env={"env_vars": env})
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 _node_ip_address="127.0.0.1", runtime_env={"env_vars": env})
    logger.info("Ray cluster: %s CPUs", ray.cluster_resources().get("CPU", 0))
    return True


def check_cluster(cpus_per_trial: int) -> None:
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    if cpus_per_trial > total:
        raise ConfigError(f"--cpus-per-trial {cpus_per_trial} exceeds the Ray cluster's {total:g} CPUs: "
                          "no trial could start")


def trial_progress(trials: int):
    """A Tune callback: a tqdm bar over finished trials, and one log line per trial."""
    from ray.tune import Callback
    from tqdm.auto import tqdm

    class TrialProgress(Callback):
        bar = None

        def __getstate__(self):        # Tune saves its callbacks with the experiment state
            return {}

        def _done(self, trial, how: str) -> None:
            if self.bar is None:
                self.bar = tqdm(total=trials, desc="trials finished", unit="trial")
            result = trial.last_result or {}
            score = result.get("best_score")
            logger.info("trial %s %s after %s epochs: best valid score %s", trial.trial_id, how,
                        result.get("epoch", 0), "–" if score is None else f"{score:.4f}")
            self.bar.update(1)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._done(trial, "finished")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._done(trial, "failed")

        def on_experiment_end(self, trials, **info):
            if self.bar is not None:
                self.bar.close()

    return TrialProgress()


def make_scheduler(space: SearchSpace, config: Config):
    """ASHA on the best validation score so far, with epochs as its time axis; None for random."""
    if space.scheduler == "random":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_t = space.max_epochs(config)
    return ASHAScheduler(time_attr="epoch", metric="best_score", mode="max", max_t=max_t,
                         grace_period=min(space.grace_period, max_t), reduction_factor=space.reduction_factor)


def trial_rows(results, space: SearchSpace) -> list[dict]:
    """One row per trial: its params, best validation score and epoch, epochs reported, status."""
    rows = []
    for index, result in enumerate(results):
        metrics = result.metrics or {}
        frame = result.metrics_dataframe
        curve = [] if frame is None or "score" not in frame else [float(v) for v in frame["score"]]
        if result.error is not None:
            status = f"error: {str(result.error).strip().splitlines()[-1][:200]}"
        elif metrics.get("trainer_done"):
            status = "completed"
        else:
            status = "stopped by scheduler"
        rows.append({
            "trial": index,
            "trial_id": metrics.get("trial_id") or os.path.basename(result.path or f"trial_{index}"),
            "params": sample_values(space, result.config),
            "best_score": metrics.get("best_score"),
            "best_epoch": metrics.get("best_epoch"),
            "epochs": len(curve),
            "curve": curve,
            "seconds": float(metrics.get("time_total_s", 0.0)),
            "status": status,
        })
    return rows


def best_row(rows: list[dict]) -> dict:
    scored = [r for r in rows if r["best_score"] is not None]
    if not scored:
        errors = [r["status"] for r in rows if r["status"].startswith("error")]
        raise ValueError(f"no trial reported a validation score ({len(rows)} trials; first failure: "
                         f"{errors[0] if errors else 'none'})")
    return max(scored, key=lambda r: (r["best_score"], -r["trial"]))   # ties: the earlier trial


def run_tune(config: Config, space: SearchSpace, trials: int, out: str, *, num_cpus: Optional[int] = None,
             cpus_per_trial: int = 1, max_concurrent: Optional[int] = None, seed: int = 0,
             overwrite: bool = False) -> dict:
    """Run the search and publish its result at ``out``; returns the manifest."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from recgoat_dist.tune.publish import publish_tune
    from recgoat_dist.tune.trial import run_trial

    check_inputs(config, space, trials, out, overwrite, num_cpus, cpus_per_trial)
    logging.getLogger("tensorboardX").setLevel(logging.WARNING)     # one line per metric name otherwise
    workdir = tempfile.mkdtemp(prefix="recgoat-tune-")
    started = ensure_ray(config, num_cpus, cpus_per_trial)
    start = time.perf_counter()
    try:
        check_cluster(cpus_per_trial)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, base=_trial_base(config), keys=space.keys, workdir=workdir,
                                 threads=cpus_per_trial),
            {"cpu": cpus_per_trial})
        tuner = tune.Tuner(
            trainable, param_space=space.ray_space(),
            tune_config=tune.TuneConfig(
                num_samples=trials // space.grid_size(), scheduler=make_scheduler(space, config),
                search_alg=BasicVariantGenerator(random_state=seed), max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(name="tune", storage_path=os.path.join(workdir, "ray"), verbose=0,
                                      callbacks=[trial_progress(trials)]))
        logger.info("tuning %s on %s: %d trials, scheduler %s, validation %s", config.model.name,
                    config.data.graph, trials, space.scheduler, config.train.valid_metric)
        rows = trial_rows(list(tuner.fit()), space)
        best = best_row(rows)
        seconds = time.perf_counter() - start
        logger.info("best of %d trials: valid %s %.4f (trial %d, %s) after %.1f s", len(rows),
                    config.train.valid_metric, best["best_score"], best["trial"], best["params"], seconds)
        return publish_tune(out, config, space, rows, best, seed=seed, seconds=seconds, overwrite=overwrite)
    finally:
        if started:
            ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
