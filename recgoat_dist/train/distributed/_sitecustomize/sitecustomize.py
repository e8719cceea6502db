# Put on PYTHONPATH only by recgoat_dist.train.distributed.shim.enable (several partitions on one
# host): re-applies the shim in DGL's spawned sampler processes. Does nothing otherwise.
import os

if os.environ.get("RECGOAT_DGL_SHIM"):
    from recgoat_dist.train.distributed.shim import apply_from_env

    apply_from_env()
