"""musicnn's MTT tagger in the demo's MLflow (docs/musicnn.md), so the real music is also
tagged by a model trained on real music: imported from the wheel ``make setup`` caches,
once; later runs find it registered."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from raytag.demo.progress import Clock
from raytag.demo.report import PretrainedRecord

MODEL_KEY = "mtt"  # raytag.importers.musicnn.MODELS
EXPERIMENT = "musicnn-import"
ALIAS = "champion"


def musicnn_or_reuse(say: Clock) -> PretrainedRecord | None:
    """``musicnn-mtt@champion``, imported now unless an earlier demo did; None, said why,
    when its wheel is neither cached nor downloadable (the demo then goes on without it)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from raytag.importers import musicnn
    from raytag.registry import register_folder

    name = musicnn.MODELS[MODEL_KEY].registered_name
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, ALIAS).version
        say(f"musicnn: reusing {name} version {version} (@{ALIAS})")
        return _record(name, version, reused=True)
    except MlflowException:
        pass
    say(f"musicnn: importing {name} (musicnn 0.1.0's MTT checkpoint, no TensorFlow) ...")
    try:
        wheel = musicnn.ensure_wheel()
    except (OSError, subprocess.CalledProcessError, musicnn.CheckpointError) as error:
        say(f"musicnn: not imported ({error}); `make setup` caches its wheel. "
            "The real music is tagged by the demo's model only")  # fmt: skip
        return None
    with tempfile.TemporaryDirectory(prefix="raytag-musicnn-") as tmp:
        folder = musicnn.write_model_folder(wheel, MODEL_KEY, Path(tmp) / name)
        info = register_folder(folder, name, alias=ALIAS, experiment=EXPERIMENT)
    version = str(info.registered_model_version)
    say(f"musicnn: registered {name} version {version} as @{ALIAS}")
    return _record(name, version, reused=False)


def _record(name: str, version: str, *, reused: bool) -> PretrainedRecord:
    uri = os.environ["MLFLOW_TRACKING_URI"]
    return PretrainedRecord(
        name=name,
        version=str(version),
        uri=f"models:/{name}@{ALIAS}",
        reused=reused,
        model_url=f"{uri}/#/models/{name}/versions/{version}",
    )
