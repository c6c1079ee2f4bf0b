"""report.html: the demo's report as one self-contained page (inline CSS, the plots as
``data:`` URIs, no script, nothing fetched), rendered by Jinja2 with autoescaping, so
track names and tags from a catalogue are shown as text, never read as markup."""

from __future__ import annotations

import base64
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jinja2

from raytag.demo.report import (
    DemoReport,
    comparison_outcome,
    fmt,
    format_duration,
    model_status,
    thresholds_note,
)
from raytag.evaluate import PLOT_FILES

# Per-tag columns: (field of TagMetrics, heading); the decision columns only when the
# evaluation was made at thresholds.
AUC_COLUMNS = (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"))
DECISION_COLUMNS = (
    ("threshold", "Threshold"),
    ("n_assigned", "Assigned"),
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("f1", "F1"),
)
BAR_COLUMNS = frozenset({"roc_auc", "pr_auc", "precision", "recall", "f1"})  # drawn as bars
PLOT_TITLES = {
    "per_tag_roc_auc.png": "ROC-AUC per tag",
    "per_tag_pr_auc.png": "PR-AUC per tag",
    "roc_curves.png": "ROC curves",
    "pr_curves.png": "Precision-recall curves",
}


def write_html(report: DemoReport, path: str | Path) -> Path:
    """Render ``report`` to ``path`` (report.html)."""
    path = Path(path)
    path.write_text(render_html(report), encoding="utf-8")
    return path


def render_html(report: DemoReport) -> str:
    metrics = report.model.metrics
    plots_folder = Path(report.model.plots)
    plots = [(PLOT_TITLES.get(name, name), plots_folder / name) for name in PLOT_FILES]
    comparison_plots = [] if report.comparison is None else report.comparison.plots
    by_code = report.tagging.counts["errors_by_code"]
    context: dict[str, Any] = {
        "report": report,
        "metrics": metrics,
        "columns": AUC_COLUMNS + (DECISION_COLUMNS if metrics.at_thresholds else ()),
        "bar_columns": BAR_COLUMNS,
        "thresholds_note": thresholds_note,
        "model_status": model_status(report),
        "outcome": None if report.comparison is None else comparison_outcome(report.comparison),
        "plots": [(title, data_uri(p)) for title, p in plots if p.is_file()],
        "comparison_plots": [
            (Path(p).stem.replace("_", " "), data_uri(p))
            for p in comparison_plots
            if Path(p).is_file()
        ],  # fmt: skip
        "errors_by_code": ", ".join(f"{code} {n}" for code, n in by_code.items()) or "none",
        "timings": ", ".join(
            f"{step} {format_duration(seconds)}"
            for step, seconds in asdict(report.timings_s).items()
            if step != "total"
        ),
    }
    return _environment().from_string(TEMPLATE).render(context)


def data_uri(path: str | Path) -> str:
    """The PNG at ``path`` as a ``data:`` URI, so the page needs no other file."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = fmt
    env.filters["duration"] = format_duration
    env.filters["scores"] = lambda top: ", ".join(f"{t.tag} {t.score:.2f}" for t in top)
    return env


TEMPLATE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>raytag demo: {{ report.model.name }} version {{ report.model.version }}</title>
<style>
  :root { --ink: #1f2933; --muted: #616e7c; --line: #d9e2ec; --accent: #2f6fdb;
          --soft: #f0f4f8; --good: #2f9e5b; --chip: #e3edfc; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif;
         color: var(--ink); background: #fbfcfd; }
  main { max-width: 1100px; margin: 0 auto; padding: 24px 20px 48px; }
  h1 { font-size: 26px; margin: 0 0 4px; }
  h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px;
       border-bottom: 2px solid var(--line); }
  .muted { color: var(--muted); }
  .cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr));
           gap: 12px; margin-top: 16px; }
  .card { background: #fff; border: 1px solid var(--line); border-radius: 8px;
          padding: 12px 14px; }
  .card .value { font-size: 24px; font-weight: 600; }
  .card .label { color: var(--muted); font-size: 13px; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left;
           vertical-align: top; }
  th { background: var(--soft); font-weight: 600; font-size: 13px; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  tr.unscored td { color: var(--muted); }
  .bar { position: relative; min-width: 90px; }
  .bar span { position: absolute; left: 0; top: 4px; bottom: 4px; background: var(--chip);
              border-radius: 3px; z-index: 0; }
  .bar b { position: relative; z-index: 1; font-weight: 400; }
  .chip { display: inline-block; background: var(--chip); color: #163d7a;
          border-radius: 12px; padding: 0 9px; margin: 1px 2px; font-size: 13px; }
  .scores { color: var(--muted); font-size: 13px; }
  figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px;
           padding: 8px; }
  figure img { width: 100%; height: auto; display: block; }
  figcaption { color: var(--muted); font-size: 13px; text-align: center; }
  .plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr));
           gap: 14px; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; }
  dt { color: var(--muted); }
  dd { margin: 0; word-break: break-all; }
  code { font-size: 13px; }
</style>
</head>
<body>
<main>
<h1>raytag demo</h1>
<p class="muted">{{ report.catalogue.tracks }} labelled tracks, model
  <b>{{ report.model.name }} version {{ report.model.version }}</b>
  ({{ report.model.recipe }}, {{ report.model.epochs }} epochs, {{ model_status }}),
  done in {{ report.timings_s.total | duration }}.</p>

<div class="cards">
  <div class="card"><div class="value">{{ metrics.macro_roc_auc | fmt }}</div>
    <div class="label">macro ROC-AUC, test split ({{ metrics.n_tracks }} tracks)</div></div>
  <div class="card"><div class="value">{{ metrics.macro_pr_auc | fmt }}</div>
    <div class="label">macro PR-AUC ({{ metrics.n_tags_scored }} of {{ metrics.n_tags }}
      tags scored)</div></div>
  {% if metrics.at_thresholds %}
  <div class="card"><div class="value">{{ metrics.macro_f1 | fmt }}</div>
    <div class="label">macro F1 at the stored thresholds (precision
      {{ metrics.macro_precision | fmt }}, recall {{ metrics.macro_recall | fmt }})</div></div>
  {% endif %}
  <div class="card"><div class="value">{{ report.tagging.throughput.tracks_per_s | fmt(2) }}</div>
    <div class="label">tracks/s tagged on {{ report.ray.cpus }} CPUs</div></div>
</div>

{% if report.comparison %}{% set c = report.comparison %}
<section id="comparison">
<h2>Against the previous champion</h2>
<p>{{ c.baseline }} &rarr; {{ c.candidate }} on the same {{ c.n_tracks }} test tracks
  {%- if not c.compared_now %} (compared by an earlier run){% endif %}.
  <b>{{ outcome }}</b></p>
<table>
  <thead><tr><th>Figure</th><th>{{ c.baseline }}</th><th>{{ c.candidate }}</th>
    <th>Change</th><th>{{ "%.0f" | format(c.confidence_level * 100) }}% interval</th></tr>
  </thead>
  <tbody>
  {% for change in c.changes %}
  <tr><td>{{ change.metric }}</td><td class="num">{{ change.baseline | fmt }}</td>
    <td class="num">{{ change.candidate | fmt }}</td>
    <td class="num">{{ "n/a" if change.delta is none else "%+.3f" | format(change.delta) }}</td>
    <td class="num">{% if change.ci_low is not none and change.ci_high is not none %}
      {{ "%+.3f" | format(change.ci_low) }} .. {{ "%+.3f" | format(change.ci_high) }}
      {% endif %}</td></tr>
  {% endfor %}
  </tbody>
</table>
{% if c.agreement is not none %}
<p>The two models' decided tags agree on {{ "%.1f" | format(c.agreement * 100) }}% of
  track-tag pairs.</p>
{% endif %}
{% if c.run_url %}<p><a href="{{ c.run_url }}">The comparison run in MLflow</a></p>{% endif %}
{% if comparison_plots %}
<div class="plots">
  {% for title, uri in comparison_plots %}
  <figure><img src="{{ uri }}" alt="{{ title }}"><figcaption>{{ title }}</figcaption></figure>
  {% endfor %}
</div>
{% endif %}
</section>
{% endif %}

<section>
<h2>Per tag, on the held-out test split</h2>
<table id="per-tag">
  <thead><tr><th>Tag</th><th>Positives</th>
    {% for key, label in columns %}<th>{{ label }}</th>{% endfor %}</tr></thead>
  <tbody>
  {% for row in metrics.per_tag %}
  <tr data-tag="{{ row.tag }}"{% if row.reason %} class="unscored"{% endif %}>
    <td>{{ row.tag }}
      {%- if row.reason %} <span class="muted">({{ row.reason }})</span>{% endif %}</td>
    <td class="num">{{ row.n_positive }}</td>
    {% for key, label in columns %}{% set value = row[key] %}
    {% if key in bar_columns and value is not none %}
    <td class="num bar"><span style="width: {{ "%.1f" | format(value * 100) }}%"></span>
      <b>{{ value | fmt }}</b></td>
    {% elif key == "n_assigned" %}
    <td class="num">{{ "" if value is none else value }}</td>
    {% else %}
    <td class="num">{{ value | fmt }}</td>
    {% endif %}{% endfor %}
  </tr>
  {% endfor %}
  </tbody>
</table>
</section>

<section>
<h2>Plots</h2>
<div class="plots">
  {% for title, uri in plots %}
  <figure><img src="{{ uri }}" alt="{{ title }}"><figcaption>{{ title }}</figcaption></figure>
  {% endfor %}
</div>
</section>

<section>
<h2>Real music</h2>
<p class="muted">Full-length, openly licensed tracks from Debian packages, at most
  {{ report.tagging.max_patches }} patches per track. Chips are the tags each model
  decides at its stored thresholds; below them, its highest scores.</p>
<table id="real-music">
  <thead><tr><th>Track</th>
    {% for tagger in report.tagging.models %}
    <th>{{ tagger.label }}<br>
      <span class="muted">{{ thresholds_note(tagger) }}</span></th>
    {% endfor %}</tr></thead>
  <tbody>
  {% for track in report.tagging.real_tracks %}
  <tr><td>{{ track.track_id.removeprefix("real/") }}<br>
      <span class="muted">{{ track.duration_s | duration }}</span></td>
    {% for tags in track.by_model %}
    <td>{% if tags.decided is not none %}
      {%- for decided in tags.decided %}
      <span class="chip" title="score {{ "%.2f" | format(decided.score) }}">{{ decided.tag }}</span>
      {%- else %}<span class="muted">none above its threshold</span>{% endfor %}<br>
      {%- endif %}
      <span class="scores">{{ tags.top[:5] | scores }}</span></td>
    {% endfor %}
  </tr>
  {% else %}
  <tr><td colspan="{{ report.tagging.models | length + 1 }}">No real tracks found
    (make setup installs singularity-music).</td></tr>
  {% endfor %}
  </tbody>
</table>
{% if report.pretrained is none %}
<p class="muted">musicnn-mtt was not at hand (make setup caches its wheel), so only the
  demo's model tagged the real music.</p>
{% endif %}
</section>

<section>
<h2>Tagging run</h2>
{% set counts = report.tagging.counts %}
<p>{{ counts.manifest_rows }} manifest rows = {{ counts.predictions }} predictions +
  {{ counts.errors }} errors ({{ errors_by_code }})
  for each of {{ report.tagging.models | length }} models, each track decoded once:
  <b>{{ "every row exactly once" if report.tagging.exactly_once else "INCOMPLETE" }}</b>.</p>
</section>

<section>
<h2>Where things are</h2>
<dl>
  {% for label, url in [("MLflow run", report.model.run_url),
                        ("Model version", report.model.model_url)] %}
  <dt>{{ label }}</dt><dd><a href="{{ url }}">{{ url }}</a></dd>
  {% endfor %}
  <dt>MLflow UI</dt><dd>{% if report.mlflow.running %}running at {{ report.mlflow.uri }}
    (stop: <code>{{ report.mlflow.stop }}</code>){% else %}stopped; to browse:
    <code>{{ report.mlflow.restart }}</code>{% endif %}</dd>
  {% for tagger in report.tagging.models %}
  <dt>{{ tagger.label }}</dt><dd><code>{{ tagger.output }}</code></dd>
  {% endfor %}
  <dt>Catalogue</dt><dd><code>{{ report.catalogue.manifest }}</code></dd>
  <dt>Logs</dt><dd><code>{{ report.log_path }}</code></dd>
  <dt>report.json</dt><dd><code>{{ report.report_path }}</code></dd>
  <dt>Timings</dt><dd>{{ timings }}</dd>
</dl>
</section>
</main>
</body>
</html>
"""
