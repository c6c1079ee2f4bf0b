"""thresholds: per-tag decisions, stored with the model as plain JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raytag.checkpoint import META_FILE, load_model, save_model
from raytag.config import AudioConfig
from raytag.models import build_model
from raytag.thresholds import Thresholds, read_thresholds_file

VOCABULARY = ["guitar", "piano", "drums"]


def test_a_tag_is_assigned_at_or_above_its_threshold() -> None:
    thresholds = Thresholds([0.5, 0.2, 0.9])
    scores = np.array([[0.5, 0.1, 0.95], [0.49, 0.2, 0.0]])
    assert thresholds.tags(scores, VOCABULARY) == [["guitar", "drums"], ["piano"]]


def test_thresholds_travel_with_the_model_folder(tmp_path) -> None:
    policy = {"rule": "max_f1", "split": "valid"}
    thresholds = Thresholds([0.3, 0.4, 0.5], policy)
    model = build_model("spectrogram-small", n_tags=3)
    save_model(tmp_path, model, VOCABULARY, AudioConfig(), name="m", thresholds=thresholds)
    stored = json.loads((tmp_path / META_FILE).read_text())["thresholds"]
    assert stored == {"values": {"guitar": 0.3, "piano": 0.4, "drums": 0.5}, "policy": policy}
    assert load_model(tmp_path).thresholds == thresholds
    save_model(tmp_path / "plain", model, VOCABULARY, AudioConfig(), name="m")
    assert load_model(tmp_path / "plain").thresholds is None


def test_a_thresholds_file_must_name_exactly_the_vocabulary(tmp_path) -> None:
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"drums": 0.7, "guitar": 0.1, "piano": 0.2}))
    assert read_thresholds_file(path, VOCABULARY).values == (0.1, 0.2, 0.7)
    path.write_text(json.dumps({"guitar": 0.1, "piano": 0.2, "bass": 0.3}))
    with pytest.raises(ValueError, match=r"missing \['drums'\], unknown \['bass'\]"):
        read_thresholds_file(path, VOCABULARY)
    path.write_text(json.dumps({"guitar": "high", "piano": 0.2, "drums": 0.3}))
    with pytest.raises(ValueError, match="must be numbers"):
        read_thresholds_file(path, VOCABULARY)
    path.write_text("[0.1, 0.2, 0.3]")
    with pytest.raises(ValueError, match="map each tag"):
        read_thresholds_file(path, VOCABULARY)
