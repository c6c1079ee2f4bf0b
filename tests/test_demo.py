"""`raytag demo` end to end at a tiny scale (16 tracks of 4 s, one epoch, one real track),
so the README's first command cannot rot: real MLflow (mlflow/serve.sh), real Ray, real
audio; then a second run that reuses everything."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import mlflow
import pyarrow.dataset as pads
import pytest
from click.testing import CliRunner

from raytag.catalogue import VOCABULARY
from raytag.cli import main
from raytag.demo import (
    ALIAS,
    FINGERPRINT_TAG,
    REGISTERED_MODEL,
    DemoSettings,
    format_report,
    run_demo,
)
from raytag.evaluate import TagMetrics
from raytag.services import free_port, http_status
from raytag.settings import options

TINY = DemoSettings(n_tracks=16, duration_s=4.0, epochs=1, real_tracks=1, max_patches=2)


def _healthy(uri: str) -> bool:
    return http_status(f"{uri}/health") == 200


@pytest.mark.integration  # starts its own MLflow server and Ray
def test_demo_end_to_end_then_a_second_run_reuses_everything(tmp_path: Path) -> None:
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

        # Catalogue, training, evaluation.
        assert first.catalogue.tracks == 16 and not first.catalogue.reused
        assert sum(first.catalogue.splits.values()) == 16
        model = first.model
        assert (model.name, model.reused, model.epochs) == (REGISTERED_MODEL, False, 1)
        metrics = model.metrics
        assert [row.tag for row in metrics.per_tag] == list(VOCABULARY)
        assert all(isinstance(row, TagMetrics) for row in metrics.per_tag)
        for value in (metrics.macro_roc_auc, metrics.macro_pr_auc):
            assert value is None or 0.0 <= value <= 1.0
        for row in metrics.per_tag:
            assert (row.roc_auc is None) == (row.reason is not None)
        plots = sorted(p.name for p in (workdir / "report/evaluation/test").glob("*.png"))
        assert len(plots) == 4, plots

        # Registered with the champion alias, visible through the running server.
        client = mlflow.MlflowClient(tracking_uri=uri)
        champion = client.get_model_version_by_alias(REGISTERED_MODEL, ALIAS)
        assert champion.version == model.version
        assert client.get_run(champion.run_id).data.tags[FINGERPRINT_TAG]
        assert "test_macro_roc_auc" in client.get_run(champion.run_id).data.metrics or (
            metrics.macro_roc_auc is None
        )

        # Tagging: catalogue + one real track + two broken inputs, each row exactly once.
        tagging = first.tagging
        counts = tagging.counts
        assert (tagging.inputs.catalogue, tagging.inputs.real, tagging.inputs.bad) == (16, 1, 2)
        assert counts["manifest_rows"] == 19 == counts["predictions"] + counts["errors"]
        assert counts["errors_by_code"] == {"not_found": 1, "undecodable": 1}
        assert tagging.exactly_once and tagging.tagged_this_run == 19
        assert tagging.throughput.tracks_per_s > 0
        (real,) = tagging.real_tracks
        assert real.track_id.startswith("real/singularity/")
        assert real.duration_s > 60 and real.n_patches == 2  # full length, 2 patches
        assert real.top_tags and {t.tag for t in real.top_tags} <= set(VOCABULARY)
        rows = pads.dataset(tagging.predictions, format="parquet").to_table()
        assert rows.num_rows == counts["predictions"]
        assert set(rows.column("model_version").to_pylist()) == {model.version}

        text = format_report(first)
        expected = ["macro ROC-AUC", "macro PR-AUC", "singularity/", "exactly once", "tracks/s",
                    tagging.predictions, model.run_url, "stop: kill"]  # fmt: skip
        for part in expected:
            assert part in text, part
        assert any("training: epoch 1/1" in line for line in lines), lines
        written = json.loads((workdir / "report.json").read_text())
        assert written == json.loads(json.dumps(first.to_dict(), default=str))
        assert list(written) == ["workdir", "settings", "timings_s", "catalogue", "mlflow",
                                 "ray", "model", "tagging"]  # fmt: skip
        assert list(written["mlflow"]) == ["uri", "home", "reused", "running", "pid", "stop"]
        assert "plots" not in written["model"]["metrics"]  # as training logged metrics.json

        # Second run: the kept server, the catalogue, the champion and the tagging output
        # are all found again; this time the server is stopped at the end.
        lines.clear()
        second = run_demo(workdir, TINY, keep_mlflow=False, num_cpus=2, progress=lines.append)
    finally:
        if _healthy(uri):
            os.killpg(first.mlflow.pid, signal.SIGTERM)
    assert second.mlflow.reused and second.mlflow.uri == uri
    assert second.catalogue.reused
    assert second.model.reused and second.model.version == model.version
    assert second.model.metrics.per_tag == metrics.per_tag
    assert second.tagging.tagged_this_run == 0
    assert second.tagging.counts == counts
    assert second.timings_s.total < first.timings_s.total
    assert not second.mlflow.running and not _healthy(uri)
    assert "MLFLOW_HOME=" in format_report(second)  # how to browse it again
    assert os.environ.get("MLFLOW_TRACKING_URI") != uri  # the demo's setting did not leak


def test_demo_command_help_lists_every_setting() -> None:
    """The demo's options are DemoSettings' fields (generated) plus how this run is hosted."""
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0
    hosting = ["--workdir", "--keep-mlflow", "--retrain", "--mlflow-port", "--cpus"]
    fields = [o.flag for o in options(DemoSettings)]
    shown = re.findall(r"^  (--[a-z-]+)", result.output, flags=re.M)
    assert sorted(shown) == sorted(hosting + fields)
    assert "--tracks" in fields and "--duration" in fields
