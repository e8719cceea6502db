"""The cluster configs parse and use only real options.

* ``cluster/aws-gpu.yaml`` is validated with Ray's own validator against the cluster-config JSON
  schema shipped in the ray package (the schema forbids unknown top-level and node-type keys).
* ``cluster/rayjob.yaml`` is checked against the documented KubeRay ``ray.io/v1`` fields
  (RayJobSpec, RayClusterSpec, HeadGroupSpec, WorkerGroupSpec; KubeRay API reference), and its
  entrypoint is parsed by ``jobs/train.py``'s own argument parser.
"""
from __future__ import annotations

import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

# https://ray-project.github.io/kuberay/reference/api/ (ray.io/v1)
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
               "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
               "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode",
               "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"}
RAYCLUSTER_SPEC = {"authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
                   "headGroupSpec", "headServiceAnnotations", "managedBy", "rayVersion", "suspend",
                   "upgradeStrategy", "workerGroupSpecs"}
HEAD_GROUP = {"enableIngress", "headService", "rayStartParams", "serviceType", "template"}
WORKER_GROUP = {"groupName", "idleTimeoutSeconds", "maxReplicas", "minReplicas", "numOfHosts", "rayStartParams",
                "replicas", "scaleStrategy", "suspend", "template"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
RUNTIME_ENV = {"working_dir", "py_modules", "pip", "uv", "conda", "env_vars", "excludes", "container",
               "image_uri", "config", "nsight", "py_executable", "java_jars"}


def test_launcher_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
    validate_config(config)           # jsonschema against ray/autoscaler/ray-schema.json
    assert config["provider"]["type"] == "aws"
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["resources"]["GPU"] >= 1 and workers["node_config"]["InstanceType"].startswith(("g", "p"))
    assert config["head_node_type"] in config["available_node_types"]
    setup = " ".join(config["setup_commands"])
    assert "download.pytorch.org/whl/cu121" in setup and "data.dgl.ai/wheels/torch-2.2/cu121" in setup


def test_launcher_schema_rejects_unknown_options():
    """The check above would catch a misspelt option (the schema is strict)."""
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
    config["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)


def test_rayjob_uses_documented_fields_and_a_valid_entrypoint():
    doc = yaml.safe_load((REPO / "cluster" / "rayjob.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob" and doc["metadata"]["name"]
    spec = doc["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert set(yaml.safe_load(spec["runtimeEnvYAML"])) <= RUNTIME_ENV
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC
    assert set(cluster["headGroupSpec"]) <= HEAD_GROUP
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for container in group["template"]["spec"]["containers"]:
            assert container["image"] and "nvidia.com/gpu" in container["resources"]["limits"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    assert all(isinstance(v, str) for v in cluster["headGroupSpec"]["rayStartParams"].values())
    # The entrypoint is a real jobs/train.py command line.
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/train.py"]
    import importlib.util
    module_spec = importlib.util.spec_from_file_location("jobs_train", REPO / "jobs" / "train.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    args = module.build_parser().parse_args(argv[2:])
    from recgoat_dist.config import load_config
    config = load_config(str(REPO / args.config), args.set)
    assert config.cluster.num_workers == 2 and config.cluster.use_gpu is True
