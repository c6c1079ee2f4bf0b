"""The `raytag` command as a user runs it (a real subprocess of the installed script), and
the options generated from the settings dataclasses, parsed without running anything."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from raytag.catalogue import VOCABULARY
from raytag.checkpoint import save_model
from raytag.cli import main, tag_command, train_command
from raytag.config import AudioConfig
from raytag.models import build_model
from raytag.settings import (
    SettingsCommand,
    add_arguments,
    build,
    json_pairs,
    none_if_zero,
    options,
    setting,
)
from raytag.tagging import TagOptions
from raytag.train import TrainConfig

SINGULARITY = Path("/usr/share/games/singularity/music")


def raytag(*args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("raytag") or str(Path(sys.executable).parent / "raytag")
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=120)


def exits(result: Result, code: int, message: str) -> None:
    """The command ended with ``code``, saying ``message``: an error it reports, not an
    exception it let through (which CliRunner reports as exit code 1 too)."""
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code and message in result.output, result.output


def test_help_lists_commands() -> None:
    out = raytag("--help")
    assert out.returncode == 0
    for command in ("models", "decode"):
        assert command in out.stdout


def test_models_prints_reference_parameter_counts() -> None:
    out = raytag("models", "--n-tags", "50")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert "5,926,198" in lines["spectrogram"]
    assert "5,379,126" in lines["waveform"]
    # the columns line up whatever the longest preset name
    arch_columns = {line.index(line.split()[1], len(name)) for name, line in lines.items()}
    assert len(arch_columns) == 1


def test_decode_reports_patches_and_error_codes(tmp_path: Path) -> None:
    music = sorted(SINGULARITY.glob("*.ogg"))[0]
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"not audio at all" * 100)
    out = raytag(
        "decode", str(music), str(corrupt), str(tmp_path / "missing.wav"), "--max-patches", "4"
    )
    assert out.returncode == 1  # some inputs failed
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert records[0]["n_patches"] == 4 and records[0]["duration_s"] > 60
    assert [r.get("error_code") for r in records[1:]] == ["undecodable", "not_found"]


def test_catalogue_synth_then_check(tmp_path: Path) -> None:
    out = tmp_path / "catalogue"
    synth = raytag("catalogue", "synth", str(out), "--tracks", "3", "--duration", "3",
                   "--splits", "1,0,0")  # fmt: skip
    assert synth.returncode == 0, synth.stderr
    assert synth.stdout.strip() == str(out / "manifest.parquet")
    check = raytag("catalogue", "check", str(out))
    assert check.returncode == 0, check.stderr
    (out / "midi" / sorted(p.name for p in (out / "midi").iterdir())[0]).write_bytes(b"MThd")
    broken = raytag("catalogue", "check", str(out))
    assert broken.returncode == 1
    assert "MIDI unreadable" in broken.stderr


# -- options generated from the settings dataclasses (raytag.settings) -----------------------


@dataclass(frozen=True)
class Knobs:
    """Every kind of field the generator turns into an option."""

    source: str = setting(help="Required: no default.")
    count: int = setting(4, "An int.")
    limit: int | None = setting(8, "0 on the command line: None.", parse=none_if_zero)
    ratio: float | None = setting(None, "Automatic when unset.")
    loud: bool = setting(False, "A switch.")
    use_gpu: bool | None = setting(None, "Three states.", flag="--gpu")
    extra: dict[str, Any] = setting(factory=dict, help="Pairs.", parse=json_pairs, multiple=True)


KNOB_LINES = {  # command line -> the Knobs it gives
    "--source s": Knobs("s"),
    "--source s --count 2 --limit 0 --ratio 0.5 --loud --no-gpu": Knobs(
        "s", count=2, limit=None, ratio=0.5, loud=True, use_gpu=False
    ),
    "--source s --gpu --no-loud --extra n=3 --extra name=x --extra xs=[1,2]": Knobs(
        "s", use_gpu=True, extra={"n": 3, "name": "x", "xs": [1, 2]}
    ),
}


def knobs_command() -> click.Command:
    @click.command(cls=SettingsCommand, settings=f"{__name__}:Knobs")
    def command(**given: Any) -> None:
        click.echo(repr(build(Knobs, given)))

    return command


@pytest.mark.parametrize("line", KNOB_LINES)
def test_click_and_argparse_options_parse_to_the_same_settings(line: str) -> None:
    clicked = knobs_command().make_context("knobs", line.split()).params
    parser = argparse.ArgumentParser()
    add_arguments(parser, Knobs)
    assert build(Knobs, clicked) == build(Knobs, vars(parser.parse_args(line.split())))
    assert build(Knobs, clicked) == KNOB_LINES[line]


def test_generated_options_refuse_what_the_fields_refuse() -> None:
    runner = CliRunner()
    missing = runner.invoke(knobs_command(), ["--count", "2"])
    assert missing.exit_code == 2 and "Missing option '--source'" in missing.output
    bad_pair = runner.invoke(knobs_command(), ["--source", "s", "--extra", "novalue"])
    assert bad_pair.exit_code == 2 and "'novalue' is not key=value" in bad_pair.output
    assert runner.invoke(knobs_command(), ["--source", "s", "--count", "x"]).exit_code == 2

    @dataclass(frozen=True)
    class Unparsable:
        shape: tuple[int, ...] = setting((1,), "No text form without a parse.")

    with pytest.raises(TypeError, match="needs a parse"):
        options(Unparsable)
    with pytest.raises(TypeError, match="no fields"):
        options(Knobs, defaults={"cuont": 3})


def test_argparse_defaults_can_differ_from_the_fields() -> None:
    """What bench scripts do: the same options, another default where their benchmark needs it."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, Knobs, exclude=["source"], defaults={"count": 16, "use_gpu": False})
    given = vars(parser.parse_args([]))
    assert "source" not in given
    assert build(Knobs, given, source="s") == Knobs("s", count=16, use_gpu=False)


def option_names(help_text: str) -> list[str]:
    """Every --option a --help lists (both halves of a switch), not those its texts name."""
    listed = re.findall(r"^  (?:-\w, )?(--[\w-]+)(?: / (--[\w-]+))?", help_text, re.MULTILINE)
    return [name for names in listed for name in names if name]


def field_options(settings: type) -> list[str]:
    """The --options of a dataclass's fields (both halves of a switch)."""
    halves = [
        [o.flag, f"--no-{o.flag[2:]}"] if o.kind is bool else [o.flag] for o in options(settings)
    ]
    return [name for names in halves for name in names]


INPUTS = {  # the options of a command that are not fields of its settings
    "tag": ["--manifest", "--model", "--output", "--ray-address"],
    "train": ["--experiment", "--registered-model", "--alias", "--ray-address"],
}


@pytest.mark.parametrize(("command", "settings"), [("tag", TagOptions), ("train", TrainConfig)])
def test_help_lists_each_field_once(command: str, settings: type) -> None:
    listed = option_names(CliRunner().invoke(main, [command, "--help"]).output)
    assert sorted(listed) == sorted(field_options(settings) + INPUTS[command] + ["--help"])


def test_tag_command_line_gives_tag_options() -> None:
    def parse(*args: str) -> TagOptions:
        line = ["--manifest", "m", "--model", "x", "--output", "o", *args]
        return build(TagOptions, tag_command.make_context("tag", line).params)

    assert parse() == TagOptions()
    assert parse("--max-patches", "0").max_patches is None  # 0: every patch
    assert parse("--no-bf16", "--gpu", "--decode-tasks", "3", "--cpus-per-actor", "0.5") == (
        TagOptions(bf16=False, use_gpu=True, decode_tasks=3, cpus_per_actor=0.5)
    )
    assert parse("--thresholds", "a.json", "--thresholds", "m=b.json").thresholds == (
        "a.json", "m=b.json")  # fmt: skip
    assert parse("--passthrough", "title, artist").passthrough == ("title", "artist")
    assert parse("--passthrough", "").passthrough == ()  # track_id and uri only
    assert parse().passthrough is None  # every column


def test_train_command_line_gives_train_config(tmp_path: Path) -> None:
    def parse(*args: str) -> TrainConfig:
        return build(TrainConfig, train_command.make_context("train", [*args]).params)

    assert parse("--manifest", "m") == TrainConfig("m")
    vocabulary = tmp_path / "tags.json"
    vocabulary.write_text('["b", "a"]')
    assert parse(
        "--manifest", "m", "--set", "dropout=0.1", "--vocabulary", str(vocabulary),
        "--no-cache-decoded", "--no-gpu", "--epochs", "2",
    ) == TrainConfig(
        "m", model_overrides={"dropout": 0.1}, vocabulary=("b", "a"), cache_decoded=False,
        use_gpu=False, epochs=2,
    )  # fmt: skip
    assert parse("--manifest", "m", "--vocabulary", "demo").vocabulary == VOCABULARY


def test_every_ray_command_joins_the_cluster_the_same_way() -> None:
    context = click.Context(main)
    shared = {
        name: next(p for p in command.get_params(context) if p.name == "ray_address")
        for name, command in main.commands.items()
        if name in ("tag", "train", "verify")
    }
    assert len(shared) == 3
    assert len({(p.opts[0], p.envvar, p.help) for p in shared.values()}) == 1


# -- error exits: 2 for what parsing refuses, 1 for what the command finds wrong -------------


def test_tag_exits_with_a_message_on_bad_options_and_missing_inputs(
    tmp_path: Path, ray_local: str
) -> None:
    """Bad options are refused while parsing; a manifest or a model that is not there is
    reported before anything is written."""
    manifest, output = tmp_path / "manifest.parquet", tmp_path / "tags"
    pq.write_table(pa.table({"track_id": ["a"], "uri": [str(tmp_path / "a.wav")]}), manifest)
    tiny = build_model("waveform-small", n_tags=2)
    model = save_model(tmp_path / "model", tiny, ["x", "y"], AudioConfig(), name="tiny")

    def tag(*args: str | Path, manifest: Path = manifest, model: Path = model) -> Result:
        line = ["tag", "--manifest", manifest, "--model", model, "--output", output, *args]
        return CliRunner().invoke(main, [str(arg) for arg in line])

    no_model = CliRunner().invoke(main, ["tag", "--manifest", str(manifest), "--output", "o"])
    exits(no_model, 2, "Missing option '--model'")
    exits(tag("--actors", "0"), 2, "Invalid value: actors must be None (automatic) or >= 1")
    exits(tag("--decode-on", "gpu-nodes"), 2, "decode_on must be one of auto, decode-nodes")
    exits(tag("--max-patches", "some"), 2, "'some' is not a valid integer")
    missing = tmp_path / "nowhere.parquet"
    exits(tag(manifest=missing), 1, f"Error: manifest {missing} not found")
    no_folder = tmp_path / "no-model"
    exits(tag(model=no_folder), 1, f"Error: {no_folder} is not a raytag model folder")
    assert not output.exists()


def test_import_musicnn_exits_with_a_message_on_a_bad_source_or_name(tmp_path: Path) -> None:
    """Neither MLflow nor the network is reached: each source is refused first."""
    impostor = tmp_path / "musicnn-0.1.0-py3-none-any.whl"
    impostor.write_bytes(b"not musicnn's wheel")
    empty, kept = tmp_path / "empty", tmp_path / "models"
    empty.mkdir()

    def import_musicnn(*args: str | Path) -> Result:
        line = ["import", "musicnn", *args, "--no-register", "--out", kept]
        return CliRunner().invoke(main, [str(arg) for arg in line])

    gone = tmp_path / "gone.whl"
    exits(import_musicnn("--wheel", impostor), 1, f"Error: {impostor}: SHA-256 ")
    exits(import_musicnn("--wheel", empty), 1, f"Error: {empty}: no musicnn wheel or package here")
    exits(import_musicnn("--wheel", gone), 2, f"'--wheel': Path '{gone}' does not exist")
    unknown = import_musicnn("--wheel", empty, "--model", "mxx")
    exits(unknown, 2, "Invalid value for '--model': 'mxx' is not one of 'mtt', 'msd'")
    no_out = CliRunner().invoke(main, ["import", "musicnn", "--wheel", str(empty), "--no-register"])
    exits(no_out, 2, "--no-register needs --out to keep the model folders")
    assert not kept.exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--set", "colour=1"), "with {'colour': 1}: SpectrogramConfig.__init__() got an unexp"),
        (("--set", "dropout=high"), "cannot build model 'spectrogram-small' with {'dropout': 'hi"),
        (("--set", "dropout"), "Invalid value for --set: 'dropout' is not key=value"),
        (("--epochs", "0"), "epochs must be >= 1 (got 0)"),
        (("--num-workers", "0"), "num_workers must be >= 1 (got 0)"),
        (("--learning-rate", "0"), "learning_rate must be > 0 (got 0.0)"),
        (("--lr-decay-factor", "1"), "lr_decay_factor must be in (0, 1) (got 1.0)"),
        (("--max-failures", "-2"), "max_failures must be >= -1 (got -2)"),
    ],
    ids=[
        "unknown-setting",
        "badly-typed-setting",
        "no-value",
        "no-epoch",
        "no-worker",
        "learning-rate",
        "decay",
        "max-failures",
    ],
)
def test_train_refuses_what_it_cannot_run_before_any_work(
    option: tuple[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo in --set, or a value the run could only fail with later (no epoch: no
    checkpoint), is a usage error, before MLflow or Ray is reached."""
    tracking = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tracking}")
    runs = tmp_path / "runs"
    line = ["train", "--manifest", "m.parquet", "--storage-path", str(runs), *option]
    exits(CliRunner().invoke(main, line), 2, message)
    assert not tracking.exists() and not runs.exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--epochs", "0"), "epochs must be >= 1 (got 0)"),
        (("--tracks", "4"), "n_tracks must be >= 16 (got 4)"),
        (("--duration", "1"), "duration_s must be in [2, 600] seconds (got 1)"),
        (("--real-tracks", "-1"), "real_tracks must be >= 0 (got -1)"),
    ],
    ids=["epochs", "tracks", "duration", "real-tracks"],
)
def test_demo_refuses_a_value_of_no_use_before_starting_anything(
    option: tuple[str, str], message: str, tmp_path: Path
) -> None:
    """`raytag demo --epochs 0` would otherwise render a catalogue and start MLflow and
    Ray, to end in "training produced no checkpoint"."""
    workdir = tmp_path / "demo"
    line = ["demo", "--workdir", str(workdir), *option]
    exits(CliRunner().invoke(main, line), 2, message)
    assert not workdir.exists()
