"""registry: log, register, alias and load on a real MLflow server (sqlite, 127.0.0.1)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient

from raytag import promotion, registry
from raytag.checkpoint import LoadedModel, load_model, save_model
from raytag.cli import main
from raytag.config import AudioConfig
from raytag.evaluate import compute_metrics, write_plots
from raytag.models import build_model
from raytag.models.inference import predict_track
from raytag.services import MLflowServer

VOCABULARY = ["piano", "drums", "r&b vocals"]
AUDIO = AudioConfig(max_patches=4)
# What a logged model holds, and all it holds: weights as safetensors, the rest as text.
MODEL_FILES = {
    "MLmodel",
    "conda.yaml",
    "python_env.yaml",
    "requirements.txt",
    "raytag_pyfunc.py",
    "artifacts/raytag/model.safetensors",
    "artifacts/raytag/raytag.json",
}


def _trained_like(seed: int, folder: Path) -> LoadedModel:
    """A model whose batch-norm statistics moved off their defaults, saved to ``folder``."""
    torch.manual_seed(seed)
    model = build_model("spectrogram-small", n_tags=len(VOCABULARY))
    model.train()(torch.randn(2, AUDIO.sample_rate))
    model.eval()
    save_model(folder, model, VOCABULARY, AUDIO, name=f"seed{seed}")
    return load_model(folder)


def _experiment() -> str:
    return MlflowClient().create_experiment(f"test-{uuid.uuid4().hex[:8]}")


def _logged_files(model_id: str, path: str = "") -> set[str]:
    client = MlflowClient()
    files = set()
    for entry in client.list_logged_model_artifacts(model_id, path or None):
        files |= _logged_files(model_id, entry.path) if entry.is_dir else {entry.path}
    return files


def _same_outputs(a: LoadedModel, b: LoadedModel) -> None:
    x = torch.randn(1, AUDIO.sample_rate)
    with torch.inference_mode():
        assert torch.equal(a.model(x), b.model(x))


def test_register_versions_alias_and_load_back(mlflow_env: str, tmp_path: Path) -> None:
    name = f"tagger-{uuid.uuid4().hex[:8]}"
    first = _trained_like(1, tmp_path / "first")
    second = _trained_like(2, tmp_path / "second")
    experiment = _experiment()
    with mlflow.start_run(experiment_id=experiment) as run_one:
        info_one = registry.log_model(tmp_path / "first", registered_model_name=name)
    with mlflow.start_run(experiment_id=experiment):
        info_two = registry.log_model(second, registered_model_name=name)
    assert (info_one.registered_model_version, info_two.registered_model_version) == ("1", "2")
    registry.set_alias(name, 1, "champion")

    champion = registry.load(f"models:/{name}@champion")
    assert (champion.name, champion.version) == (name, "1")
    assert champion.vocabulary == VOCABULARY and champion.audio == AUDIO
    _same_outputs(champion, first)

    latest = registry.load(f"models:/{name}/2")
    assert (latest.name, latest.version) == (name, "2")
    _same_outputs(latest, second)

    from_run = registry.load(f"runs:/{run_one.info.run_id}/model")
    assert (from_run.name, from_run.version) == ("seed1", "local")  # the folder's own
    _same_outputs(from_run, first)
    _same_outputs(registry.load(tmp_path / "first"), first)
    downloaded = mlflow.artifacts.download_artifacts(info_one.model_uri, dst_path=tmp_path / "dl")
    _same_outputs(registry.load(downloaded), first)  # a local MLflow model folder

    # No pickles anywhere: exactly these files, and the pyfunc is rebuilt from code.
    assert _logged_files(info_one.model_id) == MODEL_FILES
    flavor = get_model_info(f"models:/{name}@champion").flavors["python_function"]
    assert flavor["model_code_path"].endswith("raytag_pyfunc.py")
    assert "python_model" not in flavor


def test_pyfunc_loads_without_pickle_and_matches(mlflow_env: str, tmp_path: Path) -> None:
    name = f"tagger-{uuid.uuid4().hex[:8]}"
    loaded = _trained_like(3, tmp_path / "model")
    with mlflow.start_run(experiment_id=_experiment()):
        info = registry.log_model(loaded, registered_model_name=name, alias="champion")
    assert MlflowClient().get_model_version_by_alias(name, "champion").version == "1"

    signature = get_model_info(info.model_uri).signature
    (wave_spec,), (score_spec,) = signature.inputs.inputs, signature.outputs.inputs
    assert (wave_spec.type, wave_spec.shape) == (np.dtype("float32"), (-1, -1))
    assert (score_spec.type, score_spec.shape) == (np.dtype("float32"), (-1, len(VOCABULARY)))

    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    waves = np.random.default_rng(0).standard_normal((2, 5 * AUDIO.sample_rate)).astype("f4")
    scores = pyfunc.predict(waves)
    expected = np.stack([predict_track(loaded.model, w, AUDIO).scores for w in waves])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert pyfunc.metadata.metadata["vocabulary"] == VOCABULARY


def test_log_run_evaluation_and_config(mlflow_env: str, tmp_path: Path) -> None:
    y_true = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    y_score = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.1], [0.7, 0.6, 0.2], [0.1, 0.3, 0.4]])
    metrics = compute_metrics(y_true, y_score, VOCABULARY)
    plots = write_plots(metrics, y_true, y_score, tmp_path)
    with mlflow.start_run(experiment_id=_experiment()) as run:
        params = registry.log_config({"model": {"name": "spectrogram-small", "lr": 1e-3}})
        registry.log_run_evaluation(metrics.to_dict(), plots)

    client = MlflowClient()
    data = client.get_run(run.info.run_id).data
    assert data.params == params == {"model.name": "spectrogram-small", "model.lr": "0.001"}
    assert data.metrics["test_macro_roc_auc"] == pytest.approx(metrics.macro_roc_auc)
    assert data.metrics["test_pr_auc/drums"] == pytest.approx(metrics.per_tag[1].pr_auc)
    assert "test_roc_auc/r_b vocals" not in data.metrics  # no positives: no value to log
    listed = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation/test")}
    assert listed == {f"evaluation/test/{n}" for n in ["metrics.json", *(p.name for p in plots)]}


def test_find_runs_by_ray_train_run_name(mlflow_env: str) -> None:
    experiment = f"runs-{uuid.uuid4().hex[:8]}"
    assert registry.find_runs(experiment, "fit") == []  # no such experiment yet
    mlflow.set_experiment(experiment)
    started = []
    for run_name in ("fit", "other", "fit"):
        with mlflow.start_run() as run:
            mlflow.set_tag(registry.RUN_NAME_TAG, run_name)
        started.append(run.info.run_id)
    found = [run.info.run_id for run in registry.find_runs(experiment, "fit")]
    assert found == [started[2], started[0]]  # newest first
    assert registry.find_runs(experiment, "never") == []


def test_cli_registry_commands(mlflow_env: str, tmp_path: Path) -> None:
    name = f"tagger-{uuid.uuid4().hex[:8]}"
    _trained_like(4, tmp_path / "model")
    runner = CliRunner()
    experiment = f"cli-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        logged = runner.invoke(
            main,
            [
                "registry",
                "log",
                str(tmp_path / "model"),
                "--name",
                name,
                "--experiment",
                experiment,
            ],
        )
        assert logged.exit_code == 0, logged.output
    assert f"{name} version 2" in logged.output
    aliased = runner.invoke(main, ["registry", "alias", name, "1", "champion"])
    assert aliased.exit_code == 0, aliased.output
    listed = runner.invoke(main, ["registry", "list", name])
    lines = [line.split("\t")[:3] for line in listed.output.splitlines()]
    assert lines == [[name, "2", "-"], [name, "1", "champion"]]


@pytest.fixture(scope="module", autouse=True)
def s3_mlflow(s3_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """A second server whose artifacts go to S3, launched with the module so that its start-up
    overlaps the session server's. Only it holds the S3 credentials."""
    import s3fs

    storage = s3fs.S3FileSystem(
        key=s3_server.access_key,
        secret=s3_server.secret_key,
        client_kwargs={"endpoint_url": s3_server.endpoint},
    )
    bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
    storage.mkdir(bucket)
    workdir = tmp_path_factory.mktemp("mlflow-s3")
    server = MLflowServer(workdir, artifacts=f"s3://{bucket}/artifacts", env=s3_server.env)
    server.launch()
    yield server, storage, bucket
    server.stop()


def test_artifacts_proxied_to_s3(
    s3_mlflow: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, storage, bucket = s3_mlflow
    server.wait()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)  # the client speaks only HTTP to the server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    name = f"tagger-{uuid.uuid4().hex[:8]}"
    loaded = _trained_like(5, tmp_path / "model")
    try:
        with mlflow.start_run(experiment_id=_experiment()):
            registry.log_model(loaded, registered_model_name=name, alias="champion")
    finally:
        mlflow.end_run()
    _same_outputs(registry.load(f"models:/{name}@champion"), loaded)
    stored = storage.find(f"{bucket}/artifacts")
    assert any(path.endswith("artifacts/raytag/model.safetensors") for path in stored)


# -- model cards and the promotion gate --------------------------------------------------

TRAINING_MANIFEST = "s3://catalogue/labelled.parquet"


def _log_training_run(metrics) -> None:
    """What raytag.train logs before the model: the Ray Train run name, the config, the
    test split's evaluation."""
    mlflow.set_tag(registry.RUN_NAME_TAG, "fit-cards")
    registry.log_config(
        {"manifest": TRAINING_MANIFEST, "model": "spectrogram-small", "epochs": 4,
         "init_from": None, "freeze_encoder": False}
    )  # fmt: skip
    registry.log_run_evaluation(metrics.to_dict())


def test_every_registered_version_has_a_model_card(mlflow_env: str, tmp_path: Path) -> None:
    from dataclasses import replace

    from raytag.thresholds import Thresholds

    name = f"tagger-{uuid.uuid4().hex[:8]}"
    _trained_like(6, tmp_path / "model")
    y_true = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    y_score = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.1], [0.7, 0.6, 0.2], [0.1, 0.3, 0.4]])
    metrics = compute_metrics(y_true, y_score, VOCABULARY)
    with mlflow.start_run(experiment_id=_experiment(), run_name="fit-cards") as run:
        _log_training_run(metrics)
        registry.log_model(tmp_path / "model", registered_model_name=name)
    # A calibrated copy, as `raytag calibrate` registers one: its weights are version 1's.
    policy = {"rule": "max_f1", "split": "valid", "manifest": TRAINING_MANIFEST, "n_tracks": 40,
              "fallback": {"no_positives": ["r&b vocals"], "no_negatives": []}}  # fmt: skip
    calibrated = replace(
        registry.load(f"models:/{name}/1"), thresholds=Thresholds((0.4, 0.55, 0.9), policy)
    )
    with mlflow.start_run(experiment_id=_experiment(), run_name="calibrate"):
        mlflow.log_metrics({"valid_macro_precision": 0.5, "valid_macro_recall": 0.75,
                            "valid_macro_f1": 0.6})  # fmt: skip
        registry.log_model(calibrated, registered_model_name=name)
    registry.register_folder(tmp_path / "model", name)  # made elsewhere, like an import

    client = MlflowClient()
    trained, copy, imported = (client.get_model_version(name, str(v)) for v in (1, 2, 3))
    roc, pr = f"{metrics.macro_roc_auc:.4f}", f"{metrics.macro_pr_auc:.4f}"
    assert trained.tags == {
        "arch": "spectrogram", "n_tags": "3", "calibrated": "no",
        "training_manifest": TRAINING_MANIFEST, "test_macro_roc_auc": roc,
        "test_macro_pr_auc": pr,
    }  # fmt: skip
    card = trained.description
    assert card.startswith(f"# {name} version 1\n")
    for text in (
        "A `spectrogram` tagger of 3 tags: piano, drums, r&b vocals.",
        f"**Trained on.** `{TRAINING_MANIFEST}`",
        "preset `spectrogram-small`, at most 4 epochs",
        f"On the test split of `{TRAINING_MANIFEST}` over 4 tracks: macro ROC-AUC "
        f"{metrics.macro_roc_auc:.3f}",
        f"| piano | {metrics.per_tag[0].roc_auc:.3f} | {metrics.per_tag[0].pr_auc:.3f} |",
        "| r&b vocals | n/a | n/a |",
        "**Thresholds.** None",
        "**Known limits.**",
        f"[fit-cards](#/experiments/{run.info.experiment_id}/runs/{run.info.run_id})",
    ):
        assert text in card, text

    assert copy.tags == {**trained.tags, "calibrated": "yes"}  # the same weights' figures
    for text in (
        f"The weights of `{name}` version 1, trained on `{TRAINING_MANIFEST}`",
        f"Measured on `{name}` version 1, the same weights.",
        "One per tag, 0.400 to 0.900 (median 0.550)",
        "rule `max_f1`; split `valid`",
        "At them on the `valid` split: macro precision 0.500, recall 0.750, f1 0.600.",
        "Tags whose threshold is a fallback, not calibrated: r&b vocals.",
    ):
        assert text in copy.description, text

    assert imported.tags == {"arch": "spectrogram", "n_tags": "3", "calibrated": "no"}
    assert "**Trained on.** Not recorded" in imported.description
    assert "**Evaluation.** Not evaluated when registered" in imported.description

    found = client.search_model_versions(f"name = '{name}' and tags.calibrated = 'yes'")
    assert [mv.version for mv in found] == ["2"]  # what a reviewer filters on
    listed = CliRunner().invoke(main, ["registry", "list", name])
    lines = [line.split("\t") for line in listed.output.splitlines()]
    assert [line[4:] for line in lines] == [
        ["spectrogram", "3", "-", "no"], ["spectrogram", "3", roc, "yes"],
        ["spectrogram", "3", roc, "no"],
    ]  # fmt: skip


def test_promotion_gate(mlflow_env: str, tmp_path: Path) -> None:
    name = f"tagger-{uuid.uuid4().hex[:8]}"
    _trained_like(7, tmp_path / "model")
    for _ in range(3):
        registry.register_folder(tmp_path / "model", name)
    assert promotion.promote(name, 1).line() == (
        f"models:/{name}@champion -> version 1 (was no version; no comparison needed)"
    )
    with mlflow.start_run(experiment_id=_experiment()) as worse_run:
        pass
    promotion.record_comparison(name, 2, run_id=worse_run.info.run_id, baseline=f"{name}/1",
                               verdict="worse")  # fmt: skip
    with pytest.raises(promotion.PromotionRefused, match="is worse than version 1"):
        promotion.promote(name, 2)
    # Version 3's comparison is with another version than the holder: it does not count.
    promotion.record_comparison(name, 3, run_id=worse_run.info.run_id, baseline=f"{name}/2",
                               verdict="better")  # fmt: skip
    with pytest.raises(promotion.PromotionRefused, match=f"its latest is with {name}/2"):
        promotion.promote(name, 3)
    assert promotion.alias_holder(name, "champion") == "1"

    staging = promotion.promote(name, 3, "staging")  # an alias nobody holds
    assert (staging.replaced, staging.forced) == (None, False)
    forced = promotion.promote(name, 3, force=True)  # no comparison with the holder: forced
    assert (forced.replaced, forced.comparison_run_id, forced.forced) == ("1", None, True)
    tags = MlflowClient().get_model_version(name, "3").tags
    assert (tags["raytag.promotion.alias"], tags["raytag.promotion.forced"]) == ("champion", "yes")
    assert promotion.promote(name, 3).line() == (
        f"models:/{name}@champion already points at version 3"
    )

    missing = CliRunner().invoke(main, ["registry", "promote", name, "9"])
    assert missing.exit_code == 1 and "Error:" in missing.output


@pytest.mark.slow  # starts Chromium
def test_model_card_in_the_mlflow_ui(
    mlflow_env: str, mlflow_server: MLflowServer, tmp_path: Path
) -> None:
    """The version page of the real MLflow UI, in headless Chromium: the card renders as
    the description and the tags are listed. The screenshot is kept under tmp_path."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser import headless_chromium, screenshot

    name = f"tagger-{uuid.uuid4().hex[:8]}"
    _trained_like(8, tmp_path / "model")
    metrics = compute_metrics(np.array([[1, 0, 0], [0, 1, 1]]), np.eye(2, 3), VOCABULARY)
    with mlflow.start_run(experiment_id=_experiment(), run_name="fit-cards"):
        _log_training_run(metrics)
        registry.log_model(tmp_path / "model", registered_model_name=name)

    # Tall enough that the description and the tags below it are both in the window.
    with headless_chromium(height=2400) as browser:
        browser.get(f"{mlflow_server.uri}/#/models/{name}/versions/1")
        body = browser.find_element(By.TAG_NAME, "body")
        WebDriverWait(browser, 60).until(lambda _: "Known limits" in body.text)
        text = body.text
        shot = screenshot(browser, tmp_path / "model-version.png", full_page=False)
    for shown in (f"{name} version 1", "A spectrogram tagger of 3 tags", TRAINING_MANIFEST,
                  "Known limits", "test_macro_roc_auc", "training_manifest"):  # fmt: skip
        assert shown in text, shown
    assert shot.stat().st_size > 10_000
