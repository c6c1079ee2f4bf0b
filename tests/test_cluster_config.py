"""cluster.yaml passes Ray's own cluster-config schema (what `ray up` checks first) and has
what an operator relies on: autoscaling GPU workers, the official image, raytag installed,
the jobs' environment and token authentication."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

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
