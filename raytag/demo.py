"""The whole product on one machine (``raytag demo``, ``make demo``).

Starts a local MLflow server (mlflow/serve.sh: sqlite and local artifacts under the
workdir, on 127.0.0.1) and a local Ray; generates the labelled demo catalogue; trains a
CPU-sized model with Ray Train, evaluates it on the held-out split, registers it and
points ``@champion`` at it; tags the catalogue, real full-length music from a Debian
package and two deliberately broken inputs with ``models:/...@champion`` through the
Ray Data job; and returns a report. It calls the library, never the ``raytag`` command.

A second run reuses what exists: the catalogue (``synthesize`` is idempotent), the
champion when it was trained with the same settings on the same catalogue (its MLflow
run carries a fingerprint of them; ``retrain=True`` trains anew) and, with that champion,
the tagging output (the tagging job resumes, so nothing is left to tag). An interrupted
training resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

DEFAULT_WORKDIR = "demo"
EXPERIMENT = "raytag-demo"
REGISTERED_MODEL = "raytag-demo"
ALIAS = "champion"
FINGERPRINT_TAG = "raytag.demo.fingerprint"
DEFAULT_MLFLOW_PORT = 5000
# Real, openly licensed full-length music from Debian packages (make setup installs both).
REAL_MUSIC = ("/usr/share/games/singularity/music/*.ogg", "/usr/share/games/asc/music/*.mp3")
SERVE_SCRIPT = Path(__file__).resolve().parents[1] / "mlflow" / "serve.sh"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_demo(
    workdir: str | Path = DEFAULT_WORKDIR,
    *,
    n_tracks: int = 300,
    duration_s: float = 8.0,
    epochs: int = 15,
    model: str = "spectrogram-small",
    batch_size: int = 16,
    patches_per_track: int = 2,
    real_tracks: int = 8,
    max_patches: int = 8,
    bad_inputs: bool = True,
    keep_mlflow: bool = False,
    retrain: bool = False,
    mlflow_port: int | None = None,
    num_cpus: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = _say,
) -> dict[str, Any]:
    """Run the demo under ``workdir``; returns the report (also written to report.json).

    ``mlflow_port`` None: 5000 when free, else any free port. ``keep_mlflow`` leaves the
    server running after the demo (the report says how to open and stop it); a later run
    finds it again and uses it.
    """
    started = time.monotonic()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    say = _Clock(progress, started)
    report: dict[str, Any] = {
        "workdir": str(workdir),
        "settings": {
            "n_tracks": n_tracks,
            "duration_s": duration_s,
            "epochs": epochs,
            "model": model,
            "batch_size": batch_size,
            "patches_per_track": patches_per_track,
            "real_tracks": real_tracks,
            "max_patches": max_patches,
            "seed": seed,
        },
        "timings_s": {},
    }
    timings = report["timings_s"]

    server = LocalMLflow(workdir / "mlflow", mlflow_port).launch()
    if not server.reused:
        say("MLflow: starting mlflow/serve.sh (sqlite + local artifacts) in the background")
    try:
        t = time.monotonic()
        say(f"catalogue: {n_tracks} labelled tracks of {duration_s:g} s (FluidSynth) ...")
        audio = workdir / "catalogue" / "audio"
        with _Ticker(say, lambda: f"catalogue: {_count_files(audio)}/{n_tracks} rendered"):
            manifest, reused = _catalogue(workdir, n_tracks, duration_s, seed)
        report["catalogue"] = _catalogue_counts(manifest) | {"manifest": manifest, "reused": reused}
        timings["catalogue"] = _since(t)
        say(
            f"catalogue: {'reused' if reused else 'rendered'} {manifest} ({timings['catalogue']} s)"
        )

        t = time.monotonic()
        server.wait(progress=say)
        report["mlflow"] = {"uri": server.uri, "home": str(server.home), "reused": server.reused}
        timings["mlflow_start"] = _since(t)
        say(f"MLflow: {server.uri} ({'already running' if server.reused else 'started'})")

        with _environ(MLFLOW_TRACKING_URI=server.uri), _local_ray(num_cpus, say) as cpus:
            report["ray"] = {"cpus": cpus}
            from raytag.catalogue import VOCABULARY
            from raytag.train import TrainConfig

            config = TrainConfig(
                manifest=manifest, model=model, vocabulary=VOCABULARY, epochs=epochs,
                batch_size=batch_size, patches_per_track=patches_per_track,
                storage_path=str(workdir / "runs"), run_name="demo", seed=seed,
            )  # fmt: skip
            t = time.monotonic()
            report["model"] = _train_or_reuse(config, workdir, retrain, say)
            timings["training"] = _since(t)

            t = time.monotonic()
            report["tagging"] = _tag(workdir, manifest, report["model"], real_tracks,
                                     max_patches, bad_inputs, say)  # fmt: skip
            timings["tagging"] = _since(t)
    except BaseException:
        server.stop()
        raise
    if keep_mlflow:
        server.detach()
        report["mlflow"] |= {"running": True, "pid": server.pid, "stop": server.stop_command()}
    else:
        say("stopping MLflow")
        server.stop()
        report["mlflow"] |= {"running": False, "restart": server.restart_command()}
    timings["total"] = _since(started)
    (workdir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["report_path"] = str(workdir / "report.json")
    return report


# -- the steps ---------------------------------------------------------------------------


def _catalogue(workdir: Path, n_tracks: int, duration_s: float, seed: int) -> tuple[str, bool]:
    """Render (or find) the labelled catalogue; reused when its manifest was not rewritten."""
    from raytag.catalogue import synthesize

    manifest = workdir / "catalogue" / "manifest.parquet"
    before = manifest.stat().st_mtime_ns if manifest.exists() else None
    uri = synthesize(str(workdir / "catalogue"), n_tracks, seed, duration_s=duration_s)
    return uri, before is not None and manifest.stat().st_mtime_ns == before


def _catalogue_counts(manifest: str) -> dict[str, Any]:
    splits = pq.read_table(manifest, columns=["split"]).column("split").to_pylist()
    return {"tracks": len(splits), "splits": {s: splits.count(s) for s in sorted(set(splits))}}


def _fingerprint(config: Any) -> str:
    """What the trained model depends on: the training settings and the catalogue's own
    parameters (stored in its manifest), so a changed catalogue means a new model."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("run_name", "max_failures")}
    metadata = pq.read_schema(config.manifest).metadata or {}
    settings["catalogue"] = {k.decode(): v.decode() for k, v in metadata.items()
                             if k.startswith(b"raytag")}  # fmt: skip
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _train_or_reuse(config: Any, workdir: Path, retrain: bool, say: _Clock) -> dict[str, Any]:
    """The champion, trained now or reused when an earlier demo trained it the same way."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from raytag.train import run_training

    client = mlflow.MlflowClient()
    fingerprint = _fingerprint(config)
    if not retrain:
        try:
            champion = client.get_model_version_by_alias(REGISTERED_MODEL, ALIAS)
            run = client.get_run(champion.run_id)
        except MlflowException:
            champion = run = None
        if run is not None and run.data.tags.get(FINGERPRINT_TAG) == fingerprint:
            say(f"training: reusing {REGISTERED_MODEL} version {champion.version} "
                f"(@{ALIAS}, same settings and catalogue; --retrain trains anew)")  # fmt: skip
            return _model_record(client, champion.version, run.info.run_id, workdir, reused=True)

    run_name = _run_name(client, fingerprint, workdir / "runs", retrain)
    config = replace(config, run_name=run_name)
    say(f"training: {config.model} for up to {config.epochs} epochs with Ray Train "
        f"(run {run_name}; epochs are reported as they finish) ...")  # fmt: skip
    with _EpochWatcher(client, run_name, config.epochs, say):
        summary = run_training(
            config, experiment=EXPERIMENT, registered_model=REGISTERED_MODEL, alias=ALIAS
        )
    client.set_tag(summary["run_id"], FINGERPRINT_TAG, fingerprint)
    say(f"training: registered {REGISTERED_MODEL} version {summary['version']} as @{ALIAS}; "
        f"test macro ROC-AUC {_fmt(summary['test_macro_roc_auc'])}")  # fmt: skip
    return _model_record(client, summary["version"], summary["run_id"], workdir, reused=False)


def _run_name(client: Any, fingerprint: str, storage: Path, retrain: bool) -> str:
    """``demo-<fingerprint>``, so an interrupted training resumes from its checkpoints; a
    fresh name when that run already finished (a retrain) or lost its MLflow run."""
    name = f"demo-{fingerprint}"
    runs = client.search_runs(
        [_experiment_id(client)], filter_string=f"tags.`raytag.run_name` = '{name}'"
    )
    finished = any(run.info.status == "FINISHED" for run in runs)
    if finished or (retrain and (runs or (storage / name).exists())):
        return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not runs and (storage / name).exists():
        shutil.rmtree(storage / name)  # checkpoints whose MLflow run is gone: start over
    return name


def _experiment_id(client: Any) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)


def _model_record(
    client: Any, version: str, run_id: str, workdir: Path, *, reused: bool
) -> dict[str, Any]:
    """The registered version, its training run and its test evaluation (from MLflow, the
    same whether trained now or reused)."""
    run = client.get_run(run_id)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    metrics, plots = _download_evaluation(run_id, workdir)
    return {
        "name": REGISTERED_MODEL,
        "version": str(version),
        "uri": f"models:/{REGISTERED_MODEL}@{ALIAS}",
        "reused": reused,
        "run_id": run_id,
        "arch": run.data.params.get("model"),
        "epochs": len(client.get_metric_history(run_id, "val_loss")),
        "run_url": f"{uri}/#/experiments/{run.info.experiment_id}/runs/{run_id}",
        "model_url": f"{uri}/#/models/{REGISTERED_MODEL}/versions/{version}",
        "metrics": metrics,
        "plots": str(plots),
    }


def _download_evaluation(run_id: str, workdir: Path) -> tuple[dict[str, Any], Path]:
    """The run's test evaluation (metrics.json and the four plots) into
    workdir/report/evaluation/test, so the report can point at plain files."""
    import mlflow

    target = workdir / "report" / "evaluation"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    folder = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="evaluation/test", dst_path=str(target)
        )
    )
    return json.loads((folder / "metrics.json").read_text()), folder


def _tag(
    workdir: Path,
    catalogue: str,
    model: dict[str, Any],
    real_tracks: int,
    max_patches: int,
    bad_inputs: bool,
    say: _Clock,
) -> dict[str, Any]:
    """Tag catalogue + real music + broken inputs with the champion; the run's record."""
    from raytag.tagging import ERRORS, PREDICTIONS, RUN_FILE, TagOptions, tag_catalogue

    manifest, counts = _tag_manifest(workdir, catalogue, real_tracks, bad_inputs)
    output = workdir / "tags" / f"{model['name']}-v{model['version']}"
    say(f"tagging: {sum(counts.values())} tracks ({counts['catalogue']} generated, "
        f"{counts['real']} real, {counts['bad']} broken) with {model['uri']} "
        f"(version {model['version']}), at most {max_patches} patches per track ...")  # fmt: skip
    summary = tag_catalogue(
        manifest, model["uri"], str(output), TagOptions(max_patches=max_patches)
    )
    record = summary.record
    worked = [a for a in record["attempts"] if a.get("predictions", 0) + a.get("errors", 0)]
    this = record["attempts"][-1]
    say(f"tagging: {summary.report.describe()}")
    return {
        "manifest": manifest,
        "inputs": counts,
        "output": str(output),
        "predictions": str(output / PREDICTIONS),
        "errors": str(output / ERRORS),
        "run_file": str(output / RUN_FILE),
        "counts": record["counts"],
        "exactly_once": summary.report.ok,
        "resumed": len(record["attempts"]) > 1,
        "tagged_this_run": this["predictions"] + this["errors"],
        "throughput": _throughput(worked[-1] if worked else this),
        "real_tracks": _real_top_tags(output / PREDICTIONS),
        "max_patches": max_patches,
    }


def _tag_manifest(
    workdir: Path, catalogue: str, real_tracks: int, bad_inputs: bool
) -> tuple[str, dict[str, int]]:
    """One Parquet manifest: the generated catalogue (its tags and split pass through to the
    predictions), the first ``real_tracks`` real tracks, and two broken inputs."""
    rows = pq.read_table(catalogue, columns=["track_id", "uri", "tags", "split"]).to_pylist()
    for row in rows:
        row["source"] = "catalogue"
    real = [path for pattern in REAL_MUSIC for path in sorted(glob.glob(pattern))][:real_tracks]
    for path in real:
        package = Path(path).parts[-3] if len(Path(path).parts) > 3 else "real"
        rows.append({"track_id": f"real/{package}/{Path(path).stem}", "uri": path,
                     "tags": None, "split": None, "source": "real"})  # fmt: skip
    bad = []
    if bad_inputs:
        broken = workdir / "bad-input"
        broken.mkdir(exist_ok=True)
        (broken / "not-audio.mp3").write_text("this is not audio\n")
        bad = [("bad/not-audio", broken / "not-audio.mp3"), ("bad/missing", broken / "gone.ogg")]
        for track_id, path in bad:
            rows.append({"track_id": track_id, "uri": str(path), "tags": None, "split": None,
                         "source": "broken"})  # fmt: skip
    schema = pa.schema([("track_id", pa.string()), ("uri", pa.string()),
                        ("tags", pa.list_(pa.string())), ("split", pa.string()),
                        ("source", pa.string())])  # fmt: skip
    path = workdir / "tag-manifest.parquet"
    table = pa.Table.from_pylist(rows, schema=schema)
    if not path.exists() or not pq.read_table(path).equals(table):
        pq.write_table(table, path)
    counts = {"catalogue": len(rows) - len(real) - len(bad), "real": len(real), "bad": len(bad)}
    return str(path), counts


def _throughput(attempt: dict[str, Any]) -> dict[str, Any]:
    keys = ("wall_s", "predictions", "errors", "audio_hours", "tracks_per_s",
            "audio_hours_per_hour", "cluster", "started_at")  # fmt: skip
    return {k: attempt.get(k) for k in keys}


def _real_top_tags(predictions: Path, limit: int = 8) -> list[dict[str, Any]]:
    table = pads.dataset(str(predictions), format="parquet").to_table(
        columns=["track_id", "uri", "source", "top_tags", "duration_s", "n_patches"],
        filter=pads.field("source") == "real",
    )
    rows = sorted(table.to_pylist(), key=lambda r: r["track_id"])[:limit]
    return [
        {"track_id": r["track_id"], "uri": r["uri"], "duration_s": r["duration_s"],
         "n_patches": r["n_patches"], "top_tags": r["top_tags"]}
        for r in rows
    ]  # fmt: skip


# -- the report -----------------------------------------------------------------------------


def format_report(report: dict[str, Any]) -> str:
    """The report as a newcomer reads it: quality, real tracks, counts, speed, where things are."""
    model, tagging, catalogue = report["model"], report["tagging"], report["catalogue"]
    metrics = model["metrics"]
    timings = report["timings_s"]
    lines = [
        f"raytag demo: done in {_duration(timings['total'])}",
        "",
        f"Catalogue  {catalogue['tracks']} labelled tracks "
        f"({', '.join(f'{n} {s}' for s, n in catalogue['splits'].items())}), "
        f"{'reused' if catalogue['reused'] else 'rendered now'}: {catalogue['manifest']}",
        f"Model      {model['name']} version {model['version']} = {model['uri']} "
        f"({model['arch']}, {_plural(model['epochs'], 'epoch')}, "
        f"{'reused: same settings and catalogue' if model['reused'] else 'trained now'})",
        "",
        f"Held-out test split ({metrics['n_tracks']} tracks): macro ROC-AUC "
        f"{_fmt(metrics['macro_roc_auc'])}, macro PR-AUC {_fmt(metrics['macro_pr_auc'])} "
        f"({metrics['n_tags_scored']} of {metrics['n_tags']} tags scored)",
        f"  {'tag':<22}{'ROC-AUC':>8}{'PR-AUC':>8}{'positives':>11}",
    ]
    for row in metrics["per_tag"]:
        lines.append(
            f"  {row['tag']:<22}{_fmt(row['roc_auc']):>8}{_fmt(row['pr_auc']):>8}"
            f"{row['n_positive']:>11}" + (f"  ({row['reason']})" if row["reason"] else "")
        )
    lines += ["", f"Real music, top tags (at most {tagging['max_patches']} patches per track)"]
    for track in tagging["real_tracks"]:
        tags = ", ".join(f"{t['tag']} {t['score']:.2f}" for t in track["top_tags"][:4])
        name = track["track_id"].removeprefix("real/")
        lines.append(f"  {name:<34} {_duration(track['duration_s']):>6}  {tags}")
    if not tagging["real_tracks"]:
        lines.append("  none found (make setup installs singularity-music)")
    counts, speed = tagging["counts"], tagging["throughput"]
    fresh = tagging["tagged_this_run"] > 0
    by_code = ", ".join(f"{code} {n}" for code, n in counts["errors_by_code"].items()) or "none"
    lines += [
        "",
        f"Tagging    {counts['manifest_rows']} manifest rows = {counts['predictions']} "
        f"predictions + {counts['errors']} errors ({by_code}); "
        f"{'every row exactly once' if tagging['exactly_once'] else 'INCOMPLETE'}",
        f"           {_fmt(speed['tracks_per_s'], 2)} tracks/s, "
        f"{_fmt(speed['audio_hours_per_hour'], 1)} audio hours per hour on "
        f"{_int(speed['cluster'].get('CPU'))} CPUs "
        f"({speed['predictions']} + {speed['errors']} rows in {_fmt(speed['wall_s'], 1)} s"
        + ("; by an earlier run: this one found nothing left to tag)" if not fresh else ")"),
        "",
        "Where things are",
        f"  predictions   {tagging['predictions']}/*.parquet",
        f"  errors        {tagging['errors']}/*.parquet",
        f"  run summary   {tagging['run_file']}",
        f"  plots         {model['plots']}/*.png",
        f"  report        {report.get('report_path', report['workdir'] + '/report.json')}",
        f"  MLflow run    {model['run_url']}",
        f"  model         {model['model_url']}",
    ]
    mlflow_info = report["mlflow"]
    if mlflow_info.get("running"):
        lines += [
            f"  MLflow UI     open {mlflow_info['uri']} (running; stop: {mlflow_info['stop']})"
        ]
    else:
        lines += [f"  MLflow UI     stopped; to browse: {mlflow_info['restart']}"]
    lines += [
        "",
        "Timings    "
        + ", ".join(f"{k} {_duration(v)}" for k, v in timings.items() if k != "total"),
    ]
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _plural(n: float | None, noun: str) -> str:
    return f"{_int(n)} {noun}{'' if n == 1 else 's'}"


def _int(value: float | None) -> str:
    return "?" if value is None else str(int(value))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


# -- services --------------------------------------------------------------------------------


class LocalMLflow:
    """mlflow/serve.sh on 127.0.0.1 with sqlite and artifacts under ``home``.

    A server an earlier ``keep_mlflow`` demo left running (``home/server.json``) is found
    and used again rather than a second one opened on the same sqlite file.
    """

    def __init__(self, home: Path, port: int | None = None) -> None:
        self.home = home
        self.state = home / "server.json"
        self.log = home / "server.log"
        self.port = port
        self.pid: int | None = None
        self.proc: subprocess.Popen | None = None
        self.reused = False

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    def launch(self) -> LocalMLflow:
        """Start the server without waiting (it takes 10-30 s), or find the running one."""
        self.home.mkdir(parents=True, exist_ok=True)
        if self._find_running():
            return self
        if not SERVE_SCRIPT.is_file():
            raise FileNotFoundError(f"{SERVE_SCRIPT} not found: run the demo from a checkout")
        self.port = self.port or (DEFAULT_MLFLOW_PORT if _port_free(DEFAULT_MLFLOW_PORT)
                                  else _free_port())  # fmt: skip
        env = {
            **os.environ,
            "PYTHON": sys.executable,
            "MLFLOW_HOME": str(self.home),
            "MLFLOW_BACKEND_STORE_URI": self.backend,
            "MLFLOW_ARTIFACTS_DESTINATION": str(self.home / "artifacts"),
            "MLFLOW_HOST": "127.0.0.1",
            "MLFLOW_PORT": str(self.port),
        }
        # A session of its own: stop() ends the server and its uvicorn workers together,
        # and a kept server outlives the demo.
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["bash", str(SERVE_SCRIPT)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, cwd=self.home, start_new_session=True,
            )  # fmt: skip
        self.pid = self.proc.pid
        return self

    def wait(self, timeout: float = 300, progress: Callable[[str], None] | None = None) -> None:
        """Until /health answers."""
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + 15
        while not _healthy(self.uri):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"MLflow exited early; see {self.log}:\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"MLflow did not answer in {timeout:.0f} s; see {self.log}")
            if progress and time.monotonic() > next_note:
                progress("MLflow: still starting (imports and database migrations) ...")
                next_note = time.monotonic() + 15
            time.sleep(0.5)

    def detach(self) -> None:
        """Leave the server running; note it so the next demo (or the user) finds it."""
        self.state.write_text(json.dumps({"pid": self.pid, "port": self.port, "uri": self.uri}))

    def stop(self) -> None:
        self.state.unlink(missing_ok=True)
        if self.pid is None or not _alive(self.pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(self.pid) and time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            if _alive(self.pid):
                os.killpg(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(5)

    def stop_command(self) -> str:
        return f"kill -- -{self.pid}"

    def restart_command(self) -> str:
        script = os.path.relpath(SERVE_SCRIPT)
        script = str(SERVE_SCRIPT) if script.startswith("..") else script
        return f"MLFLOW_HOME={self.home} MLFLOW_PORT={self.port} {script}, then open {self.uri}"

    def _find_running(self) -> bool:
        try:
            state = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return False
        pid, port = state.get("pid"), state.get("port")
        ours = _alive(pid) and self.backend in _cmdline(pid)  # not a recycled pid
        if ours and _healthy(f"http://127.0.0.1:{port}"):
            self.pid, self.port, self.reused = pid, port, True
            return True
        self.state.unlink(missing_ok=True)
        return False


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` runs; a server this process started and that has exited is reaped
    here (a zombie would still answer signals)."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    """The command line of ``pid`` and of its children (serve.sh execs python)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-chars:]
    return ""


@contextlib.contextmanager
def _local_ray(num_cpus: int | None, say: _Clock) -> Iterator[int]:
    """A local Ray in this process on 127.0.0.1, shut down afterwards; an already
    initialised Ray (a notebook, the test session) is used as it is and left running."""
    import ray

    if ray.is_initialized():
        yield int(ray.cluster_resources().get("CPU", 0))
        return
    cpus = num_cpus or os.cpu_count() or 1
    say(f"Ray: starting a local cluster ({cpus} CPUs, 127.0.0.1, no dashboard)")
    ray.init(
        address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
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


class _Clock:
    """Progress lines stamped with the time since the demo started."""

    def __init__(self, sink: Callable[[str], None], started: float) -> None:
        self.sink, self.started = sink, started

    def __call__(self, message: str) -> None:
        self.sink(f"[demo {_duration(time.monotonic() - self.started):>5}] {message}")


class _EpochWatcher(threading.Thread):
    """Reports each finished epoch while Ray Train runs, from the metrics that rank 0 logs
    to MLflow (the training workers' own output stays in Ray's logs)."""

    def __init__(self, client: Any, run_name: str, epochs: int, say: _Clock) -> None:
        super().__init__(daemon=True)
        self.client, self.run_name, self.epochs, self.say = client, run_name, epochs, say
        self.done = threading.Event()
        self.seen = 0

    def __enter__(self) -> _EpochWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(15)

    def run(self) -> None:
        run_id = None
        stopping = False
        while not stopping:  # one last look after training ends, for the final epoch
            stopping = self.done.wait(3)
            with contextlib.suppress(Exception):  # progress only: never fail the demo
                if run_id is None:
                    runs = self.client.search_runs(
                        [_experiment_id(self.client)],
                        filter_string=f"tags.`raytag.run_name` = '{self.run_name}'",
                    )
                    run_id = runs[0].info.run_id if runs else None
                if run_id is not None:
                    self._report(run_id)

    def _report(self, run_id: str) -> None:
        history = {
            key: {m.step: m.value for m in self.client.get_metric_history(run_id, key)}
            for key in ("train_loss", "val_loss")
        }
        for step in sorted(history["val_loss"]):
            if step > self.seen and step in history["train_loss"]:
                self.seen = step
                self.say(f"training: epoch {step}/{self.epochs}  train loss "
                         f"{history['train_loss'][step]:.4f}  val loss "
                         f"{history['val_loss'][step]:.4f}")  # fmt: skip


class _Ticker(threading.Thread):
    """Says ``status()`` every ``every`` seconds until the block ends (for steps that
    report nothing themselves); silent for steps that end sooner."""

    def __init__(self, say: _Clock, status: Callable[[], str], every: float = 15) -> None:
        super().__init__(daemon=True)
        self.say, self.status, self.every = say, status, every
        self.done = threading.Event()

    def __enter__(self) -> _Ticker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(5)

    def run(self) -> None:
        while not self.done.wait(self.every):
            with contextlib.suppress(Exception):
                self.say(self.status())


def _count_files(folder: Path) -> int:
    with contextlib.suppress(OSError):
        return sum(1 for _ in folder.iterdir())
    return 0


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)
