"""The whole product on one machine (``raytag demo``, ``make demo``).

Starts a local MLflow server (mlflow/serve.sh: sqlite and local artifacts under the
workdir, on 127.0.0.1) and a local Ray; generates the labelled demo catalogue; trains a
CPU-sized model with Ray Train, evaluates it on the held-out split and registers it; makes
it ``@champion`` when none is, else compares it with the champion on the test split and
promotes it through the gate unless it is worse (refused, the champion stays and does the
tagging); imports musicnn's MTT tagger; tags the catalogue, real full-length music from a
Debian package and two deliberately broken inputs with the champion and musicnn in one
run of the Ray Data job; and returns a report, also written as report.json and
report.html. The terminal gets the demo's own lines; what Ray, Ray Data and MLflow
print goes to the workdir's demo.log. It calls the library, never the ``raytag`` command.

A second run reuses what exists: the catalogue (``synthesize`` is idempotent), a version
trained with the same settings on the same catalogue (its MLflow run carries a
fingerprint of them; ``retrain=True`` trains anew) and its comparison with the champion
(recorded on the version, so it is not compared again), the imported musicnn
and, with those, the tagging output (the tagging job resumes, so nothing is left to tag).
An interrupted training resumes from its last epoch checkpoint.

    run         the steps in order: services up, catalogue, model, promotion, musicnn,
                tagging, report
    settings    DemoSettings, the sizes and knobs a run is made with
    champion    train, evaluate and register the model, or reuse the matching version
    gate        compare it with the champion and promote it through the gate, or keep
                the champion
    pretrained  import musicnn-mtt into the demo's MLflow, or find it there
    tag         tag the catalogue, real music and broken inputs with both models
    report      DemoReport, written to report.json, and format_report, as a person reads it
    html        report.html: the report as a self-contained page
    progress    what the demo says while it runs
    logs        where everything else printed goes: demo.log
"""

from raytag.demo.champion import ALIAS, FINGERPRINT_TAG, REGISTERED_MODEL
from raytag.demo.report import ComparisonRecord, DemoReport, MetricChange, format_report
from raytag.demo.run import DEFAULT_WORKDIR, run_demo
from raytag.demo.settings import DemoSettings

__all__ = [
    "ALIAS",
    "DEFAULT_WORKDIR",
    "FINGERPRINT_TAG",
    "REGISTERED_MODEL",
    "ComparisonRecord",
    "DemoReport",
    "DemoSettings",
    "MetricChange",
    "format_report",
    "run_demo",
]
