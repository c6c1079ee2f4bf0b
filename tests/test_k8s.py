"""k8s/ runs raytag on KubeRay as cluster.yaml runs it on VMs, checked offline: the RayJobs
use only fields of KubeRay's RayJob CRD, with their types (tests/fixtures/kuberay/); their
pod templates, the ConfigMap and the Secrets' shape pass Kubernetes' own schema
(kubernetes-validate ships it); credentials come from Secrets only; Ray's autoscaler sees
cluster.yaml's node roles; the entrypoints parse as raytag's commands parse them."""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from ray._private.label_utils import parse_node_labels_string, validate_node_label_syntax
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)

from raytag.cli import tag_command, train_command
from raytag.settings import build
from raytag.tagging import TagOptions
from raytag.tagging.options import DECODE_ROLE, ROLE_LABEL
from raytag.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
RAYJOBS = {"tag": K8S / "tag-rayjob.yaml", "train": K8S / "train-rayjob.yaml"}
RAYJOB_SCHEMA = Path(__file__).parent / "fixtures" / "kuberay" / "rayjob-schema.yaml"
# Pod templates are checked against this Kubernetes version's schema: a field that older
# clusters lack fails here.
KUBERNETES_VERSION = "1.30"
# Environment variables that hold credentials by their name: they must come from a Secret.
CREDENTIAL = re.compile(r"ACCESS_KEY|SECRET|TOKEN|PASSWORD|USERNAME|CREDENTIAL")
PLACEHOLDER = "PLACEHOLDER"


def load(path: Path) -> dict[str, Any]:
    (document,) = yaml.safe_load_all(path.read_text())
    return document


@pytest.fixture(scope="module", params=sorted(RAYJOBS))
def rayjob(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(RAYJOBS[request.param])


def crd_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural schema as JSON Schema, as strict as `kubectl apply` (strict field
    validation, its default): an unknown field is an error except under
    x-kubernetes-preserve-unknown-fields; int32 fields hold int32 values. CEL rules
    (x-kubernetes-validations) are the API server's and are left out."""
    converted: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "description":
            continue
        if key == "properties":
            converted[key] = {name: crd_json_schema(field) for name, field in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            converted[key] = crd_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            converted[key] = [crd_json_schema(option) for option in value]
        else:
            converted[key] = value
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        converted["additionalProperties"] = False
    if schema.get("format") == "int32":
        converted.update(minimum=-(2**31), maximum=2**31 - 1)
    return converted


@pytest.fixture(scope="module")
def rayjob_crd() -> dict[str, Any]:
    return yaml.safe_load(RAYJOB_SCHEMA.read_text())["openAPIV3Schema"]


@pytest.fixture(scope="module")
def crd_validator(rayjob_crd: dict[str, Any]) -> jsonschema.Draft202012Validator:
    schema = crd_json_schema(rayjob_crd)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def trimmed_paths(value: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Where a manifest enters a subtree the fixture trimmed (preserve-unknown-fields)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        yield path
    elif isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            yield from trimmed_paths(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from trimmed_paths(item, schema["items"], f"{path}[{index}]")


def pod_templates(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Ray pods' templates by group: "head", then each worker group's name."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    groups = {group["groupName"]: group["template"] for group in cluster["workerGroupSpecs"]}
    return {"head": cluster["headGroupSpec"]["template"], **groups}


def containers(rayjob: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for template in pod_templates(rayjob).values():
        spec = template["spec"]
        yield from spec["containers"] + spec.get("initContainers", [])


def inline_credentials(rayjob: dict[str, Any]) -> list[str]:
    """Credential-named environment variables that do not come from a Secret: in a
    container's env, or in the job's runtime environment (which has no Secrets)."""
    runtime_env = yaml.safe_load(rayjob["spec"].get("runtimeEnvYAML") or "{}")
    return [
        entry["name"]
        for container in containers(rayjob)
        for entry in container.get("env", [])
        if CREDENTIAL.search(entry["name"]) and "secretKeyRef" not in entry.get("valueFrom", {})
    ] + [name for name in runtime_env.get("env_vars", {}) if CREDENTIAL.search(name)]


def k8s_validate(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def as_pod_template(name: str, template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": name},
        "template": template,
    }


def test_rayjob_runs_its_job_and_cleans_up(rayjob: dict[str, Any]) -> None:
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    spec = rayjob["spec"]
    program = shlex.split(spec["entrypoint"])[:2]
    assert program[0] == "python" and (ROOT / program[1]).is_file(), program
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] >= 0


def test_every_rayjob_field_is_in_kuberays_crd(
    rayjob: dict[str, Any], crd_validator: jsonschema.Draft202012Validator, rayjob_crd: dict
) -> None:
    """Field names and types as KubeRay's CRD has them; what the fixture trimmed is only
    ever a pod template, which Kubernetes' schema checks below."""
    crd_validator.validate(rayjob)
    entered = set(trimmed_paths(rayjob, rayjob_crd))
    templates = {
        f".spec.rayClusterSpec.workerGroupSpecs[{i}].template"
        for i in range(len(rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]))
    }
    assert entered == {".spec.rayClusterSpec.headGroupSpec.template", *templates}


def _worker_group(job: dict[str, Any], name: str) -> dict[str, Any]:
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return next(group for group in groups if group["groupName"] == name)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda job: job["spec"].update(shutdownAfterJobFinish=True),  # misspelt
        lambda job: job["spec"].update(ttlSecondsAfterFinished="300"),  # a string
        lambda job: job["spec"].update(shutdownAfterJobFinishes="yes"),
        lambda job: job["spec"]["rayClusterSpec"].update(authOptions={"mode": "tokens"}),
        lambda job: job["spec"]["rayClusterSpec"]["autoscalerOptions"].update(version="v3"),
        lambda job: _worker_group(job, "decode").update(maxReplica=4),
        lambda job: _worker_group(job, "decode").update(maxReplicas=2**31),  # not an int32
        lambda job: _worker_group(job, "decode").update(labels={"raytag/role": 1}),
        lambda job: _worker_group(job, "gpu").pop("groupName"),
        lambda job: job["spec"]["rayClusterSpec"]["headGroupSpec"].pop("template"),
    ],
)
def test_crd_schema_rejects_a_broken_copy(
    breakage: Callable[[dict], Any], crd_validator: jsonschema.Draft202012Validator
) -> None:
    broken = copy.deepcopy(load(RAYJOBS["tag"]))
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        crd_validator.validate(broken)


def test_pod_templates_pass_kubernetes_schema(rayjob: dict[str, Any]) -> None:
    for group, template in pod_templates(rayjob).items():
        k8s_validate(as_pod_template(f"{rayjob['metadata']['name']}-{group}", template))


@pytest.mark.parametrize(
    "breakage",
    [
        lambda spec: spec["containers"][0].update(imagePullPolicyy="Always"),  # misspelt
        lambda spec: spec["containers"][0]["resources"].update(limits=["nvidia.com/gpu"]),
        lambda spec: spec["containers"][0]["env"].append({"name": "A", "value": 1}),
        lambda spec: spec["volumes"][0].update(emptyDir="Memory"),
    ],
)
def test_kubernetes_schema_rejects_a_broken_pod_template(breakage: Callable) -> None:
    template = copy.deepcopy(pod_templates(load(RAYJOBS["tag"]))["gpu"])
    breakage(template["spec"])
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(as_pod_template("broken", template))


def test_credentials_come_from_secrets_only(rayjob: dict[str, Any]) -> None:
    assert inline_credentials(rayjob) == []
    names = {entry["name"] for c in containers(rayjob) for entry in c.get("env", [])}
    assert {"AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"} <= names
    # Token authentication is KubeRay's to set up: it generates the token into a Secret
    # and sets RAY_AUTH_MODE and RAY_AUTH_TOKEN on every Ray container and the submitter.
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert not {name for name in names if name.startswith("RAY_AUTH")}

    leaky = copy.deepcopy(rayjob)
    head = pod_templates(leaky)["head"]["spec"]["containers"][0]
    head["env"] = [{"name": "AWS_SECRET_ACCESS_KEY", "value": "inline"}]
    leaky["spec"]["runtimeEnvYAML"] += "env_vars: {MLFLOW_TRACKING_PASSWORD: inline}\n"
    assert inline_credentials(leaky) == ["AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"]


def test_the_jobs_read_the_secrets_and_settings_k8s_describes(rayjob: dict[str, Any]) -> None:
    """Every secretKeyRef names a key of the Secrets in secrets.example.yaml (whose values
    are placeholders), every configMapRef the ConfigMap of settings.yaml (no credentials
    in it); both files pass Kubernetes' schema."""
    secrets = list(yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()))
    settings = load(K8S / "settings.yaml")
    for resource in [*secrets, settings]:
        k8s_validate(resource)
    keys = {(s["metadata"]["name"], key) for s in secrets for key in s["stringData"]}
    assert {value for s in secrets for value in s["stringData"].values()} == {PLACEHOLDER}
    assert not [key for key in settings["data"] if CREDENTIAL.search(key)]
    for container in containers(rayjob):
        refs = {
            (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container["env"]
            if "valueFrom" in e
        }
        assert refs <= keys
        assert container["envFrom"] == [{"configMapRef": {"name": settings["metadata"]["name"]}}]


def test_both_jobs_run_on_the_same_cluster() -> None:
    tag, train = (load(RAYJOBS[name])["spec"]["rayClusterSpec"] for name in ("tag", "train"))
    assert tag == train


def autoscaler_node_types(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The node types Ray's autoscaler derives from the job's RayCluster (its own code)."""
    ray_cluster = {
        "metadata": {"name": "raytag", "namespace": "default"},
        "spec": rayjob["spec"]["rayClusterSpec"],
    }
    return _derive_autoscaling_config_from_ray_cr(ray_cluster)["available_node_types"]


def _node_roles(node_types: dict[str, dict[str, Any]]) -> dict[str | None, int]:
    """Each role's most workers; None: the head's (no role, no workers)."""
    return {
        node.get("labels", {}).get(ROLE_LABEL): node.get("max_workers", 0)
        for node in node_types.values()
    }


def test_ray_autoscaler_sees_cluster_yamls_nodes(rayjob: dict[str, Any]) -> None:
    """Ray's own reading of a RayCluster (what its autoscaler runs on): a CPU head without
    a role, GPU workers for inference and CPU-only decode workers, each pool scaled from
    zero to cluster.yaml's size, idle workers removed after cluster.yaml's timeout."""
    node_types = autoscaler_node_types(rayjob)
    vm_cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert _node_roles(node_types) == _node_roles(vm_cluster["available_node_types"])
    idle_seconds = rayjob["spec"]["rayClusterSpec"]["autoscalerOptions"]["idleTimeoutSeconds"]
    assert idle_seconds == 60 * vm_cluster["idle_timeout_minutes"]
    for name, node in node_types.items():
        role = node["labels"].get(ROLE_LABEL)
        assert node["min_workers"] == 0
        assert (node["resources"].get("GPU", 0) >= 1) == (role == "inference"), name
        assert role in (None, "inference", DECODE_ROLE)


def test_group_labels_reach_ray_start_as_ray_reads_them(rayjob: dict[str, Any]) -> None:
    """KubeRay passes a group's `labels` to `ray start --labels k=v,...` (since v1.5 it
    rejects rayStartParams['labels'], which Ray's autoscaler also ignores); Ray parses them
    back to the group's labels."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    labelled = {
        group["groupName"]: group.get("labels", {}) for group in cluster["workerGroupSpecs"]
    }
    assert labelled == {"gpu": {ROLE_LABEL: "inference"}, "decode": {ROLE_LABEL: DECODE_ROLE}}
    assert "labels" not in cluster["headGroupSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert "labels" not in group["rayStartParams"]
    for labels in labelled.values():
        ray_start_labels = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        validate_node_label_syntax(labels)
        assert parse_node_labels_string(ray_start_labels) == labels


def _pool(rayjob: dict[str, Any], role: str, resource: str) -> int:
    """The most of a resource the autoscaler can give a role's workers."""
    nodes = autoscaler_node_types(rayjob)
    return sum(
        node["max_workers"] * node["resources"].get(resource, 0)
        for node in nodes.values()
        if node["labels"].get(ROLE_LABEL) == role
    )


def test_tag_entrypoint_parses_and_fits_the_cluster() -> None:
    rayjob = load(RAYJOBS["tag"])
    args = shlex.split(rayjob["spec"]["entrypoint"])[2:]
    params = tag_command.make_context("tag", args).params
    options = build(TagOptions, params)
    assert params["output"].startswith("s3://") and params["manifest"].startswith("s3://")
    assert options.use_gpu and options.decode_on == "decode-nodes"
    assert 1 <= options.actors <= _pool(rayjob, "inference", "GPU")
    assert 1 <= options.decode_tasks <= _pool(rayjob, DECODE_ROLE, "CPU")


def test_train_entrypoint_parses_and_fits_the_cluster() -> None:
    rayjob = load(RAYJOBS["train"])
    args = shlex.split(rayjob["spec"]["entrypoint"])[2:]
    params = train_command.make_context("train", args).params
    config = build(TrainConfig, params)
    assert config.use_gpu and 1 <= config.num_workers <= _pool(rayjob, "inference", "GPU")
    assert config.storage_path.startswith("s3://"), "checkpoints a retry on any node can read"


def test_image_is_raytag_on_cluster_yamls_ray_image(rayjob: dict[str, Any]) -> None:
    """Every pod runs the image k8s/Dockerfile builds: cluster.yaml's official Ray image
    with FFmpeg and raytag installed from constraints.txt; the job's working_dir is the
    repository copy inside it."""
    images = {container["image"] for container in containers(rayjob)}
    (image,) = images
    assert image.rpartition(":")[2] == version("raytag")
    dockerfile = (K8S / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.MULTILINE)[1]
    assert base == yaml.safe_load((ROOT / "cluster.yaml").read_text())["docker"]["image"]
    assert re.fullmatch(r"rayproject/ray:2\.60\.\d+-py311-(cu\d+|gpu)", base)
    ray_version = rayjob["spec"]["rayClusterSpec"]["rayVersion"]
    assert ray_version == ray.__version__ == base.split(":")[1].split("-")[0]
    assert f"ray=={ray.__version__}" in (ROOT / "constraints.txt").read_text().splitlines()
    assert "ffmpeg" in dockerfile
    working_dir = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["working_dir"]
    assert re.search(rf"^COPY .* \. {working_dir}$", dockerfile, re.MULTILINE)
    assert re.search(rf"pip install .*-c {working_dir}/constraints\.txt {working_dir}", dockerfile)
