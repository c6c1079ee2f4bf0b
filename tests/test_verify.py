"""A tagging run's final verify failing for real: an output that does not account for its
manifest ends the run in IncompleteRunError, and `raytag tag` and `raytag verify` exit 1
saying what is wrong, naming the rows. One tiny run (four short tones, one missing file,
an untrained model) on the session's Ray; each test damages its own copy of it."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from click.testing import CliRunner

from raytag.checkpoint import save_model
from raytag.cli import main
from raytag.config import AudioConfig
from raytag.models import build_model
from raytag.tagging import IncompleteRunError, TagOptions, tag_catalogue
from raytag.tagging.output import ERRORS, PREDICTIONS, output_files
from tests.test_cli import exits
from tests.test_tagging import few_footer_readers  # noqa: F401  (autouse: fast Parquet reads)

RATE = 16_000
OPTIONS = TagOptions(max_patches=1, rows_per_file=2)
OPTION_FLAGS = ["--max-patches", "1", "--rows-per-file", "2"]  # OPTIONS, as `raytag tag` takes them


@dataclass(frozen=True)
class Run:
    manifest: str
    model: str
    output: Path  # the run's --output
    folder: Path  # the model's folder in it


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, ray_local: str) -> Run:
    """Four tones and a missing file, tagged by an untrained model without thresholds."""
    root = tmp_path_factory.mktemp("verify")
    seconds = np.arange(int(3.5 * RATE)) / RATE
    rows = []
    for i in range(4):
        path = root / f"tone{i}.wav"
        sf.write(path, 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * seconds), RATE)
        rows.append({"track_id": f"tone{i}", "uri": str(path)})
    rows.append({"track_id": "missing", "uri": str(root / "nowhere.wav")})
    manifest = root / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    model = save_model(root / "model", build_model("spectrogram-small", n_tags=3),
                       ["a", "b", "c"], AudioConfig(), name="tiny", version="1")  # fmt: skip
    [summary] = tag_catalogue(str(manifest), [str(model)], str(root / "tags"), OPTIONS)
    assert summary.report.ok, summary.report.describe()
    return Run(str(manifest), str(model), root / "tags", Path(summary.record["output"]))


def copy_of(run: Run, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run's output to damage, and its model folder."""
    output = tmp_path / "tags"
    shutil.copytree(run.output, output)
    return output, output / run.folder.name


def test_a_rerun_whose_final_verify_fails_raises_incomplete_run_error(run, tmp_path) -> None:
    """Tags the model cannot have given (it has no thresholds, so its rows' tags are
    null): the rerun finds nothing to tag, its final verify fails, the run is recorded
    incomplete and ends in IncompleteRunError; `raytag tag` exits 1 with the report."""
    output, folder = copy_of(run, tmp_path)
    first = output_files(str(folder), PREDICTIONS)[0]
    table = pq.read_table(first)
    made_up = pa.array([["a"]] * len(table), pa.list_(pa.string()))
    pq.write_table(table.set_column(table.schema.get_field_index("tags"), "tags", made_up), first)

    with pytest.raises(IncompleteRunError) as failed:
        tag_catalogue(run.manifest, [run.model], str(output), OPTIONS)
    report = failed.value.report
    assert (report.missing, report.surplus, report.wrong_tags) == (0, 0, len(table))
    assert str(failed.value) == report.describe()
    assert (
        f"{len(table)} prediction row(s) whose tags are not those their scores and "
        "thresholds.json give" in report.describe()
    )
    record = json.loads((folder / "_run.json").read_text())
    assert record["status"] == "incomplete"
    assert record["attempts"][-1]["predictions"] == record["attempts"][-1]["errors"] == 0

    result = CliRunner().invoke(main, ["tag", "--manifest", run.manifest, "--model", run.model,
                                       "--output", str(output), *OPTION_FLAGS])  # fmt: skip
    exits(result, 1, f"Error: {report.describe()}")


def test_verify_exits_1_naming_the_missing_and_the_duplicated_rows(run, tmp_path) -> None:
    """A prediction file written twice and an error file lost: `raytag verify` counts
    both and names each row, with the side it is on."""
    output, folder = copy_of(run, tmp_path)
    written = output_files(str(folder), PREDICTIONS)[0]
    shutil.copy(written, written.replace(".parquet", "-again.parquet"))
    twice = pq.read_table(written, columns=["track_id", "uri"]).to_pylist()
    [lost_file] = output_files(str(folder), ERRORS)
    lost = pq.read_table(lost_file, columns=["track_id", "uri"]).to_pylist()
    os.remove(lost_file)
    assert len(twice) + len(lost) <= 5  # the rows verify names, at most

    result = CliRunner().invoke(main, ["verify", "--manifest", run.manifest, "--output",
                                       str(output)])  # fmt: skip
    exits(result, 1, f"{folder}: 5 manifest rows, {4 + len(twice)} predictions, 0 errors: "
                     f"{len(lost)} missing, {len(twice)} surplus (e.g. ")  # fmt: skip
    for side, rows in (("prediction", twice), ("manifest", lost)):
        for row in rows:
            assert f"{side} {row['track_id']!r} {row['uri']!r}" in result.output, row


def test_verify_exits_1_on_a_missing_manifest_or_an_output_without_a_run(run, tmp_path) -> None:
    verify = CliRunner().invoke
    missing = tmp_path / "nowhere.parquet"
    no_manifest = verify(main, ["verify", "--manifest", str(missing), "--output", str(run.output)])
    exits(no_manifest, 1, f"Error: manifest {missing} not found")
    no_run = verify(main, ["verify", "--manifest", run.manifest, "--output", str(tmp_path)])
    exits(no_run, 1, f"Error: {tmp_path} holds no tagging run")
