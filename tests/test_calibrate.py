"""calibrate: per-tag thresholds on hand-made scores, and `raytag calibrate` registering a
calibrated version on a real MLflow server."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from sklearn.metrics import f1_score

from raytag import registry
from raytag.catalogue import VOCABULARY
from raytag.checkpoint import save_model
from raytag.cli import main
from raytag.config import AudioConfig
from raytag.evaluate import calibrate, calibrate_model, compute_metrics, score_tracks
from raytag.models import build_model
from raytag.thresholds import Thresholds

SCORES = [0.1, 0.2, 0.3, 0.8, 0.9]
LABELS = [0, 1, 0, 1, 1]  # F1 at each score: .75, .857, .667, .8, .5


def one_tag(labels: list[int], scores: list[float], **options) -> Thresholds:
    return calibrate(np.array([labels]).T, np.array([scores]).T, ["t"], **options)


def test_max_f1_picks_the_best_f1_and_the_lowest_of_ties() -> None:
    assert one_tag(LABELS, SCORES).values == (0.2,)
    # F1 2/3 at 0.2 and at 0.5: the lower keeps more recall.
    assert one_tag([0, 1, 0, 0, 1], [0.1, 0.2, 0.3, 0.4, 0.5]).values == (0.2,)


def test_max_f1_is_the_best_f1_among_every_score_threshold() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=(60, 4))
    y_score = np.clip(y_true * 0.3 + rng.random((60, 4)) * 0.7, 0, 1).astype(np.float32)
    thresholds = calibrate(y_true, y_score, list("abcd"))
    for i, chosen in enumerate(thresholds.values):

        def f1_at(t: float, i: int = i) -> float:
            return f1_score(y_true[:, i], y_score[:, i] >= t)

        best = max(f1_at(t) for t in y_score[:, i])
        assert f1_at(chosen) == pytest.approx(best)
        assert chosen in y_score[:, i]  # a score the split has, as float32 stores it


def test_precision_rule_takes_the_lowest_threshold_reaching_the_target() -> None:
    # Precision at each score: .6, .75, .667, 1, 1.
    assert one_tag(LABELS, SCORES, rule="precision", target_precision=0.7).values == (0.2,)
    assert one_tag(LABELS, SCORES, rule="precision", target_precision=0.9).values == (0.8,)
    assert one_tag(LABELS, SCORES, rule="precision", target_precision=1.0).values == (0.8,)
    reached = one_tag(LABELS, SCORES, rule="precision", target_precision=1.0)
    assert reached.policy["fallback"]["precision_unreachable"] == []


def test_an_unreachable_precision_falls_back_to_max_f1_and_says_so() -> None:
    # The top score is a negative: precision 1/3, 1/2, 0 at 0.1, 0.2, 0.9; F1 .5, .667, 0.
    y_true = np.array([[1, 1], [0, 0], [0, 1]])
    y_score = np.array([[0.2, 0.9], [0.9, 0.2], [0.1, 0.8]])
    thresholds = calibrate(y_true, y_score, ["low", "high"], rule="precision",
                           target_precision=0.9)  # fmt: skip
    assert thresholds.values == (0.2, 0.8)
    assert thresholds.policy["fallback"]["precision_unreachable"] == ["low"]


def test_one_class_tags_reproduce_the_split() -> None:
    y_true = np.array([[0, 1, 1], [0, 1, 0], [0, 1, 1]])
    y_score = np.array([[0.7, 0.4, 0.9], [0.3, 0.6, 0.1], [0.5, 0.2, 0.8]], dtype=np.float32)
    thresholds = calibrate(y_true, y_score, ["never", "always", "some"], split="valid",
                           manifest="m.parquet")  # fmt: skip
    never, always, some = thresholds.values
    # No positives: just above the highest score, also in float32; it assigns no track.
    assert never == float(np.nextafter(np.float32(0.7), np.float32(1)))
    assert never > 0.7 and np.float32(never) > np.float32(0.7)
    assert always == pytest.approx(0.2) and some == pytest.approx(0.8)
    assert thresholds.decide(y_score).tolist() == y_true.astype(bool).tolist()
    assert thresholds.policy == {
        "rule": "max_f1",
        "target_precision": None,
        "split": "valid",
        "manifest": "m.parquet",
        "n_tracks": 3,
        "fallback": {"no_positives": ["never"], "no_negatives": ["always"],
                     "precision_unreachable": []},
    }  # fmt: skip
    # Plain data: it travels in raytag.json and back.
    vocabulary = ["never", "always", "some"]
    record = json.loads(json.dumps(thresholds.to_dict(vocabulary)))
    assert Thresholds.from_dict(record, vocabulary) == thresholds


def test_calibrate_refuses_what_it_cannot_calibrate() -> None:
    ok = (np.array([[1], [0]]), np.array([[0.9], [0.1]]), ["t"])
    with pytest.raises(ValueError, match="unknown thresholds rule 'best'"):
        calibrate(*ok, rule="best")
    with pytest.raises(ValueError, match="needs a target precision in"):
        calibrate(*ok, rule="precision")
    with pytest.raises(ValueError, match="needs a target precision in"):
        calibrate(*ok, rule="precision", target_precision=1.5)
    with pytest.raises(ValueError, match="a target precision needs the precision rule"):
        calibrate(*ok, target_precision=0.8)
    with pytest.raises(ValueError, match="no tracks to calibrate"):
        calibrate(np.zeros((0, 1)), np.zeros((0, 1)), ["t"])
    with pytest.raises(ValueError, match="must both be"):
        calibrate(np.zeros((2, 1)), np.zeros((2, 1)), ["t", "u"])
    with pytest.raises(ValueError, match="finite"):
        calibrate(np.array([[1], [0]]), np.array([[np.nan], [0.1]]), ["t"])


def test_the_table_has_the_splits_figures_at_the_thresholds() -> None:
    from raytag.evaluate import Calibration, Evaluation

    y_true = np.array([LABELS, [0] * 5]).T
    y_score = np.array([SCORES, SCORES]).T
    thresholds = calibrate(y_true, y_score, ["t", "none"], split="valid")
    metrics = compute_metrics(y_true, y_score, ["t", "none"], thresholds)
    evaluation = Evaluation(**vars(metrics), model={}, manifest="m", split="valid", errors=(),
                            unknown_tags=())  # fmt: skip
    table = Calibration(thresholds, evaluation).table()
    assert table["tag"] == ["t", "none"]
    assert table["threshold"] == [0.2, thresholds.values[1]]
    assert table["precision"] == [0.75, None] and table["recall"] == [1.0, None]
    assert table["f1"] == [pytest.approx(6 / 7), None]
    assert table["positives"] == [3, 0] and table["assigned"] == [4, 0]
    assert table["basis"] == ["max_f1", "no_positives"]
    text = Calibration(thresholds, evaluation).format_table()
    assert "0.2000" in text and "no_positives" in text and "F1 0.857" in text


# -- raytag calibrate --------------------------------------------------------------------


@pytest.fixture
def untrained(tmp_path: Path) -> Path:
    """An untrained small model of the demo vocabulary (its scores are what they are)."""
    model = build_model("spectrogram-small", n_tags=len(VOCABULARY)).eval()
    return save_model(tmp_path / "untrained", model, list(VOCABULARY), AudioConfig(),
                      name="untrained")  # fmt: skip


def test_calibrate_registers_a_version_with_the_thresholds_of_its_scores(
    demo_catalogue: str, untrained: Path, mlflow_env: str
) -> None:
    base = registry.register_folder(untrained, "cal-tagger", alias="base")
    result = CliRunner().invoke(main, ["calibrate", "--model", "models:/cal-tagger@base",
                                       "--manifest", demo_catalogue, "--alias", "calibrated",
                                       "--experiment", "calibrate-test"])  # fmt: skip
    assert result.exit_code == 0, result.output
    version = str(int(base.registered_model_version) + 1)
    assert (
        f"registered cal-tagger version {version} (@calibrated): models:/cal-tagger/{version}"
        in (result.output)
    )
    assert "threshold  precision  recall" in result.output

    # The new version's thresholds are those of calibrating the same scores by hand.
    base_model = registry.load("models:/cal-tagger@base")
    assert base_model.thresholds is None
    tracks = score_tracks(base_model, demo_catalogue, "valid")
    expected = calibrate(tracks.y_true, tracks.y_score, list(VOCABULARY), split="valid",
                         manifest=demo_catalogue)  # fmt: skip
    calibrated = registry.load("models:/cal-tagger@calibrated")
    assert calibrated.version == version
    assert calibrated.thresholds.values == pytest.approx(expected.values, abs=1e-6)
    assert calibrated.thresholds.policy == expected.policy
    assert calibrated.thresholds.policy["n_tracks"] == len(tracks.track_ids) > 0

    # Its run holds the calibration: policy tags, the table, the thresholds file, metrics.
    client = mlflow.MlflowClient()
    run = client.get_run(client.get_model_version("cal-tagger", version).run_id)
    assert run.data.tags["raytag.thresholds.rule"] == "max_f1"
    assert run.data.tags["raytag.thresholds.split"] == "valid"
    assert run.data.params["calibrated_model"] == "models:/cal-tagger@base"
    assert "valid_macro_f1" in run.data.metrics and "valid_macro_roc_auc" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "thresholds")}
    assert artifacts == {"thresholds/table.json", "thresholds/thresholds.json"}
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                      artifact_path="thresholds"))  # fmt: skip
    table = json.loads((folder / "table.json").read_text())
    assert [row[0] for row in table["data"]] == list(VOCABULARY)
    stored = json.loads((folder / "thresholds.json").read_text())
    assert Thresholds.from_dict(stored, list(VOCABULARY)) == calibrated.thresholds


def _manifest(path: Path, rows: list[tuple[str, str]], **columns) -> str:
    """A manifest of (track_id, split) rows whose files do not exist."""
    table = {
        "track_id": [r[0] for r in rows],
        "uri": [str(path.parent / f"{r[0]}.wav") for r in rows],
        "tags": pa.array([["loud"]] * len(rows), pa.list_(pa.string())),
        "split": [r[1] for r in rows],
        **columns,
    }
    pq.write_table(pa.table(table), path)
    return str(path)


def test_calibrate_says_clearly_what_is_wrong(untrained: Path, tmp_path: Path) -> None:
    train_only = _manifest(tmp_path / "train.parquet", [("a", "train"), ("b", "test")])
    folder = str(untrained)
    with pytest.raises(
        ValueError, match=r"has no tracks in split 'valid' \(its splits: test, train\)"
    ):
        calibrate_model(folder, train_only, registered_model="x")
    missing = _manifest(tmp_path / "missing.parquet", [("a", "valid")])
    with pytest.raises(ValueError, match=r"none of the 1 tracks of split 'valid' .* not_found"):
        calibrate_model(folder, missing, registered_model="x")
    unlabelled = tmp_path / "unlabelled.parquet"
    pq.write_table(pa.table({"track_id": ["a"], "uri": ["a.wav"]}), unlabelled)
    with pytest.raises(ValueError, match="has no tags or split column"):
        calibrate_model(folder, str(unlabelled), registered_model="x")
    with pytest.raises(ValueError, match="no manifest at"):
        calibrate_model(folder, str(tmp_path / "nowhere.parquet"), registered_model="x")

    # The command: a folder needs --register; errors are one line, exit 1, no traceback.
    args = ["calibrate", "--model", folder, "--manifest", train_only]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "is not a registered model version" in result.output
    result = CliRunner().invoke(main, [*args, "--register", "x", "--split", "nope"])
    assert result.exit_code == 1
    assert "has no tracks in split 'nope' (its splits: test, train)" in result.output
    result = CliRunner().invoke(main, [*args, "--register", "x", "--rule", "precision"])
    assert result.exit_code == 1 and "needs a target precision" in result.output
