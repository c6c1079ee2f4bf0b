"""Tag a catalogue with Ray Data: Parquet manifest in, Parquet predictions and errors out.

One module per responsibility, each importing only the ones below it:

    pipeline    the job on one screen: read -> decode -> predict -> write -> verify
    options     TagOptions, every setting of a run, resolved against the cluster
    stages      the callables Ray Data maps: decode, model actor, sink
    record      _run.json: the run's attempts, counts and versions
    reconcile   pair the manifest with the output: pending rows, resume, verify
    output      the output layout and schemas, read and written by everything above
"""

from raytag.tagging.options import TagOptions
from raytag.tagging.output import StorageUnreachableError, TagError
from raytag.tagging.pipeline import tag_catalogue
from raytag.tagging.reconcile import IncompleteRunError, VerifyReport, verify
from raytag.tagging.record import RunSummary

__all__ = [
    "IncompleteRunError",
    "RunSummary",
    "StorageUnreachableError",
    "TagError",
    "TagOptions",
    "VerifyReport",
    "tag_catalogue",
    "verify",
]
