"""The tagging job: a Parquet manifest in, Parquet predictions and errors out, exactly
once per model, each track decoded once for all models.

    open_manifest            check files and schema, choose each model's thresholds and
                             the columns carried through, before any work
    pending_rows             pair the manifest with each model's folder in --output: only
                             rows some model lacks are decoded (a rerun resumes, an added
                             model tags only its rows), bad rows become error rows
    decode   (CPU, decode    URI -> 16 kHz mono, each model's   stages.decode_batch/Decoder
              nodes)         patches as 16-bit PCM
    predict  (GPU or CPU)    patches -> scores, tags, top tags  stages.TagPredictor
    write                    per model: predictions/ + errors/  stages.TagSink
    verify                   per model: every manifest row in exactly one output row, or
                             the run fails

A big manifest is tagged as consecutive Ray Data executions of about
``TagOptions.rows_per_execution`` pending rows each (whole reconciliation buckets), so the
driver never holds Ray Data's per-block bookkeeping for more than one of them.

Rerun only once an interrupted run is gone, workers included: a write it still had in
flight could land after the rerun's pairing, and the final verify would then fail the run
on the duplicate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import ray
import ray.data

from raytag.config import AudioConfig
from raytag.manifest import ManifestError, open_manifest
from raytag.storage import s3_endpoint, s3_max_attempts, unreachable
from raytag.tagging.options import DECODE_ROLE, ROLE_LABEL, TagOptions
from raytag.tagging.output import (
    FROM_FILE,
    FROM_MODEL,
    NO_THRESHOLDS,
    StorageUnreachableError,
    TagError,
    carried_columns,
    model_output,
    prediction_schema,
    thresholds_record,
    write_run,
)
from raytag.tagging.reconcile import (
    IncompleteRunError,
    bucket_count,
    pending_part,
    pending_rows,
    verify_manifest,
)
from raytag.tagging.record import (
    RunSummary,
    attempt_record,
    check_output,
    run_record,
    start_run,
)
from raytag.tagging.stages import Decoder, TagPredictor, TagSink, decode_batch
from raytag.thresholds import read_thresholds_file

if TYPE_CHECKING:
    from raytag.checkpoint import LoadedModel

log = logging.getLogger(__name__)

# Writing is I/O bound and must not queue behind decode tasks for a CPU slot: results
# would only land at the end, and a killed run would lose them. Their number is bounded
# by what the model actors produce.
_WRITE_CPUS = 0


def tag_catalogue(
    manifest_uri: str,
    model_uris: Sequence[str],
    output: str,
    options: TagOptions | None = None,
) -> list[RunSummary]:
    """Tag every manifest row that some model's folder in ``output`` lacks, decoding each
    track once for all models; verify each model's output exactly-once and write its
    ``_run.json``. One summary per model, in order.

    Each model decides its ``tags`` with the thresholds of ``options.thresholds`` given
    for it, else its own; a model with neither writes null ``tags`` (no thresholds are
    made up). Raises ManifestError or TagError before any work, IncompleteRunError at the
    end when a model's output misses a row, holds one twice or holds tags its scores and
    thresholds do not give, and StorageUnreachableError (a TagError) when object storage
    stops answering mid-run even after the S3 clients' retries.
    """
    try:
        return _tag_catalogue(manifest_uri, model_uris, output, options or TagOptions())
    except (ManifestError, TagError):
        raise
    except Exception as error:
        reason = unreachable(error)
        if reason is None:
            raise
        raise StorageUnreachableError(
            f"object storage ({s3_endpoint() or 'AWS S3'}) stopped answering while tagging "
            f"{manifest_uri} into {output}, after {s3_max_attempts()} attempts per request "
            f"(AWS_MAX_ATTEMPTS): {reason}. What was written stays: once the storage answers, "
            "run the same command again and it resumes where this run stopped."
        ) from error


def _tag_catalogue(
    manifest_uri: str, model_uris: Sequence[str], output: str, options: TagOptions
) -> list[RunSummary]:
    started = time.time()
    manifest = open_manifest(manifest_uri)
    manifest = manifest.select(carried_columns(manifest, options.passthrough))
    threshold_files = options.threshold_files(model_uris)
    decided = [
        with_thresholds(resolve_model(uri), file)
        for uri, file in zip(model_uris, threshold_files, strict=True)
    ]
    models = [model for model, _ in decided]
    outputs = [model_output(output, model.name, model.version) for model in models]
    if not models:
        raise TagError("give each model once (one output folder per model name and version)")
    for i, model in enumerate(models):
        if outputs[i] in outputs[:i]:
            raise TagError(
                f"the same model twice, {model.name} version {model.version}: give each model "
                "once (one output folder per model name and version)"
            )
    columns = prediction_schema(manifest, options.embedding).names
    for out, (model, thresholds) in zip(outputs, decided, strict=True):
        check_output(out, model, thresholds, columns)
    # Each model's patch policy; models that share one share its patches.
    policies = list(
        dict.fromkeys(replace(m.audio, max_patches=options.max_patches) for m in models)
    )
    policy_of = [policies.index(replace(m.audio, max_patches=options.max_patches)) for m in models]
    earlier = [
        start_run(out, manifest, uri, model, thresholds, started)
        for out, uri, (model, thresholds) in zip(outputs, model_uris, decided, strict=True)
    ]

    unmatched, n_pending = pending_rows(manifest, outputs)
    sink = TagSink(outputs, policy_of, columns, options.rows_per_file)
    phases = {"plan_s": time.time() - started}
    if n_pending:
        cluster = ray.cluster_resources()
        options = options.resolved(cluster, _decode_node_cpus())
        steady_pool = not options.may_stall(cluster.get("CPU", 0))
        # Whole buckets per execution, so each bucket's copies of a track_id stay together.
        parts = min(-(-n_pending // options.rows_per_execution), bucket_count(manifest))
        for part in range(parts):
            if parts > 1:
                log.info("tagging part %d of %d of %d pending rows", part + 1, parts, n_pending)
            sink.part = part
            schema = manifest.normalised_schema
            rows = pending_part(unmatched, schema, len(outputs), part, parts)
            tag_rows(rows, sink, models, tuple(policies), policy_of, options, steady_pool)
    phases["tag_s"] = time.time() - started - phases["plan_s"]

    reports = [verify_manifest(manifest, out) for out in outputs]
    phases["verify_s"] = time.time() - started - phases["plan_s"] - phases["tag_s"]
    decoding = {**sink.decoding(), "models": [out.rsplit("/", 1)[-1] for out in outputs]}
    summaries = []
    for index, (out, uri, (model, thresholds), report) in enumerate(
        zip(outputs, model_uris, decided, reports, strict=True)
    ):
        written = sink.model_counts(index)
        attempt = attempt_record(started, written, decoding, options, phases)
        attempts = [*earlier[index], attempt]
        record = run_record(manifest, uri, model, thresholds, out, report, attempts)
        write_run(out, record)
        summaries.append(RunSummary(record=record, report=report))
    for report in reports:
        if not report.ok:
            raise IncompleteRunError(report)
    return summaries


def tag_rows(
    rows: ray.data.Dataset,
    sink: TagSink,
    models: list[LoadedModel],
    policies: tuple[AudioConfig, ...],
    policy_of: list[int],
    options: TagOptions,
    steady_pool: bool,
) -> None:
    """One Ray Data execution: decode (once for every model), tag and write ``rows``.

    With ``steady_pool`` the model pool starts at full size and never shrinks by
    utilisation, only when the inputs are done. With Ray Data's default (shrink at <= 0.5
    tasks in flight per actor) a pool lost an actor whenever decoding lagged for a moment
    and started a fresh process, loading the model again, seconds later
    (docs/benchmarks.md). Only where the layout leaves the 1-CPU split a whole CPU beside
    the full pool (not ``may_stall``): elsewhere the pool grows from one actor and
    shrinking is what lets the split run.
    """
    from raytag.models.inference import model_process_env

    if steady_pool:
        rows.context.autoscaling_config = replace(
            rows.context.autoscaling_config, actor_pool_util_downscaling_threshold=-1.0
        )
    decode, decode_pool = (
        (Decoder, ray.data.ActorPoolStrategy(size=options.decode_tasks))
        if options.decode_actors
        else (decode_batch, ray.data.TaskPoolStrategy(size=options.decode_tasks))
    )
    (
        rows.repartition(target_num_rows_per_block=options.decode_batch_size)
        .map_batches(
            decode,
            fn_kwargs={"policies": policies, "pcm16": options.pcm16},
            batch_size=options.decode_batch_size,
            batch_format="pyarrow",
            num_cpus=options.decode_cpus,
            memory=options.decode_memory_mb * 2**20,
            compute=decode_pool,
            label_selector=options.decode_label_selector,
        )
        .map_batches(
            TagPredictor,
            fn_constructor_kwargs={"models": models, "policy_of": policy_of, "options": options},
            batch_size=options.predict_batch_size,
            batch_format="pyarrow",
            # Ray Data's actor defaults (max_restarts=-1, max_task_retries=-1) replace a
            # dead actor and retry its batch on the replacement.
            compute=ray.data.ActorPoolStrategy(
                min_size=1,
                max_size=options.actors,
                initial_size=options.actors if steady_pool else 1,
            ),
            num_cpus=options.cpus_per_actor,
            num_gpus=1 if options.use_gpu else 0,
            label_selector=options.model_label_selector,
            runtime_env={"env_vars": model_process_env()},  # malloc keeps freed memory
        )
        .write_datasink(sink, ray_remote_args={"num_cpus": _WRITE_CPUS})
    )


def _decode_node_cpus() -> float:
    """CPUs of the live nodes labelled as the decode fleet."""
    return sum(
        node["Resources"].get("CPU", 0.0)
        for node in ray.nodes()
        if node["Alive"] and node.get("Labels", {}).get(ROLE_LABEL) == DECODE_ROLE
    )


def with_thresholds(model: LoadedModel, file: str | None) -> tuple[LoadedModel, dict[str, Any]]:
    """``model`` deciding its tags with the thresholds in ``file`` (None: its own), and
    the record of them for its folder's thresholds.json."""
    if file is None:
        source = NO_THRESHOLDS if model.thresholds is None else FROM_MODEL
        return model, thresholds_record(model.thresholds, model.vocabulary, source)
    try:
        thresholds = read_thresholds_file(file, model.vocabulary)
    except ValueError as error:
        raise TagError(f"--thresholds of {model.name} version {model.version}: {error}") from error
    record = thresholds_record(thresholds, model.vocabulary, FROM_FILE, file)
    return replace(model, thresholds=thresholds), record


def resolve_model(uri: str) -> LoadedModel:
    """``models:/NAME@ALIAS`` or ``runs:/ID/PATH`` through MLflow, anything else a folder."""
    if uri.startswith(("models:/", "runs:/")):
        from raytag import registry

        return registry.load(uri)
    from raytag.checkpoint import load_model

    return load_model(uri)
