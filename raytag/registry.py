"""MLflow: log a model folder, register versions, set aliases, load back. Nothing is pickled.

A raytag model folder (``model.safetensors`` + ``raytag.json``, see raytag.checkpoint) is
logged as an MLflow pyfunc model "from code": MLflow stores a three-line Python file that
builds :class:`RaytagPyfunc`, instead of a cloudpickled object, and the folder itself as the
pyfunc artifact ``raytag``. So ``mlflow.pyfunc.load_model(uri)`` works (given raytag is
installed) and :func:`load` returns the same folder as a ready :class:`LoadedModel`, both
without unpickling anything. The logged MLflow model looks like::

    MLmodel                 python_function flavor, signature, metadata (vocabulary, audio)
    raytag_pyfunc.py        set_model(RaytagPyfunc())
    artifacts/raytag/       model.safetensors + raytag.json
    requirements.txt, python_env.yaml, conda.yaml

Registry stages are deprecated in MLflow 3: versions are promoted with aliases
(``models:/NAME@champion``), through the gate of :mod:`raytag.promotion`. Every version
:func:`log_model` registers gets its model card (:mod:`raytag.model_card`).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import replace
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

# Submodule imports only: ruff would take a bare `mlflow` for the repo's mlflow/ folder.
import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
from mlflow.entities import Run
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from raytag.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    LoadedModel,
    load_model,
    read_meta,
    save_model,
)
from raytag.model_card import RUN_NAME_TAG, describe_version, metric_safe
from raytag.models.inference import predict_track
from raytag.storage import is_local, local_path

ARTIFACT_KEY = "raytag"  # the model folder inside the MLflow model: artifacts/raytag/
_MODEL_CODE_FILE = "raytag_pyfunc.py"
_MODEL_CODE = '''"""A raytag model as an MLflow pyfunc, logged from code: nothing is pickled."""
from mlflow.models import set_model

from raytag.registry import RaytagPyfunc

set_model(RaytagPyfunc())
'''
# What a serving environment needs; raytag itself must come from the project's own index.
_REQUIREMENTS = ("raytag", "torch", "torchaudio", "safetensors", "numpy", "mlflow")


class RaytagPyfunc(PythonModel):
    """Tags waveforms: each row of a float32 (n, samples) array is one clip at the model's
    sample rate, cut into patches by the model's audio policy and scored as one track."""

    def load_context(self, context: PythonModelContext) -> None:
        self.loaded = load_model(context.artifacts[ARTIFACT_KEY])

    def predict(
        self, context: PythonModelContext, model_input: np.ndarray, params: dict | None = None
    ) -> np.ndarray:
        waves = np.asarray(model_input, dtype=np.float32)
        waves = waves[None, :] if waves.ndim == 1 else waves
        model, audio = self.loaded.model, self.loaded.audio
        return np.stack([predict_track(model, wave, audio).scores for wave in waves])


def signature(n_tags: int) -> ModelSignature:
    """Input: float32 waveforms (clips, samples); output: sigmoid scores (clips, n_tags)."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_tags))]),
    )


def log_model(
    model: LoadedModel | str | Path,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    alias: str | None = None,
) -> ModelInfo:
    """Log a model (loaded, or a local model folder) into the active run, optionally as a new
    version of ``registered_model_name``, with its model card (:func:`describe_version`, from
    the folder and the active run's params and metrics: log a run's evaluation before its
    model) and ``alias`` on it. Without an active run MLflow 3 logs the model on its own,
    and ``runs:/`` URIs cannot reach it.

    ``info.registered_model_version`` is the new version; ``info.model_uri`` loads it.
    """
    if alias is not None and registered_model_name is None:
        raise ValueError("an alias needs registered_model_name")
    with tempfile.TemporaryDirectory(prefix="raytag-log-") as tmp:
        # MLflow names the artifact folder after the source folder: stage it as "raytag/".
        folder = Path(tmp) / ARTIFACT_KEY
        if isinstance(model, LoadedModel):
            save_model(
                folder,
                model.model,
                model.vocabulary,
                model.audio,
                name=model.name,
                version=model.version,
                thresholds=model.thresholds,
            )
        else:
            source = Path(local_path(str(model)))
            read_meta(source)
            folder.mkdir()
            for file in (WEIGHTS_FILE, META_FILE):
                shutil.copy2(source / file, folder / file)
        meta = read_meta(folder)
        code = Path(tmp) / _MODEL_CODE_FILE
        code.write_text(_MODEL_CODE)
        with warnings.catch_warnings():
            # The signature is explicit; an example waveform would only bloat the artifacts.
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=code,
                artifacts={ARTIFACT_KEY: str(folder)},
                signature=signature(len(meta["vocabulary"])),
                pip_requirements=[f"{dist}=={dist_version(dist)}" for dist in _REQUIREMENTS],
                metadata={
                    "raytag_name": meta["name"],
                    "vocabulary": meta["vocabulary"],
                    "audio": meta["audio"],
                    "model": meta["model"],
                },
                registered_model_name=registered_model_name,
            )
    if registered_model_name is not None:
        active = mlflow.active_run()
        run_id = active.info.run_id if active else None
        describe_version(registered_model_name, info.registered_model_version, meta, run_id)
    if alias is not None:
        set_alias(registered_model_name, info.registered_model_version, alias)
    return info


def register_folder(
    folder: str | Path, name: str, *, alias: str | None = None, experiment: str | None = None
) -> ModelInfo:
    """Register a model folder made outside training (e.g. an imported checkpoint) from a run
    of its own, so every registered version still points at a run."""
    experiment_id = mlflow.set_experiment(experiment).experiment_id if experiment else None
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"register-{name}"):
        return log_model(folder, registered_model_name=name, alias=alias)


def set_alias(name: str, version: int | str, alias: str) -> None:
    """Point ``models:/NAME@ALIAS`` at ``version`` (moving the alias if it was elsewhere)."""
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def load(uri: str | Path, device: str = "cpu") -> LoadedModel:
    """A ready model from ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN/PATH``,
    any other MLflow artifact URI, or a local folder (a raytag folder or an MLflow model).

    Registry URIs report the registered name and version instead of the folder's own.
    """
    uri = str(uri)
    if is_local(uri):
        loaded = load_model(_model_folder(Path(local_path(uri))), device)
    else:
        with tempfile.TemporaryDirectory(prefix="raytag-load-") as tmp:
            root = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            loaded = load_model(_model_folder(Path(root)), device)
    registered = registered_version(uri)
    if registered is not None:
        loaded = replace(loaded, name=registered[0], version=registered[1])
    return loaded


def list_versions(name: str | None = None) -> list[dict[str, Any]]:
    """Registered versions (of one model, or all), newest first, with their aliases and
    version tags (the model card's :data:`CARD_TAGS`, comparisons, promotions)."""
    client = MlflowClient()
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for model_name in names:
        # search_model_versions leaves aliases out; the registered model has them all.
        aliases = client.get_registered_model(model_name).aliases
        for mv in client.search_model_versions(f"name = '{model_name}'"):
            rows.append(
                {
                    "name": mv.name,
                    "version": int(mv.version),
                    "aliases": sorted(a for a, v in aliases.items() if str(v) == mv.version),
                    "run_id": mv.run_id,
                    "source": mv.source,
                    "tags": dict(mv.tags),
                }
            )
    return sorted(rows, key=lambda row: (row["name"], -row["version"]))


def find_runs(experiment: str, run_name: str) -> list[Run]:
    """The MLflow runs of ``experiment`` tagged with the Ray Train ``run_name``, newest first:
    how a resumed fit finds the run to log into, and a watcher the run to follow."""
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'"
    )


def log_config(config: Mapping[str, Any]) -> dict[str, str]:
    """Log a (nested) config as run params with dotted keys, so every setting is searchable."""
    params = {key: str(value) for key, value in _flatten(config).items()}
    mlflow.log_params(params)
    return params


def log_run_evaluation(
    metrics: Mapping[str, Any], plots: Iterable[str | Path] = (), *, prefix: str = "test"
) -> None:
    """Log an evaluation (raytag.evaluate) into the active run: macro and per-tag AUCs as
    metrics (``test_macro_roc_auc``, ``test_roc_auc/piano``..., ``test_n_tracks``), the full
    JSON and the plots as artifacts under ``evaluation/<prefix>/``. Tags without a score are
    left out."""
    values = {
        f"{prefix}_macro_roc_auc": metrics.get("macro_roc_auc"),
        f"{prefix}_macro_pr_auc": metrics.get("macro_pr_auc"),
        f"{prefix}_n_tracks": metrics.get("n_tracks"),
    }
    for row in metrics.get("per_tag", []):
        tag = metric_safe(row["tag"])
        values[f"{prefix}_roc_auc/{tag}"] = row["roc_auc"]
        values[f"{prefix}_pr_auc/{tag}"] = row["pr_auc"]
    mlflow.log_metrics({key: float(v) for key, v in values.items() if v is not None})
    folder = f"evaluation/{prefix}"
    mlflow.log_dict(dict(metrics), f"{folder}/metrics.json")
    for plot in plots:
        mlflow.log_artifact(str(plot), folder)


def _flatten(config: Mapping[str, Any], parent: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        full = f"{parent}.{key}" if parent else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, full))
        else:
            out[full] = value
    return out


def _model_folder(root: Path) -> Path:
    """The raytag folder in a download: the root itself or an MLflow model's artifact."""
    for candidate in (root, root / "artifacts" / ARTIFACT_KEY):
        if (candidate / META_FILE).exists():
            return candidate
    raise FileNotFoundError(f"no raytag model in {root} (expected {META_FILE})")


def registered_version(uri: str) -> tuple[str, str] | None:
    """(name, version) behind ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; None for
    any other URI."""
    if not uri.startswith("models:/"):
        return None
    parts = uri.removeprefix("models:/").strip("/").split("/")
    if "@" in parts[0]:
        name, alias = parts[0].split("@", 1)
        return name, str(MlflowClient().get_model_version_by_alias(name, alias).version)
    if len(parts) >= 2 and parts[1].isdigit():
        return parts[0], parts[1]
    return None  # a logged-model id (models:/m-...) is not a registry version
