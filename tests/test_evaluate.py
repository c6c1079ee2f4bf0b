"""evaluate: metrics on hand-computable cases, plots, and whole-track evaluation of a manifest."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from raytag.checkpoint import LoadedModel, load_model, save_model
from raytag.cli import main
from raytag.config import AudioConfig
from raytag.evaluate import (
    PLOT_FILES,
    Evaluation,
    TagMetrics,
    TrackScores,
    compute_metrics,
    evaluate_model,
    evaluate_predictions,
    read_labelled_tracks,
    score_predictions,
    score_tracks,
    write_plots,
)
from raytag.models import build_model
from raytag.tagging import TagOptions, tag_catalogue
from raytag.thresholds import Thresholds

VOCABULARY = ["tone", "noise", "never"]
CALIBRATED = Thresholds([0.0, 1.1, 0.5])
# metrics.json's keys, in order, as `raytag evaluate` has always written them.
METRICS_KEYS = ["macro_roc_auc", "macro_pr_auc", "n_tracks", "n_tags", "n_tags_scored",
                "per_tag", "model", "manifest", "split", "errors", "unknown_tags"]  # fmt: skip


def test_perfect_and_inverted_scores() -> None:
    y_true = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    perfect = compute_metrics(y_true, y_true.astype(float), ["a", "b"])
    assert perfect.macro_roc_auc == 1.0 and perfect.macro_pr_auc == 1.0

    # Every negative above every positive, no ties: positives come 3rd and 4th, so
    # precision is 1/3 at recall 0.5 and 2/4 at recall 1.
    ranks = np.array([[0.1, 0.9], [0.9, 0.1], [0.2, 0.8], [0.8, 0.2]])
    inverted = compute_metrics(y_true, ranks, ["a", "b"])
    assert inverted.macro_roc_auc == 0.0
    assert inverted.macro_pr_auc == pytest.approx((1 / 3 + 2 / 4) / 2)

    mixed = compute_metrics(y_true, np.stack([y_true[:, 0], 1 - y_true[:, 1]], 1), ["a", "b"])
    assert mixed.macro_roc_auc == pytest.approx(0.5)
    assert [row.roc_auc for row in mixed.per_tag] == [1.0, 0.0]


def test_tags_without_both_classes_are_null_with_a_reason() -> None:
    y_true = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1]])
    y_score = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.5], [0.8, 0.2, 0.5]])
    metrics = compute_metrics(y_true, y_score, ["a", "none", "all"])
    rows = {row.tag: row for row in metrics.per_tag}
    assert rows["none"] == TagMetrics("none", 0, 3, reason="no positive tracks")
    assert rows["all"].reason == "no negative tracks" and rows["all"].roc_auc is None
    assert rows["a"].reason is None
    assert metrics.macro_roc_auc == 1.0  # only "a" counts
    assert (metrics.n_tracks, metrics.n_tags, metrics.n_tags_scored) == (3, 3, 1)
    assert metrics.to_dict()["per_tag"][1] == {
        "tag": "none",
        "n_positive": 0,
        "n_negative": 3,
        "roc_auc": None,
        "pr_auc": None,
        "reason": "no positive tracks",
    }

    empty = compute_metrics(np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"])
    assert empty.macro_roc_auc is None and empty.macro_pr_auc is None
    json.dumps(empty.to_dict(), allow_nan=False)


def test_metrics_at_thresholds_are_those_of_the_tags_assigned() -> None:
    y_true = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 1, 1]])
    y_score = np.array([[0.9, 0.1, 0.5], [0.6, 0.3, 0.5], [0.4, 0.2, 0.5], [0.1, 0.7, 0.1]])
    thresholds = Thresholds([0.5, 0.8, 0.6])
    metrics = compute_metrics(y_true, y_score, ["a", "b", "all"], thresholds)
    a, b, every = metrics.per_tag
    # a: 0.9 and 0.6 assigned, one of them right; b: nothing assigned, its one positive missed.
    assert (a.threshold, a.n_assigned, a.precision, a.recall, a.f1) == (0.5, 2, 0.5, 0.5, 0.5)
    assert (b.threshold, b.n_assigned, b.precision, b.recall, b.f1) == (0.8, 0, 0.0, 0.0, 0.0)
    # No negatives: no AUC, no precision/recall/F1 either; the decisions are still counted.
    assert (every.n_assigned, every.precision, every.f1, every.reason) == (
        0, None, None, "no negative tracks",
    )  # fmt: skip
    assert (metrics.macro_precision, metrics.macro_recall, metrics.macro_f1) == (0.25, 0.25, 0.25)

    # metrics.json holds the decision figures beside the AUCs, and reads back.
    record = metrics.to_dict()
    assert list(record)[:5] == ["macro_roc_auc", "macro_pr_auc", "macro_precision",
                                "macro_recall", "macro_f1"]  # fmt: skip
    assert list(record["per_tag"][0])[-5:] == ["threshold", "n_assigned", "precision",
                                               "recall", "f1"]  # fmt: skip
    evaluation = Evaluation(**vars(metrics), model={}, manifest="m", split=None, errors=(),
                            unknown_tags=())  # fmt: skip
    assert Evaluation.from_dict(json.loads(json.dumps(evaluation.to_dict()))) == evaluation
    assert compute_metrics(y_true, y_score, ["a", "b", "all"]).macro_f1 is None
    with pytest.raises(ValueError, match="2 thresholds for a vocabulary of 3 tags"):
        compute_metrics(y_true, y_score, ["a", "b", "all"], Thresholds([0.5, 0.5]))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="must both be"):
        compute_metrics(np.zeros((3, 2)), np.zeros((3, 2)), ["a", "b", "c"])


@pytest.mark.filterwarnings("error")  # layout warnings mean unreadable plots
def test_plots_are_valid_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=(20, 3))
    y_true[:, 2] = 0  # one tag without positives still gets a bar labelled n/a
    y_score = rng.random((20, 3))
    metrics = compute_metrics(y_true, y_score, ["a", "b", "c"])
    paths = write_plots(metrics, y_true, y_score, tmp_path / "plots")
    assert [p.name for p in paths] == list(PLOT_FILES)
    for path in paths:
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        height, width, _ = imread(path).shape
        assert height > 100 and width > 100

    nothing = np.zeros((0, 3))  # no track decoded: still four (empty) plots, no error
    empty = compute_metrics(nothing, nothing, ["a", "b", "c"])
    assert len(write_plots(empty, nothing, nothing, tmp_path / "empty")) == 4


# -- whole-track evaluation ------------------------------------------------------------


def _ffmpeg(source: str, path: Path) -> str:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-ar", "16000", str(path)],
        check=True,
    )
    return str(path)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Sine and noise tracks of a few seconds, one empty file, a manifest with two splits."""
    folder = tmp_path_factory.mktemp("catalogue")
    rows = [
        ("sine-a", _ffmpeg("sine=frequency=440:duration=7", folder / "a.wav"), ["tone"], "test"),
        ("noise-b", _ffmpeg("anoisesrc=duration=4:seed=1", folder / "b.flac"), ["noise"], "test"),
        (
            "both-c",
            _ffmpeg("sine=frequency=220:duration=2", folder / "c.wav"),
            ["tone", "noise", "not-in-vocabulary"],
            "test",
        ),
        ("empty-d", str(folder / "d.wav"), ["tone"], "test"),
        ("train-e", _ffmpeg("sine=frequency=880:duration=4", folder / "e.wav"), ["tone"], "train"),
    ]
    (folder / "d.wav").touch()
    table = pa.table(
        {
            "track_id": [r[0] for r in rows],
            "uri": [r[1] for r in rows],
            "tags": pa.array([r[2] for r in rows], pa.list_(pa.string())),
            "split": [r[3] for r in rows],
            "extras": ["{}"] * len(rows),
        }
    )
    manifest = folder / "manifest.parquet"
    pq.write_table(table, manifest)
    model = build_model("spectrogram-small", n_tags=len(VOCABULARY)).eval()
    audio = AudioConfig(max_patches=1)
    plain = save_model(folder / "model", model, VOCABULARY, audio, name="untrained")
    # The same model with thresholds: tone assigned to every track, noise to none (scores
    # are sigmoids, below 1.1).
    calibrated = save_model(folder / "calibrated", model, VOCABULARY, audio, name="calibrated",
                            thresholds=CALIBRATED)  # fmt: skip
    return {"manifest": str(manifest), "model": str(plain), "calibrated": str(calibrated)}


def pairwise_roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC by its definition: the share of (positive, negative) pairs that the scores
    rank right, ties counting half."""
    positives, negatives = scores[truth > 0], scores[truth == 0]
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in positives for n in negatives]))


def test_evaluate_model_on_a_manifest_split(catalogue: dict[str, str], tmp_path: Path) -> None:
    model = build_model("spectrogram-small", n_tags=len(VOCABULARY)).eval()
    loaded = LoadedModel(model, VOCABULARY, AudioConfig(max_patches=1), "untrained", "0")
    metrics = evaluate_model(loaded, catalogue["manifest"], split="test", plots_dir=tmp_path)

    assert metrics.n_tracks == 3  # 4 test rows, one does not decode; train is left out
    assert [row.tag for row in metrics.per_tag] == VOCABULARY
    tone, noise, never = metrics.per_tag
    assert (tone.n_positive, tone.n_negative) == (2, 1)
    assert (noise.n_positive, noise.n_negative) == (2, 1)
    assert never.roc_auc is None and never.reason == "no positive tracks"
    # The AUCs are those of the tracks' scores, by the definition; the macro figure is
    # the mean over the tags that have one.
    scores = score_tracks(loaded, catalogue["manifest"], split="test")
    assert scores.track_ids == ["sine-a", "noise-b", "both-c"]
    for column, row in enumerate((tone, noise)):
        expected = pairwise_roc_auc(scores.y_true[:, column], scores.y_score[:, column])
        assert row.roc_auc == pytest.approx(expected), row.tag
    assert metrics.macro_roc_auc == pytest.approx((tone.roc_auc + noise.roc_auc) / 2)
    assert [e["track_id"] for e in metrics.errors] == ["empty-d"]
    assert metrics.errors[0]["error_code"] == "empty"
    assert metrics.unknown_tags == ("not-in-vocabulary",)
    assert metrics.model == {"name": "untrained", "version": "0"}
    assert sorted(Path(p).name for p in metrics.plots) == sorted(PLOT_FILES)
    assert metrics.predictions is None

    # metrics.json: these keys in this order; plots only when written, read back unchanged.
    record = metrics.to_dict()
    assert list(record) == [*METRICS_KEYS, "plots"]
    assert list(record["per_tag"][0]) == ["tag", "n_positive", "n_negative", "roc_auc",
                                          "pr_auc", "reason"]  # fmt: skip
    json.dumps(record, allow_nan=False)
    assert Evaluation.from_dict(json.loads(json.dumps(record))) == metrics
    assert list(replace(metrics, plots=None).to_dict()) == METRICS_KEYS

    assert len(read_labelled_tracks(catalogue["manifest"])) == 5  # no split: every row

    # A calibrated model is evaluated at its thresholds; its AUCs are its plain twin's.
    decided = evaluate_model(load_model(catalogue["calibrated"]), catalogue["manifest"], "test")
    _check_calibrated(decided)
    plain = evaluate_model(load_model(catalogue["model"]), catalogue["manifest"], "test")
    assert decided.per_tag[0].roc_auc == pytest.approx(plain.per_tag[0].roc_auc)
    assert plain.macro_f1 is None and not plain.at_thresholds


def _check_calibrated(metrics: Evaluation) -> None:
    """The figures of CALIBRATED on the test split: tone assigned to every track (2 of 3
    right), noise to none, never has no positives."""
    tone, noise, never = metrics.per_tag
    assert (tone.n_assigned, tone.precision, tone.recall) == (3, pytest.approx(2 / 3), 1.0)
    assert (noise.n_assigned, noise.precision, noise.recall, noise.f1) == (0, 0.0, 0.0, 0.0)
    assert never.threshold == 0.5 and never.f1 is None
    assert metrics.macro_f1 == pytest.approx((0.8 + 0.0) / 2)


def test_cli_writes_metrics_json(catalogue: dict[str, str], tmp_path: Path) -> None:
    output = tmp_path / "out" / "metrics.json"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--model",
            catalogue["model"],
            "--manifest",
            catalogue["manifest"],
            "--split",
            "test",
            "--output",
            str(output),
            "--plots",
            str(tmp_path / "plots"),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(output.read_text())
    assert list(metrics) == [*METRICS_KEYS, "plots"]
    assert metrics["n_tracks"] == 3 and len(metrics["per_tag"]) == len(VOCABULARY)
    assert metrics["model"]["name"] == "untrained"
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(PLOT_FILES)
    assert "macro_roc_auc" in result.output and "macro_f1" not in result.output

    # A calibrated model: its decisions' figures in the summary and in metrics.json.
    args = ["evaluate", "--model", catalogue["calibrated"], "--manifest",
            catalogue["manifest"], "--split", "test", "--output", str(output)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["macro_f1"] == pytest.approx(0.4) and summary["macro_precision"] is not None
    assert json.loads(output.read_text())["per_tag"][1]["threshold"] == 1.1


def test_manifest_and_audio_on_s3(catalogue: dict[str, str], s3_bucket: str) -> None:
    from raytag.storage import filesystem

    fs, root = filesystem(s3_bucket)
    rows = pq.read_table(catalogue["manifest"], filters=[("split", "==", "test")]).to_pylist()
    rows = [row for row in rows if row["track_id"] != "empty-d"]
    for row in rows:
        fs.put(row["uri"], f"{root}/audio/{Path(row['uri']).name}")
        row["uri"] = f"{s3_bucket}/audio/{Path(row['uri']).name}"
    with fs.open(f"{root}/manifest.parquet", "wb") as out:
        pq.write_table(pa.Table.from_pylist(rows), out)

    model = build_model("spectrogram-small", n_tags=len(VOCABULARY)).eval()
    loaded = LoadedModel(model, VOCABULARY, AudioConfig(), "untrained", "0")
    metrics = evaluate_model(loaded, f"{s3_bucket}/manifest.parquet", split="test")
    assert metrics.n_tracks == 3 and metrics.errors == ()


# -- metrics from a tagging run's predictions --------------------------------------------


@pytest.fixture(scope="module")
def tagged_runs(
    catalogue: dict[str, str], tmp_path_factory: pytest.TempPathFactory, ray_local
) -> dict[str, str]:
    """The whole catalogue (both splits) tagged by raytag's pipeline on a local Ray, by the
    plain and the calibrated model: each one's folder in the run's output."""
    output = str(tmp_path_factory.mktemp("tagged") / "tags")
    # float32 patches, so that the run's scores are those scored here exactly (how far the
    # default 16-bit patches move them is tested in test_tagging.py).
    options = TagOptions(pcm16=False)
    models = [catalogue["model"], catalogue["calibrated"]]
    summaries = tag_catalogue(catalogue["manifest"], models, output, options)
    assert [summary.record["status"] for summary in summaries] == ["complete", "complete"]
    return {
        key: s.record["output"] for key, s in zip(("plain", "calibrated"), summaries, strict=True)
    }


@pytest.fixture(scope="module")
def tagged(tagged_runs: dict[str, str]) -> str:
    """The plain model's folder of the tagging run."""
    return tagged_runs["plain"]


def _by_track(tracks: TrackScores) -> tuple[list[str], np.ndarray, np.ndarray]:
    order = np.argsort(tracks.track_ids)
    return sorted(tracks.track_ids), tracks.y_true[order], tracks.y_score[order]


def test_a_tagging_runs_scores_give_the_metrics_of_scoring_here(
    catalogue: dict[str, str], tagged: str, tmp_path: Path
) -> None:
    loaded = load_model(catalogue["model"])
    here = score_tracks(loaded, catalogue["manifest"], split="test")
    from_run, vocabulary, model = score_predictions(tagged, catalogue["manifest"], split="test")
    ids, y_true, y_score = _by_track(from_run)
    assert ids == _by_track(here)[0] == ["both-c", "noise-b", "sine-a"]
    np.testing.assert_array_equal(y_true, _by_track(here)[1])
    np.testing.assert_allclose(y_score, _by_track(here)[2], atol=1e-5)
    failed = [(e["track_id"], e["uri"], e["error_code"]) for e in from_run.errors]
    assert failed == [(e["track_id"], e["uri"], e["error_code"]) for e in here.errors]
    assert failed[0][::2] == ("empty-d", "empty")
    assert from_run.unknown_tags == here.unknown_tags == ["not-in-vocabulary"]
    assert vocabulary == VOCABULARY and (model["name"], model["version"]) == (
        loaded.name,
        loaded.version,
    )

    metrics = evaluate_predictions(tagged, catalogue["manifest"], split="test", plots_dir=tmp_path)
    expected = evaluate_model(loaded, catalogue["manifest"], split="test")
    for got, want in zip(metrics.per_tag, expected.per_tag, strict=True):
        assert got.tag == want.tag and got.reason == want.reason
        assert got.roc_auc == pytest.approx(want.roc_auc)
        assert got.pr_auc == pytest.approx(want.pr_auc)
    assert metrics.n_tracks == 3 and metrics.model == expected.model
    assert metrics.predictions == tagged
    assert sorted(Path(p).name for p in metrics.plots) == sorted(PLOT_FILES)
    assert list(metrics.to_dict())[-2:] == ["plots", "predictions"]


def test_a_tagging_runs_scores_are_evaluated_at_the_thresholds_it_decided_with(
    catalogue: dict[str, str], tagged_runs: dict[str, str]
) -> None:
    metrics = evaluate_predictions(tagged_runs["calibrated"], catalogue["manifest"], "test")
    assert tuple(row.threshold for row in metrics.per_tag) == CALIBRATED.values
    _check_calibrated(metrics)
    given = Thresholds([0.0, 0.0, 0.0])  # given thresholds win over the run's
    metrics = evaluate_predictions(tagged_runs["plain"], catalogue["manifest"], "test",
                                   thresholds=given)  # fmt: skip
    assert [row.n_assigned for row in metrics.per_tag] == [3, 3, 3]


def test_cli_evaluates_predictions_and_wants_one_source(
    catalogue: dict[str, str], tagged: str, tmp_path: Path
) -> None:
    output = tmp_path / "metrics.json"
    args = ["evaluate", "--manifest", catalogue["manifest"], "--output", str(output)]
    result = CliRunner().invoke(main, [*args, "--predictions", tagged])
    assert result.exit_code == 0, result.output
    metrics = json.loads(output.read_text())
    assert list(metrics) == [*METRICS_KEYS, "predictions"]
    assert metrics["n_tracks"] == 4  # no split: the train row too; the empty file is an error
    assert [e["track_id"] for e in metrics["errors"]] == ["empty-d"]

    for sources in ([], ["--model", catalogue["model"], "--predictions", tagged]):
        result = CliRunner().invoke(main, [*args, *sources])
        assert result.exit_code == 2 and "exactly one of --model and --predictions" in result.output


def test_predictions_must_come_from_a_complete_run_of_every_labelled_track(
    catalogue: dict[str, str], tagged: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="holds no run"):
        evaluate_predictions(str(tmp_path / "never-tagged"), catalogue["manifest"])

    rows = pq.read_table(catalogue["manifest"]).to_pylist()
    rows.append({**rows[0], "track_id": "added-later"})
    grown = tmp_path / "grown.parquet"
    pq.write_table(pa.Table.from_pylist(rows), grown)
    with pytest.raises(ValueError, match="1 of the 6 labelled tracks have no row"):
        evaluate_predictions(tagged, str(grown))

    rows.append({**rows[0]})
    pq.write_table(pa.Table.from_pylist(rows), grown)
    with pytest.raises(ValueError, match="repeats a track_id"):
        evaluate_predictions(tagged, str(grown))
