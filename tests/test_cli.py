"""The `raytag` command as a user runs it: a real subprocess of the installed script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

SINGULARITY = Path("/usr/share/games/singularity/music")


def raytag(*args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("raytag") or str(Path(sys.executable).parent / "raytag")
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=120)


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
