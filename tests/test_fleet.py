"""The decode fleet on a real multi-node Ray cluster on 127.0.0.1 (tests/fleet.py): every
decode on a node labelled raytag/role=decode, every forward pass on an "inference" node,
exactly once; and a decode node whose raylet is SIGKILLed mid-run loses nothing, whether
or not another decode node replaces it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from raytag.tagging import verify
from raytag.tagging.output import ERRORS, PREDICTIONS
from tests.test_tagging import keys, read_folder, tiny_model, tone, write_manifest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
N_TRACKS = 24


@pytest.fixture(scope="module")
def fleet_catalogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict], str]:
    """Short tones in two formats and one missing file: the manifest, its rows, a model."""
    root = tmp_path_factory.mktemp("fleet")
    (root / "audio").mkdir()
    rows = [
        {"track_id": f"t{i}", "uri": str(tone(root / "audio" / f"t{i}.{('wav', 'mp3')[i % 2]}",
                                              hz=220 + 20 * i, seconds=3))}
        for i in range(N_TRACKS)
    ]  # fmt: skip
    rows.append({"track_id": "missing", "uri": str(root / "audio" / "nowhere.wav")})
    return str(write_manifest(root / "manifest", rows)), rows, tiny_model(root / "model", "3")


def run_fleet(
    tmp_path: Path, manifest: str, model: str, kill: bool, replace_killed_node: bool = True
) -> dict:
    spec = {
        "manifest": manifest,
        "models": [model],
        "output": str(tmp_path / "tags"),
        "options": {"max_patches": 2, "decode_batch_size": 1, "predict_batch_size": 2,
                    "rows_per_file": 2},
        "kill_decode_node": kill,
        "replace_killed_node": replace_killed_node,
        "result": str(tmp_path / "result.json"),
    }  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    log = tmp_path / "fleet.log"
    command = [sys.executable, "-m", "tests.fleet", str(tmp_path / "spec.json")]
    # On Linux a driver given 127.0.0.1 dials the machine's outward address instead; with
    # this switch Ray keeps every node and the driver on loopback.
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    with log.open("w") as out:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=420)  # fmt: skip
    assert done.returncode == 0, log.read_text()[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["finished"] and "error" not in result, (result, log.read_text()[-4000:])
    return result


def assert_placed_and_exactly_once(result: dict, manifest: str, rows: list[dict]) -> dict:
    """Decodes on decode nodes, forward passes on inference nodes, every row once; the
    attempt's record."""
    roles = result["roles"]
    [record] = result["summaries"]
    output = record["output"]
    predictions, errors = read_folder(output, PREDICTIONS), read_folder(output, ERRORS)
    assert keys(predictions) + keys(errors) == Counter((r["track_id"], r["uri"]) for r in rows)
    assert errors["track_id"].to_pylist() == ["missing"]
    assert verify(manifest, output).ok and record["status"] == "complete"

    attempt = record["attempts"][-1]
    assert attempt["options"]["decode_on"] == "decode-nodes"
    per_node = attempt["decoding"]["rows_per_node"]
    # What the stages recorded: the node of every decode and of every forward pass.
    assert {roles[node] for node in per_node["decode_node"]} == {"decode"}
    assert {roles[node] for node in per_node["model_node"]} == {"inference"}
    assert sum(per_node["model_node"].values()) == len(rows) - 1
    # What Ray recorded: where each actor of the job lived.
    placed = {(a["class"], roles[a["node"]]) for a in result["actors"]}
    decoders = {role for cls, role in placed if "Decoder" in cls}
    models = {role for cls, role in placed if "TagPredictor" in cls}
    assert decoders == {"decode"} and models == {"inference"}, placed
    return attempt


def test_decoding_runs_on_the_decode_fleet_and_models_on_inference_nodes(
    fleet_catalogue, tmp_path
) -> None:
    manifest, rows, model = fleet_catalogue
    result = run_fleet(tmp_path, manifest, model, kill=False)
    attempt = assert_placed_and_exactly_once(result, manifest, rows)
    # Both decode nodes took part; each track decoded once (the missing file included).
    assert len(attempt["decoding"]["rows_per_node"]["decode_node"]) == 2
    assert attempt["decoding"]["tracks"] == len(rows)


@pytest.mark.parametrize("replaced", [True, False], ids=["replaced", "not-replaced"])
def test_a_decode_node_killed_mid_run_loses_nothing(fleet_catalogue, tmp_path, replaced) -> None:
    """Replaced: a fresh decode node joins, as an autoscaler brings one. Not replaced: the
    one decode node left finishes the run."""
    manifest, rows, model = fleet_catalogue
    result = run_fleet(tmp_path, manifest, model, kill=True, replace_killed_node=replaced)
    assert result["killed"], "the job ended before a decode node could be killed"
    assert result["roles"][result["killed"]] == "decode"
    attempt = assert_placed_and_exactly_once(result, manifest, rows)
    assert attempt["predictions"] == len(rows) - 1
