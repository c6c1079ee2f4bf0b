"""cluster.yaml passes Ray's own cluster-config schema (what `ray up` checks first) and has
what an operator relies on: autoscaling GPU workers fed by a decode pool of CPU-only spot
nodes sized by `raytag plan`, the official image, raytag installed, the jobs' environment
and token authentication."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray._private.label_utils import validate_node_label_syntax, validate_node_labels
from ray._private.ray_constants import LABELS_ENVIRONMENT_VARIABLE
from ray._private.resource_and_label_spec import ResourceAndLabelSpec
from ray.autoscaler._private.command_runner import _with_environment_variables
from ray.autoscaler._private.util import prepare_config, validate_config

from raytag.plan import GPU_NODES, PlanInputs, make_plan
from raytag.tagging.options import DECODE_ROLE, ROLE_LABEL

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def load() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def checked(config: dict[str, Any]) -> dict[str, Any]:
    """As `ray up` does before touching AWS: fill Ray's defaults, then validate the schema."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return checked(load())


def test_ray_schema_accepts_cluster_yaml(config: dict[str, Any]) -> None:
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["available_node_types"]["ray.worker.gpu"].update(min_workers="none"),
        lambda c: c.update(idle_timeout_minutes="soon"),
        lambda c: c["docker"].update(run_options="--gpus all"),  # must be a list
        lambda c: c.update(setup_comands=["typo"]),  # unknown top-level key
        lambda c: c["available_node_types"]["ray.worker.decode"].update(labels={"a": 1}),
    ],
)
def test_ray_schema_rejects_a_broken_copy(breakage) -> None:
    broken = load()
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        checked(broken)


def _gpu_worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: node
        for name, node in config["available_node_types"].items()
        if name != config["head_node_type"]
        and re.match(r"[gp]\d", node["node_config"]["InstanceType"])  # g5, g6, p4d, p5...
    }


def test_cpu_head_and_autoscaling_gpu_workers(config: dict[str, Any]) -> None:
    head = config["available_node_types"][config["head_node_type"]]
    assert re.match(r"[mcr]\d", head["node_config"]["InstanceType"]), "a CPU instance"
    assert head.get("resources", {}).get("GPU", 0) == 0
    workers = _gpu_worker_types(config)
    assert workers, "a GPU worker node type"
    for node in workers.values():
        assert 0 <= node["min_workers"] < node["max_workers"] <= config["max_workers"]


def test_official_ray_260_python_311_cuda_image(config: dict[str, Any]) -> None:
    images = {config["docker"]["image"], *(config["docker"].get(k) for k in
                                           ("head_image", "worker_image"))} - {None}  # fmt: skip
    for image in images:
        assert re.fullmatch(r"rayproject/ray:2\.60\.\d+-py311-(cu\d+|gpu)", image), image
    import ray

    assert ray.__version__.startswith("2.60."), "the image's Ray is the one tests run"


def test_setup_installs_raytag_and_ffmpeg(config: dict[str, Any]) -> None:
    for commands in (config["head_setup_commands"], config["worker_setup_commands"]):
        text = "\n".join(commands)
        assert re.search(r"pip install .*-c \S*constraints\.txt \S*raytag", text)
        assert "ffmpeg" in text
    assert "." in config["file_mounts"].values(), "the working tree is copied to the nodes"
    assert ".gitignore" in config["rsync_filter"], ".venv/ and demo/ stay behind"


def test_jobs_environment(config: dict[str, Any]) -> None:
    env = dict(
        option.removeprefix("--env ").split("=", 1)
        for option in config["docker"]["run_options"]
        if option.startswith("--env ")
    )
    assert env["MLFLOW_TRACKING_URI"].startswith("http")
    assert env["AWS_REGION"] == config["provider"]["region"]
    assert not any(key.startswith("AWS_SECRET") or "PASSWORD" in key for key in env)


def test_token_authentication_is_on_everywhere(config: dict[str, Any]) -> None:
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start
    assert "~/.ray/auth_token" in config["file_mounts"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start


def _role(node: dict[str, Any]) -> str | None:
    return node.get("labels", {}).get(ROLE_LABEL)


def _decode_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    nodes = config["available_node_types"].items()
    return {name: node for name, node in nodes if _role(node) == DECODE_ROLE}


def test_every_node_has_one_role(config: dict[str, Any]) -> None:
    """The tagging job places decoding by these labels: GPU workers infer, decode workers
    decode, and the head is neither."""
    head = config["available_node_types"][config["head_node_type"]]
    assert _role(head) is None
    for node in _gpu_worker_types(config).values():
        assert _role(node) == "inference"
    assert _decode_types(config), "a decode node type"
    assert not set(_decode_types(config)) & set(_gpu_worker_types(config))


def test_decode_pool_is_cpu_only_autoscaled_spot(config: dict[str, Any]) -> None:
    for node in _decode_types(config).values():
        instance = node["node_config"]["InstanceType"]
        assert re.match(r"[cmr]\d", instance), f"{instance}: a CPU instance"
        assert node["resources"].get("GPU", 0) == 0
        assert node["min_workers"] == 0, "no decode node is paid for between jobs"
        assert node["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        assert node["node_config"]["IamInstanceProfile"]["Name"], "it reads the catalogue"
    workers = [n for name, n in config["available_node_types"].items()
               if name != config["head_node_type"]]  # fmt: skip
    assert sum(node["max_workers"] for node in workers) <= config["max_workers"]


def test_labels_reach_ray_start_as_ray_reads_them(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's updater prefixes the shared start command with the node type's labels; the
    shell hands them to `ray start`, which applies and validates them."""
    assert "--labels" not in " ".join(config["worker_start_ray_commands"])
    for node in config["available_node_types"].values():
        labels = node.get("labels", {})
        validate_node_labels(labels)
        validate_node_label_syntax(labels)
        command = _with_environment_variables(
            f"printenv {LABELS_ENVIRONMENT_VARIABLE}", {LABELS_ENVIRONMENT_VARIABLE: labels}
        )
        exported = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, check=True
        ).stdout.strip()
        monkeypatch.setenv(LABELS_ENVIRONMENT_VARIABLE, exported)
        assert ResourceAndLabelSpec._load_env_labels() == labels


def test_decode_pool_feeds_the_gpu_pool_as_planned(config: dict[str, Any]) -> None:
    """`raytag plan` for the GPU workers at their max_workers asks for no more decode nodes
    than cluster.yaml allows."""
    for gpu_node in _gpu_worker_types(config).values():
        instance = gpu_node["node_config"]["InstanceType"]
        gpu = next(g for g, shape in GPU_NODES.items() if shape.instance_type == instance)
        plan = make_plan(PlanInputs(gpu_types=(gpu,), gpu_nodes=gpu_node["max_workers"]))
        (planned,) = plan.gpus
        allowed = sum(node["max_workers"] for node in _decode_types(config).values())
        assert allowed >= planned.decode_nodes >= 1
