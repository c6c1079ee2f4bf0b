"""The demo's steps in order: MLflow and Ray up, the catalogue, the model and its
promotion to champion, musicnn, tagging, the report."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from raytag.demo.champion import model_record, train_or_reuse
from raytag.demo.gate import promote_or_keep
from raytag.demo.html import write_html
from raytag.demo.logs import LOG_FILE, output_to_log
from raytag.demo.pretrained import musicnn_or_reuse
from raytag.demo.progress import Clock, Ticker, both, printer, since
from raytag.demo.report import (
    CatalogueRecord,
    DemoReport,
    MLflowRecord,
    PretrainedRecord,
    RayRecord,
    Timings,
)
from raytag.demo.settings import DemoSettings
from raytag.demo.tag import tag
from raytag.services import MLflowServer, free_port

DEFAULT_WORKDIR = "demo"
DEFAULT_MLFLOW_PORT = 5000


def run_demo(
    workdir: str | Path = DEFAULT_WORKDIR,
    settings: DemoSettings | None = None,
    *,
    bad_inputs: bool = True,
    keep_mlflow: bool = False,
    retrain: bool = False,
    mlflow_port: int | None = None,
    num_cpus: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> DemoReport:
    """Run the demo under ``workdir``; returns the report (also written to report.json and
    report.html).

    ``settings`` None: DemoSettings' defaults. ``mlflow_port`` None: 5000 when free, else
    any free port. ``keep_mlflow`` leaves the server running after the demo (the report says
    how to open and stop it); a later run finds it again and uses it. ``num_cpus`` None: all
    of this machine's CPUs for Ray. ``progress`` receives the demo's own lines (None: this
    process's standard error); everything else printed while the demo runs, the Ray
    workers' output included, goes to ``workdir/demo.log`` (:mod:`raytag.demo.logs`),
    which the first line names.
    """
    started = time.monotonic()
    settings = settings or DemoSettings()
    workdir = Path(workdir).resolve()
    log_path = workdir / LOG_FILE
    Clock(progress or printer(sys.stderr), started)(
        f"Ray's, Ray Data's and MLflow's output goes to {log_path}"
    )
    with output_to_log(log_path) as (log, terminal):
        say = Clock(both(progress or printer(terminal), printer(log)), started)
        try:
            report = _run_steps(workdir, settings, say, started, log_path, bad_inputs=bad_inputs,
                                keep_mlflow=keep_mlflow, retrain=retrain,
                                mlflow_port=mlflow_port, num_cpus=num_cpus)  # fmt: skip
        except BaseException:
            say(f"failed; the log may say why: {log_path}")
            raise
    Path(report.report_path).write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    write_html(report, report.html_path)
    return report


def _run_steps(
    workdir: Path,
    settings: DemoSettings,
    say: Clock,
    started: float,
    log_path: Path,
    *,
    bad_inputs: bool,
    keep_mlflow: bool,
    retrain: bool,
    mlflow_port: int | None,
    num_cpus: int | None,
) -> DemoReport:
    """The demo's steps, in order; its report."""
    timings: dict[str, float] = {}
    port = mlflow_port or free_port(DEFAULT_MLFLOW_PORT)
    server = MLflowServer(workdir / "mlflow", port=port).launch()
    if not server.reused:
        say("MLflow: starting mlflow/serve.sh (sqlite + local artifacts) in the background")
    try:
        t = time.monotonic()
        catalogue = _catalogue(workdir, settings, say)
        timings["catalogue"] = since(t)
        say(f"catalogue: {'reused' if catalogue.reused else 'rendered'} {catalogue.manifest} "
            f"({timings['catalogue']} s)")  # fmt: skip

        t = time.monotonic()
        server.wait(progress=say)
        timings["mlflow_start"] = since(t)
        say(f"MLflow: {server.uri} ({'already running' if server.reused else 'started'})")

        with _environ(MLFLOW_TRACKING_URI=server.uri), _local_ray(num_cpus, say) as cpus:
            from raytag.catalogue import VOCABULARY
            from raytag.train import TrainConfig

            t = time.monotonic()
            pretrained = musicnn_or_reuse(say)
            timings["pretrained"] = since(t)

            config = TrainConfig(
                manifest=catalogue.manifest, model=settings.model, vocabulary=VOCABULARY,
                epochs=settings.epochs, batch_size=settings.batch_size,
                patches_per_track=settings.patches_per_track,
                storage_path=str(workdir / "runs"), run_name="demo", seed=settings.seed,
                **_warm_start(settings, pretrained, say),
            )  # fmt: skip
            t = time.monotonic()
            candidate = train_or_reuse(config, workdir, retrain, say)
            timings["training"] = since(t)

            t = time.monotonic()
            champion, comparison = promote_or_keep(candidate, catalogue.manifest, workdir,
                                                   settings.max_patches, say)  # fmt: skip
            reused = candidate.reused or champion != candidate.version
            model = model_record(champion, workdir, reused=reused)
            timings["comparison"] = since(t)

            t = time.monotonic()
            tagging = tag(workdir, catalogue.manifest, model, pretrained, settings.real_tracks,
                          settings.max_patches, bad_inputs, say)  # fmt: skip
            timings["tagging"] = since(t)
    except BaseException:
        server.stop()
        raise
    where = {"uri": server.uri, "home": str(server.home), "reused": server.reused}
    if keep_mlflow:
        server.detach()
        mlflow = MLflowRecord(**where, running=True, pid=server.pid, stop=server.stop_command())
    else:
        say("stopping MLflow")
        server.stop()
        mlflow = MLflowRecord(**where, running=False, restart=server.restart_command())
    return DemoReport(
        workdir=str(workdir),
        settings=settings,
        timings_s=Timings(**timings, total=since(started)),
        catalogue=catalogue,
        mlflow=mlflow,
        ray=RayRecord(cpus=cpus),
        model=model,
        pretrained=pretrained,
        tagging=tagging,
        log_path=str(log_path),
        report_path=str(workdir / "report.json"),
        html_path=str(workdir / "report.html"),
        comparison=comparison,
    )


def _warm_start(
    settings: DemoSettings, pretrained: PretrainedRecord | None, say: Clock
) -> dict[str, Any]:
    """The TrainConfig fields of the demo's recipe: musicnn-mtt's frozen encoder under a
    new head when asked for and imported (its version pinned, so the recipe is fixed),
    else ``settings.model`` from scratch."""
    if not settings.warm_start:
        return {}
    if pretrained is None:
        say(f"training {settings.model} from scratch: musicnn-mtt is not there to start from")
        return {}
    return {"init_from": f"models:/{pretrained.name}/{pretrained.version}", "freeze_encoder": True}


def _catalogue(workdir: Path, settings: DemoSettings, say: Clock) -> CatalogueRecord:
    """Render (or find) the labelled catalogue; reused when its manifest was not rewritten."""
    from raytag.catalogue import synthesize

    n_tracks, folder = settings.n_tracks, workdir / "catalogue"
    say(f"catalogue: {n_tracks} labelled tracks of {settings.duration_s:g} s (FluidSynth) ...")
    manifest = folder / "manifest.parquet"
    before = manifest.stat().st_mtime_ns if manifest.exists() else None
    with Ticker(say, lambda: f"catalogue: {_count_files(folder / 'audio')}/{n_tracks} rendered"):
        uri = synthesize(str(folder), n_tracks, settings.seed, duration_s=settings.duration_s)
    splits = pq.read_table(uri, columns=["split"]).column("split").to_pylist()
    return CatalogueRecord(
        tracks=len(splits),
        splits={s: splits.count(s) for s in sorted(set(splits))},
        manifest=uri,
        reused=before is not None and manifest.stat().st_mtime_ns == before,
    )


def _count_files(folder: Path) -> int:
    with contextlib.suppress(OSError):
        return sum(1 for _ in folder.iterdir())
    return 0


@contextlib.contextmanager
def _local_ray(num_cpus: int | None, say: Clock) -> Iterator[int]:
    """A local Ray in this process on 127.0.0.1, shut down afterwards; an already
    initialised Ray (a notebook, the test session) is used as it is and left running."""
    import ray

    if ray.is_initialized():
        yield int(ray.cluster_resources().get("CPU", 0))
        return
    cpus = num_cpus or os.cpu_count() or 1
    say(f"Ray: starting a local cluster ({cpus} CPUs, 127.0.0.1, no dashboard)")
    ray.init(
        address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=True,
        _node_ip_address="127.0.0.1", configure_logging=True, logging_level="warning",
    )  # fmt: skip
    try:
        yield cpus
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
