"""checkpoint: safetensors + JSON round trip, without pickle."""

from __future__ import annotations

import json

import pytest
import torch

from raytag.checkpoint import META_FILE, WEIGHTS_FILE, load_model, save_model
from raytag.config import AudioConfig
from raytag.models import build_model


@pytest.mark.parametrize("preset", ["waveform-small", "spectrogram-small-semitone"])
def test_round_trip_restores_identical_outputs(tmp_path, preset: str) -> None:
    model = build_model(preset, n_tags=3)
    model.train()(torch.randn(4, 48_000))  # move batch-norm statistics off their defaults
    model.eval()
    audio = AudioConfig(max_patches=8)
    save_model(tmp_path, model, ["a", "b", "c"], audio, name="demo", version="7")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([META_FILE, WEIGHTS_FILE])
    loaded = load_model(tmp_path)
    assert loaded.vocabulary == ["a", "b", "c"]
    assert loaded.audio == audio
    assert (loaded.name, loaded.version) == ("demo", "7")
    assert not loaded.model.training
    x = torch.randn(2, 48_000)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), model(x))


def test_vocabulary_must_match_outputs(tmp_path) -> None:
    with pytest.raises(ValueError, match="vocabulary"):
        save_model(
            tmp_path, build_model("spectrogram-small", n_tags=3), ["a"], AudioConfig(), name="x"
        )


def test_rejects_foreign_folders(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps({"format": "pickle"}))
    with pytest.raises(ValueError, match="unsupported format"):
        load_model(tmp_path)
