"""`raytag demo` end to end at a tiny scale (16 tracks of 4 s, one epoch, one real track),
so the README's first command cannot rot: real MLflow (mlflow/serve.sh), real Ray, real
audio; then a run with another setting, whose new version goes through the promotion gate;
then one that reuses everything."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from raytag.catalogue import VOCABULARY
from raytag.cli import main
from raytag.demo import (
    ALIAS,
    FINGERPRINT_TAG,
    REGISTERED_MODEL,
    DemoReport,
    DemoSettings,
    format_report,
    run_demo,
)
from raytag.demo.html import write_html
from raytag.demo.report import (
    CatalogueRecord,
    ComparisonRecord,
    MetricChange,
    MLflowRecord,
    ModelRecord,
    ModelTags,
    PretrainedRecord,
    RayRecord,
    RealTrack,
    TaggerRecord,
    TaggingRecord,
    TagInputs,
    TagScore,
    Throughput,
    Timings,
)
from raytag.evaluate import PLOT_FILES, TagMetrics, TrackScores, evaluate_tracks
from raytag.evaluate.compare import PLOT_FILES as COMPARISON_PLOTS
from raytag.evaluate.compare import VERDICTS
from raytag.services import free_port, http_status
from raytag.settings import Option, options
from raytag.tagging.output import read_vocabulary
from raytag.thresholds import Thresholds

TINY = DemoSettings(n_tracks=16, duration_s=4.0, epochs=1, real_tracks=1, max_patches=2)


def as_flags(option: Option, settings: DemoSettings) -> list[str]:
    """``settings``' value of ``option`` on the command line: ``--x VALUE``, or a switch."""
    value = getattr(settings, option.name)
    if option.kind is bool:
        return [option.flag if value else f"--no-{option.flag[2:]}"]
    return [option.flag, str(value)]


def _healthy(uri: str) -> bool:
    return http_status(f"{uri}/health") == 200


@pytest.mark.integration  # starts its own MLflow server and Ray
def test_demo_end_to_end_then_a_challenger_then_a_run_that_reuses_everything(
    tmp_path: Path,
) -> None:
    """The first two runs in this process, the second with one training patch per track:
    a new version, compared with the champion and promoted unless worse. The third, with
    the second's settings, through the command with its output piped, as `make demo > file`
    runs it: everything is found again, and only the demo's own lines and the report reach
    the terminal."""
    import ray

    workdir = tmp_path / "demo"
    lines: list[str] = []
    ray_before = ray.is_initialized()  # the demo starts its own Ray only when none runs
    first = run_demo(workdir, TINY, keep_mlflow=True, mlflow_port=free_port(), num_cpus=2,
                     progress=lines.append)  # fmt: skip
    uri = first.mlflow.uri
    try:
        assert first.mlflow.running and _healthy(uri)
        assert ray.is_initialized() == ray_before, "the demo stops the Ray it started"
        assert uri.startswith("http://127.0.0.1:")
        assert os.environ.get("MLFLOW_TRACKING_URI") != uri  # the demo's setting did not leak
        assert lines[0].endswith(f"output goes to {workdir / 'demo.log'}")

        # Catalogue, training, evaluation.
        assert first.catalogue.tracks == 16 and not first.catalogue.reused
        assert sum(first.catalogue.splits.values()) == 16
        model = first.model
        assert (model.name, model.reused, model.epochs) == (REGISTERED_MODEL, False, 1)
        metrics = model.metrics
        assert [row.tag for row in metrics.per_tag] == list(VOCABULARY)
        assert all(isinstance(row, TagMetrics) for row in metrics.per_tag)
        # A tag has no AUCs exactly where the test split lacks its positives or its
        # negatives, and then says which; the others' are numbers, the macro their means.
        labelled = pq.read_table(first.catalogue.manifest, columns=["tags", "split"]).to_pylist()
        test_tags = [set(row["tags"]) for row in labelled if row["split"] == "test"]
        assert metrics.n_tracks == len(test_tags) == first.catalogue.splits["test"]
        one_class = {0: "no positive tracks", len(test_tags): "no negative tracks"}
        for row in metrics.per_tag:
            positives = sum(row.tag in tags for tags in test_tags)
            assert (row.n_positive, row.n_negative) == (positives, len(test_tags) - positives)
            if positives in one_class:
                assert (row.roc_auc, row.pr_auc, row.reason) == (None, None, one_class[positives])
            else:
                assert row.reason is None, row
                assert 0.0 <= row.roc_auc <= 1.0 and 0.0 < row.pr_auc <= 1.0, row
        scored = [row for row in metrics.per_tag if row.reason is None]
        assert scored, "seed 0's test split has tags with positives and negatives"
        assert metrics.macro_roc_auc == pytest.approx(np.mean([row.roc_auc for row in scored]))
        assert metrics.macro_pr_auc == pytest.approx(np.mean([row.pr_auc for row in scored]))
        plots = sorted(p.name for p in (workdir / "report/evaluation/test").glob("*.png"))
        assert len(plots) == 4, plots

        # Registered with the champion alias, visible through the running server; musicnn
        # imported beside it.
        client = mlflow.MlflowClient(tracking_uri=uri)
        champion = client.get_model_version_by_alias(REGISTERED_MODEL, ALIAS)
        assert champion.version == model.version
        assert client.get_run(champion.run_id).data.tags[FINGERPRINT_TAG]
        logged = client.get_run(champion.run_id).data.metrics
        assert logged["test_macro_roc_auc"] == pytest.approx(metrics.macro_roc_auc)
        assert first.comparison is None  # the first version: nothing to compare with
        assert champion.tags["raytag.promotion.replaced"] == "none"
        pretrained = first.pretrained
        assert pretrained is not None and not pretrained.reused
        imported = client.get_model_version_by_alias(pretrained.name, ALIAS)
        assert (pretrained.name, pretrained.version) == ("musicnn-mtt", imported.version)

        # Tagging: catalogue + one real track + two broken inputs, each row exactly once,
        # by the champion and musicnn in one run.
        tagging = first.tagging
        counts = tagging.counts
        assert (tagging.inputs.catalogue, tagging.inputs.real, tagging.inputs.bad) == (16, 1, 2)
        assert counts["manifest_rows"] == 19 == counts["predictions"] + counts["errors"]
        assert counts["errors_by_code"] == {"not_found": 1, "undecodable": 1}
        assert tagging.exactly_once and tagging.tagged_this_run == 19
        assert tagging.throughput.tracks_per_s > 0
        ours, theirs = tagging.models
        assert (ours.name, ours.version, theirs.name) == (model.name, model.version, "musicnn-mtt")
        assert ours.exactly_once and theirs.exactly_once
        assert (ours.thresholds, theirs.thresholds) == ("model", "none")  # musicnn: imported
        (real,) = tagging.real_tracks
        assert real.track_id.startswith("real/singularity/") and real.duration_s > 60
        by_ours, by_theirs = real.by_model
        assert (by_ours.model, by_theirs.model) == (ours.label, theirs.label)
        assert by_ours.n_patches == 2  # full length, 2 patches
        assert by_ours.top and {t.tag for t in by_ours.top} <= set(VOCABULARY)
        assert by_theirs.decided is None and by_theirs.top
        mtt_tags = read_vocabulary(theirs.output)  # MagnaTagATune's 50
        assert len(mtt_tags) == 50 and {t.tag for t in by_theirs.top} <= set(mtt_tags)
        assert by_ours.decided is not None and {t.tag for t in by_ours.decided} <= set(VOCABULARY)
        decided_scores = [t.score for t in by_ours.decided]
        assert decided_scores == sorted(decided_scores, reverse=True)
        rows = pads.dataset(tagging.predictions, format="parquet").to_table()
        assert rows.num_rows == counts["predictions"]
        assert set(rows.column("model_version").to_pylist()) == {model.version}

        text = format_report(first)
        expected = ["macro ROC-AUC", "macro PR-AUC", "singularity/", "exactly once", "tracks/s",
                    tagging.predictions, model.run_url, "stop: kill", "musicnn-mtt v",
                    first.html_path, first.log_path]  # fmt: skip
        for part in expected:
            assert part in text, part
        assert any("training: epoch 1/1" in line for line in lines), lines
        written = json.loads((workdir / "report.json").read_text())
        assert written == json.loads(json.dumps(first.to_dict(), default=str))
        assert list(written) == ["workdir", "settings", "timings_s", "catalogue", "mlflow",
                                 "ray", "model", "pretrained", "tagging", "log"]  # fmt: skip
        assert list(written["mlflow"]) == ["uri", "home", "reused", "running", "pid", "stop"]
        assert "plots" not in written["model"]["metrics"]  # as training logged metrics.json
        html = Path(first.html_path).read_text()  # self-contained: the browser test's page
        sources = re.findall(r'src="([^"]*)"', html)
        assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)

        # Second run, another setting: a new version, compared with the champion on the test
        # split; the champion afterwards, the one that tags, is the one the verdict allows.
        changed, said = replace(TINY, patches_per_track=1), []
        challenger = run_demo(workdir, changed, keep_mlflow=True, num_cpus=2,
                              progress=said.append)  # fmt: skip
        comparison, new = challenger.comparison, str(int(model.version) + 1)
        assert comparison is not None and comparison.compared_now
        assert (comparison.baseline, comparison.candidate) == (
            f"{REGISTERED_MODEL} v{model.version}",
            f"{REGISTERED_MODEL} v{new}",
        )
        assert comparison.n_tracks == first.catalogue.splits["test"]
        assert [c.metric for c in comparison.changes] == ["macro ROC-AUC", "macro PR-AUC"]
        assert comparison.verdict in VERDICTS
        assert comparison.promoted == (comparison.verdict != "worse")
        holder = new if comparison.promoted else model.version
        assert client.get_model_version_by_alias(REGISTERED_MODEL, ALIAS).version == holder
        assert challenger.model.version == challenger.tagging.models[0].version == holder
        assert challenger.model.reused != comparison.promoted
        recorded = client.get_model_version(REGISTERED_MODEL, new).tags
        assert recorded["raytag.comparison.baseline"] == f"{REGISTERED_MODEL}/{model.version}"
        assert recorded["raytag.comparison.verdict"] == comparison.verdict
        assert sorted(Path(p).name for p in comparison.plots) == sorted(COMPARISON_PLOTS)
        assert any(f"comparison: version {new} against version {model.version}" in line
                   for line in said), said  # fmt: skip
        assert any(line.split("] ", 1)[1].startswith("promotion: ") for line in said), said
        text = format_report(challenger)
        assert f"({comparison.baseline} -> {comparison.candidate}, " in text
        assert f"Verdict {comparison.verdict} (the 95% interval" in text
        written = json.loads((workdir / "report.json").read_text())
        assert written["comparison"]["verdict"] == comparison.verdict
        html = Path(challenger.html_path).read_text()
        assert 'id="comparison"' in html and len(re.findall(r'src="data:image/png', html)) == 6

        # Third run, the command with the second's settings and its output piped: the kept
        # server, the catalogue, the champion, its comparison, musicnn and the tagging
        # output are all found again; this time the server is stopped at the end.
        flags = [flag for o in options(DemoSettings) for flag in as_flags(o, changed)]
        third_run = subprocess.run(
            [sys.executable, "-m", "raytag.cli", "demo", "--workdir", str(workdir),
             "--cpus", "2", *flags],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        if _healthy(uri):
            os.killpg(first.mlflow.pid, signal.SIGTERM)
    assert third_run.returncode == 0, third_run.stderr[-3000:]
    progress, report_text = third_run.stderr.splitlines(), third_run.stdout
    assert all(line.startswith("[demo ") for line in progress), progress
    assert report_text.startswith("raytag demo: done in ") and "musicnn-mtt v" in report_text
    for noise in ("INFO", "WARNING", "streaming_executor", "Dataset dataset_"):
        assert noise not in third_run.stderr + report_text, noise
    log = (workdir / "demo.log").read_text()
    assert "INFO streaming_executor.py" in log and "Starting execution of Dataset" in log
    assert all(line in log for line in progress[1:])  # the demo's own lines, in context

    third = json.loads((workdir / "report.json").read_text())
    assert third["mlflow"]["reused"] and third["mlflow"]["uri"] == uri
    assert third["catalogue"]["reused"]
    assert third["model"]["reused"] and third["model"]["version"] == holder
    assert third["model"]["metrics"] == written["model"]["metrics"]
    assert third["comparison"] == written["comparison"] | {"compared_now": False}
    assert third["pretrained"]["reused"]
    assert third["pretrained"]["version"] == pretrained.version
    assert third["tagging"]["tagged_this_run"] == 0
    assert third["tagging"]["counts"] == counts
    assert third["timings_s"]["total"] < first.timings_s.total
    assert not third["mlflow"]["running"] and not _healthy(uri)
    assert "MLFLOW_HOME=" in report_text  # how to browse it again


@pytest.mark.integration  # a real MLflow server
def test_a_version_the_gate_refuses_leaves_the_champion_in_place(
    mlflow_env: str, tmp_path: Path
) -> None:
    """The demo meets a refusal: version 2 has a `worse` comparison with version 1, which
    holds @champion (as an earlier demo recorded it); version 1 stays champion, the demo
    says so and its report's comparison is the recorded one, not promoted."""
    from raytag import promotion, registry
    from raytag.checkpoint import save_model
    from raytag.config import AudioConfig
    from raytag.demo.champion import Candidate
    from raytag.demo.gate import promote_or_keep
    from raytag.evaluate.compare import Comparison, Difference
    from raytag.models import build_model

    client = mlflow.MlflowClient()
    save_model(tmp_path / "model", build_model("spectrogram-small", n_tags=len(VOCABULARY)),
               list(VOCABULARY), AudioConfig(), name="tiny")  # fmt: skip
    try:
        old, new = (registry.register_folder(tmp_path / "model", REGISTERED_MODEL)
                    .registered_model_version for _ in range(2))  # fmt: skip
        promotion.promote(REGISTERED_MODEL, old)
        worse = Comparison(
            baseline={"uri": "b", "name": REGISTERED_MODEL, "version": old},
            candidate={"uri": "c", "name": REGISTERED_MODEL, "version": new},
            manifest="catalogue/manifest.parquet", split="test", n_tracks=30,
            macro_roc_auc=Difference(0.70, 0.55, -0.15, -0.25, -0.05),
            macro_pr_auc=Difference(0.40, 0.35, -0.05, -0.12, 0.02),
            per_tag=(), agreement=0.8, tracks_agreeing=0.3, agreement_note=None,
            baseline_only_tags=(), candidate_only_tags=(), left_out=(), verdict="worse",
            confidence_level=0.95, resamples=1000, seed=0,
        )  # fmt: skip
        with mlflow.start_run() as run:  # as compare_models logs it
            mlflow.log_dict(worse.to_dict(), "comparison/comparison.json")
        baseline = promotion.version_key(REGISTERED_MODEL, old)
        promotion.record_comparison(
            REGISTERED_MODEL, new, run_id=run.info.run_id, baseline=baseline, verdict="worse"
        )

        said: list[str] = []
        champion, comparison = promote_or_keep(
            Candidate(new, reused=True, champion=old), "not read: the comparison is recorded",
            tmp_path, 2, said.append,
        )  # fmt: skip
        assert champion == old == client.get_model_version_by_alias(REGISTERED_MODEL, ALIAS).version
        assert comparison is not None
        assert (comparison.baseline, comparison.candidate, comparison.n_tracks) == (
            f"{REGISTERED_MODEL} v{old}", f"{REGISTERED_MODEL} v{new}", 30)  # fmt: skip
        assert (comparison.verdict, comparison.promoted, comparison.compared_now) == (
            "worse", False, False)  # fmt: skip
        assert comparison.changes[0] == MetricChange("macro ROC-AUC", 0.70, 0.55, -0.15, -0.25,
                                                     -0.05)  # fmt: skip
        assert comparison.run_url.endswith(f"/runs/{run.info.run_id}")
        assert f"version {new} is worse than version {old}, which stays @champion" in said[-1]
    finally:
        client.delete_registered_model(REGISTERED_MODEL)


def test_demo_command_help_lists_every_setting() -> None:
    """The demo's options are DemoSettings' fields (generated) plus how this run is hosted."""
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0
    hosting = ["--workdir", "--keep-mlflow", "--retrain", "--mlflow-port", "--cpus"]
    fields = [o.flag for o in options(DemoSettings)]
    shown = re.findall(r"^  (--[a-z-]+)", result.output, flags=re.M)
    assert sorted(shown) == sorted(hosting + fields)
    assert "--tracks" in fields and "--duration" in fields


# -- the report, from a small real DemoReport (no demo run) ------------------------------


def _sample_report(tmp_path: Path, *, comparison: bool) -> DemoReport:
    """A report as the demo builds it, from fixture data through the real evaluation and
    plotting code: thresholds on the champion, none on musicnn, an odd track name."""
    rng = np.random.default_rng(0)
    vocabulary = list(VOCABULARY)
    y_true = (rng.random((40, len(vocabulary))) < 0.3).astype(np.int8)
    y_true[:, -1] = 0  # a tag the test split lacks: scored as n/a with its reason
    y_score = np.clip(y_true * 0.4 + rng.random(y_true.shape) * 0.6, 0, 1)
    tracks = TrackScores([f"t{i}" for i in range(40)], y_true, y_score, [], [])
    thresholds = Thresholds((0.5,) * len(vocabulary), {"rule": "max_f1", "split": "valid"})
    plots = tmp_path / "evaluation"
    metrics = evaluate_tracks(tracks, vocabulary, {"name": "raytag-demo", "version": "2"},
                              "catalogue/manifest.parquet", "test", thresholds=thresholds,
                              plots_dir=plots)  # fmt: skip
    champion = TaggerRecord("raytag-demo", "2", "models:/raytag-demo@champion",
                            str(tmp_path / "tags/raytag-demo-v2"), "model",
                            {"rule": "max_f1", "split": "valid"}, True)  # fmt: skip
    musicnn = TaggerRecord("musicnn-mtt", "1", "models:/musicnn-mtt@champion",
                           str(tmp_path / "tags/musicnn-mtt-v1"), "none", None, True)  # fmt: skip
    decided = (TagScore("drums", 0.91), TagScore("loud", 0.8), TagScore("bass", 0.4))
    real = RealTrack(
        track_id="real/odd/<b>Bold</b> & Co", uri="/music/odd.ogg", duration_s=185.0,
        by_model=(
            ModelTags(champion.label, 8, decided[:2], decided),
            ModelTags(musicnn.label, 8, None,
                      (TagScore("guitar", 0.62), TagScore("rock", 0.55), TagScore("techno", 0.3))),
        ),
    )  # fmt: skip
    speed = Throughput(12.0, 320, 2, 0.7, 26.7, 210.0, {"CPU": 2.0}, "2026-12-03T17:00:00Z")
    return DemoReport(
        workdir=str(tmp_path), settings=DemoSettings(),
        timings_s=Timings(catalogue=72.0, mlflow_start=9.5, training=147.0, comparison=21.0,
                          pretrained=6.0, tagging=17.0, total=281.0),
        catalogue=CatalogueRecord(300, {"test": 40, "train": 220, "valid": 40},
                                  "catalogue/manifest.parquet", reused=True),
        mlflow=MLflowRecord("http://127.0.0.1:5000", "mlflow", reused=False, running=False,
                            restart="MLFLOW_HOME=mlflow mlflow/serve.sh"),
        ray=RayRecord(cpus=2),
        model=ModelRecord("raytag-demo", "2", "models:/raytag-demo@champion", False, "run1",
                          "spectrogram-small", 15, "http://127.0.0.1:5000/#/runs/run1",
                          "http://127.0.0.1:5000/#/models/raytag-demo/versions/2", metrics,
                          str(plots)),
        pretrained=PretrainedRecord("musicnn-mtt", "1", "models:/musicnn-mtt@champion", False,
                                    "http://127.0.0.1:5000/#/models/musicnn-mtt/versions/1"),
        tagging=TaggingRecord(
            manifest="tag-manifest.parquet", inputs=TagInputs(300, 8, 2),
            output=champion.output, predictions=f"{champion.output}/predictions",
            errors=f"{champion.output}/errors", run_file=f"{champion.output}/_run.json",
            counts={"manifest_rows": 310, "predictions": 308, "errors": 2,
                    "errors_by_code": {"not_found": 1, "undecodable": 1}},
            exactly_once=True, resumed=False, tagged_this_run=310, throughput=speed,
            models=(champion, musicnn), real_tracks=(real,), max_patches=8,
        ),
        log_path=str(tmp_path / "demo.log"),
        report_path=str(tmp_path / "report.json"),
        html_path=str(tmp_path / "report.html"),
        comparison=ComparisonRecord(
            baseline="raytag-demo v1", candidate="raytag-demo v2", n_tracks=40,
            changes=(MetricChange("macro ROC-AUC", 0.61, 0.66, 0.05, 0.01, 0.09),
                     MetricChange("macro PR-AUC", 0.40, 0.38, -0.02, -0.06, 0.02)),
            agreement=0.873, verdict="better", promoted=True, compared_now=True,
            run_url="http://127.0.0.1:5000/#/runs/cmp",
            plots=(str(plots / PLOT_FILES[0]),),
        ) if comparison else None,
    )  # fmt: skip


def test_report_text_shows_thresholds_both_models_and_the_comparison(tmp_path: Path) -> None:
    report = _sample_report(tmp_path, comparison=True)
    text = format_report(report)
    lines = text.splitlines()
    assert re.search(r"tag\s+pos\s+ROC-AUC\s+PR-AUC\s+thresh\s+prec\s+recall\s+F1", text)
    assert "at the stored thresholds: macro precision" in text
    unscored = next(line for line in lines if line.strip().startswith(VOCABULARY[-1]))
    assert "(no positive tracks)" in unscored and unscored.count("n/a") == 5  # not its threshold
    assert "raytag-demo v1 -> raytag-demo v2, 40 test tracks" in text
    assert "+0.050 (95% CI +0.010 .. +0.090)" in text and "87.3%" in text
    real = lines[lines.index("  odd/<b>Bold</b> & Co  (3:05)") + 1 :][:2]
    assert real[0].split() == ["raytag-demo", "v2", "tags:", "drums", "0.91,", "loud", "0.80"]
    assert real[1].split()[2:] == ["top:", "guitar", "0.62,", "rock", "0.55,", "techno", "0.30"]
    assert "raytag-demo@champion  (at the thresholds stored with it: max_f1 on the valid" in text
    assert "musicnn-mtt v1        models:/musicnn-mtt@champion  (no thresholds stored" in text
    assert report.html_path in text and report.log_path in text
    assert (
        "Verdict better (the 95% interval of the macro ROC-AUC change lies above 0): "
        "raytag-demo v2 was promoted to champion." in text
    )
    assert "comparison    http://127.0.0.1:5000/#/runs/cmp" in text
    assert "Against the previous champion" not in format_report(replace(report, comparison=None))
    refused = replace(report.comparison, baseline="raytag-demo v2", candidate="raytag-demo v3",
                      verdict="worse", promoted=False, compared_now=False)  # fmt: skip
    kept = format_report(replace(report, comparison=refused))
    assert "(spectrogram-small, 15 epochs, kept: raytag-demo v3 was not promoted)" in kept
    assert "raytag-demo v2 -> raytag-demo v3, 40 test tracks; compared by an earlier run" in kept
    assert "the gate refuses a worse version, so raytag-demo v2 stays champion" in kept
    many = tuple(TagScore(tag, round(0.9 - i / 10, 1)) for i, tag in enumerate(VOCABULARY[:6]))
    track = report.tagging.real_tracks[0]
    track = replace(track, by_model=(ModelTags("raytag-demo v2", 8, many, many), track.by_model[1]))
    shorter = format_report(replace(report, tagging=replace(report.tagging, real_tracks=(track,))))
    expected = "tags: piano 0.90, chromatic_percussion 0.80, organ 0.70, guitar 0.60 (+2 more)"
    assert expected in shorter


@pytest.mark.slow  # starts Chromium
def test_report_html_renders_in_a_real_browser(tmp_path: Path) -> None:
    """report.html from the real rendering code, opened in headless Chromium: the per-tag
    table has a row per tag with the decision columns, every image decodes, nothing
    is fetched, and catalogue text stays text."""
    from selenium.webdriver.common.by import By

    from tests.browser import headless_chromium, screenshot

    report = _sample_report(tmp_path, comparison=True)
    path = write_html(report, report.html_path)
    with headless_chromium() as browser:
        browser.get(path.as_uri())
        headings = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#per-tag th")]
        assert headings == ["Tag", "Positives", "ROC-AUC", "PR-AUC", "Threshold", "Assigned",
                            "Precision", "Recall", "F1"]  # fmt: skip
        rows = browser.find_elements(By.CSS_SELECTOR, "#per-tag tbody tr")
        assert [row.get_attribute("data-tag") for row in rows] == list(VOCABULARY)
        assert "no positive tracks" in rows[-1].text and rows[-1].get_attribute("class")
        images = browser.execute_script(
            "return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth,"
            " i.src.slice(0, 22)])"
        )
        assert len(images) == len(PLOT_FILES) + 1, images  # + the comparison's plot
        for alt, complete, width, src in images:
            assert complete and width > 0 and src == "data:image/png;base64,", alt
        sources = browser.execute_script(
            "return [...document.querySelectorAll('[src], link, script')].map(e => e.src)"
        )
        assert all(src.startswith("data:") for src in sources), sources
        real = browser.find_element(By.ID, "real-music")
        assert "<b>Bold</b> & Co" in real.text and not real.find_elements(By.TAG_NAME, "b")
        chips = [c.text for c in real.find_elements(By.CLASS_NAME, "chip")]
        assert chips == ["drums", "loud"]
        assert "musicnn-mtt v1" in real.text and "top scores only" in real.text
        assert "stored with it: max_f1 on the valid split" in real.text
        assert "guitar 0.62" in real.text
        comparison = browser.find_element(By.ID, "comparison").text
        assert "+0.050" in comparison and "87.3%" in comparison
        assert "raytag-demo v2 was promoted to champion" in comparison
        shot = screenshot(browser, tmp_path / "report.png")
    with Image.open(shot) as image:  # the whole page, taller than the window
        assert image.height > 900
