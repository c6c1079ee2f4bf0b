"""musicnn's pretrained taggers, imported without TensorFlow, against the original.

The references in tests/fixtures/musicnn come from the original musicnn 0.1.0 on
TensorFlow (tools/musicnn_reference.py, run in a throwaway environment): per-patch and
per-track tag probabilities, penultimate features, and two log-mel patches of four
16 kHz FLAC excerpts of Debian music (see the folder's README.md).

The wheel comes from ``$RAYTAG_MUSICNN_WHEEL`` if set, else from the cache, where the
first run fetches it with ``pip download --no-deps`` (so PyPI must be reachable once).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from raytag import registry
from raytag.audio import decode, decode_patches
from raytag.cli import main
from raytag.config import AudioConfig
from raytag.evaluate import score_tracks
from raytag.importers.musicnn import (
    AUDIO,
    CheckpointError,
    check_wheel,
    ensure_wheel,
    load_musicnn,
    read_vocabulary,
)
from raytag.importers.tf_checkpoint import crc32c, read_index
from raytag.models.inference import predict_patches
from raytag.patching import patch_starts, split_patches, track_patches

FIXTURES = Path(__file__).parent / "fixtures" / "musicnn"
CLIPS = ("awakening", "media_threat", "nebula", "machine_wars")
CHECKPOINTS = ("MTT_musicnn", "MSD_musicnn")


@pytest.fixture(scope="session")
def musicnn_wheel() -> Path:
    wheel = os.environ.get("RAYTAG_MUSICNN_WHEEL")
    return check_wheel(wheel) if wheel else ensure_wheel()


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, np.ndarray], dict]:
    with np.load(FIXTURES / "reference.npz") as arrays:
        return dict(arrays), json.loads((FIXTURES / "reference.json").read_text())


@pytest.fixture(scope="module")
def models(musicnn_wheel: Path) -> dict[str, torch.nn.Module]:
    return {name: load_musicnn(musicnn_wheel, name) for name in CHECKPOINTS}


@pytest.fixture(scope="module")
def patches() -> dict[str, np.ndarray]:
    return {clip: decode_patches(str(FIXTURES / f"{clip}.flac"), AUDIO).patches for clip in CLIPS}


def test_every_tensor_is_mapped(models: dict, musicnn_wheel: Path) -> None:
    model = models["MTT_musicnn"]
    assert sum(p.numel() for p in model.parameters()) == 787_159
    assert model.config.n_tags == 50 and model.config.context_samples == 256
    # Batch-norm statistics came from the checkpoint, not PyTorch's defaults.
    assert not torch.equal(model.pool_bn.running_var, torch.ones_like(model.pool_bn.running_var))
    with zipfile.ZipFile(musicnn_wheel) as wheel:
        entries = read_index(wheel.read("musicnn/MTT_musicnn/.index"))
    weights = [e for e in entries.values() if "Adam" not in e.name and "_power" not in e.name]
    n_checkpoint = sum(int(np.prod(e.shape)) for e in weights)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("features.")}
    n_model = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert n_checkpoint == n_model  # 787,159 weights + 2 x 2,346 batch-norm statistics
    assert read_vocabulary(musicnn_wheel, "MTT_LABELS")[:3] == ["guitar", "classical", "slow"]


def test_patches_frame_like_musicnn(patches: dict, reference: tuple) -> None:
    _, record = reference
    for clip in CLIPS:
        n = record["models"]["MTT_musicnn"]["clips"][clip]["n_patches"]
        assert patches[clip].shape == (n, 47_872 + 2 * 256)
    # machine_wars is 100 samples short of 4 patches; musicnn's frames still give 4.
    assert patch_starts(4 * 47_872 - 100, 47_872, None).size == 3
    assert patch_starts(4 * 47_872 - 100, 47_872, None, context=256).size == 4


@pytest.mark.parametrize(("clip", "index"), [("awakening", 1), ("machine_wars", 3)])
def test_log_mel_matches_original(
    clip: str, index: int, models: dict, patches: dict, reference: tuple
) -> None:
    arrays, _ = reference
    with torch.inference_mode():
        ours = models["MTT_musicnn"].log_mel(torch.from_numpy(patches[clip][index : index + 1]))
    expected = arrays[f"logmel/{clip}/{index}"]
    assert ours.shape[1:] == expected.shape == (187, 96)
    # float16 rounding of the mel power can flip by one step: at most ~2e-4 in log10.
    np.testing.assert_allclose(ours[0].numpy(), expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_probabilities_match_original(
    checkpoint: str, models: dict, patches: dict, reference: tuple
) -> None:
    arrays, record = reference
    labels = record["models"][checkpoint]["labels"]
    for clip in CLIPS:
        scores, embedding = predict_patches(models[checkpoint], patches[clip])
        key = f"{checkpoint}/{clip}"
        np.testing.assert_allclose(scores, arrays[f"{key}/patch_probs"], rtol=0, atol=1e-4)
        track = scores.mean(axis=0)
        np.testing.assert_allclose(track, arrays[f"{key}/track_probs"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(embedding, arrays[f"{key}/penultimate"], rtol=0, atol=1e-3)
        top5 = [labels[i] for i in np.argsort(-track, kind="stable")[:5]]
        assert top5 == [tag for tag, _ in record["models"][checkpoint]["clips"][clip]["top5"]]


def test_registered_models_tag_like_the_original(
    mlflow_env: str, musicnn_wheel: Path, reference: tuple, tmp_path: Path
) -> None:
    arrays, record = reference
    experiment = f"musicnn-{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(
        main, ["import", "musicnn", "--wheel", str(musicnn_wheel), "--experiment", experiment]
    )
    assert result.exit_code == 0, result.output
    # MLflow prints its own lines ("View run ...") beside ours.
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["uri"] for line in lines] == [
        "models:/musicnn-mtt@champion",
        "models:/musicnn-msd@champion",
    ]

    clip = "machine_wars"
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(
        pa.table(
            {
                "track_id": [clip],
                "uri": [str(FIXTURES / f"{clip}.flac")],
                "tags": pa.array([["beat"]], pa.list_(pa.string())),
            }
        ),
        manifest,
    )
    for key, checkpoint in (("mtt", "MTT_musicnn"), ("msd", "MSD_musicnn")):
        loaded = registry.load(f"models:/musicnn-{key}@champion")
        assert loaded.name == f"musicnn-{key}"
        assert loaded.vocabulary == record["models"][checkpoint]["labels"]
        assert loaded.audio == AUDIO
        scores = score_tracks(loaded, str(manifest))
        assert scores.errors == [] and scores.track_ids == [clip]
        expected = arrays[f"{checkpoint}/{clip}/track_probs"]
        np.testing.assert_allclose(scores.y_score[0], expected, rtol=0, atol=1e-4)


def _checkpoint_copy(wheel: Path, folder: Path) -> Path:
    """An unpacked musicnn/ package with only MTT_musicnn, to damage."""
    with zipfile.ZipFile(wheel) as archive:
        for name in ("configuration.py", "MTT_musicnn/.index", "MTT_musicnn/.data-00000-of-00001"):
            target = folder / "musicnn" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(f"musicnn/{name}"))
    return folder / "musicnn"


def test_corrupted_checkpoints_are_rejected(musicnn_wheel: Path, tmp_path: Path) -> None:
    package = _checkpoint_copy(musicnn_wheel, tmp_path / "good")
    assert load_musicnn(tmp_path / "good", "MTT_musicnn").config.n_tags == 50  # a folder works
    entries = read_index((package / "MTT_musicnn/.index").read_bytes())

    bad = shutil.copytree(tmp_path / "good", tmp_path / "flipped")
    data = bad / "musicnn/MTT_musicnn/.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[entries["dense/kernel"].offset + 1000] ^= 0x01  # one bit of one weight
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="dense/kernel: CRC mismatch"):
        load_musicnn(bad, "MTT_musicnn")

    data.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated
    with pytest.raises(CheckpointError, match="does not fit the data file"):
        load_musicnn(bad, "MTT_musicnn")

    index = bad / "musicnn/MTT_musicnn/.index"
    raw = bytearray(index.read_bytes())
    raw[100] ^= 0x10
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="CRC mismatch"):
        load_musicnn(bad, "MTT_musicnn")
    index.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="bad table magic"):
        load_musicnn(bad, "MTT_musicnn")

    (package / "MTT_musicnn/.index").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_musicnn(tmp_path / "good", "MTT_musicnn")
    fake = tmp_path / WHEEL_FILE
    fake.write_bytes(b"PK")
    with pytest.raises(CheckpointError, match="SHA-256"):
        check_wheel(fake)
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


WHEEL_FILE = "musicnn-0.1.0-py3-none-any.whl"


def test_context_patches_are_track_windows() -> None:
    """Each patch is [start - context, start + core + context) of the track, zeros outside."""
    wave = np.arange(1, 1051, dtype=np.float32)
    out = split_patches(wave, 200, None, context=16)
    starts = patch_starts(wave.size, 200, None, context=16)
    assert out.shape == (len(starts), 232) and list(starts) == [0, 200, 400, 600, 800]
    padded = np.concatenate([np.zeros(16), wave, np.zeros(300)]).astype(np.float32)
    for row, start in zip(out, starts, strict=True):
        np.testing.assert_array_equal(row, padded[start : start + 232])
    short = split_patches(wave[:50], 200, None, context=16)
    assert short.shape == (1, 232) and short[0, 16:66].tolist() == wave[:50].tolist()
    np.testing.assert_array_equal(
        split_patches(wave, 200, 3, context=0), split_patches(wave, 200, 3)
    )
    config = AudioConfig(patch_seconds=0.5, min_seconds=0.5, context_samples=256)
    assert (config.core_samples, config.patch_samples) == (8000, 8512)
    assert AudioConfig.from_dict({"patch_seconds": 3.0}).context_samples == 0  # old JSON


def test_decoding_only_some_windows_keeps_the_context() -> None:
    """The K-window decode (seeking) and the whole-track decode cut the same patches."""
    uri = str(FIXTURES / "awakening.flac")
    audio = AudioConfig(patch_seconds=AUDIO.patch_seconds, context_samples=256, max_patches=3)
    windows = decode_patches(uri, audio).patches
    assert windows.shape == (3, audio.patch_samples)
    np.testing.assert_array_equal(windows, track_patches(decode(uri), audio))


@pytest.mark.parametrize("onednn", [True, False])
def test_fast_pooling_is_exactly_the_graph(
    models: dict, onednn: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eval pools before ReLU and BN (and in oneDNN's layout): the same numbers as
    conv -> ReLU -> BN -> max over frequency, the order of musicnn's graph."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", onednn)
    x = torch.randn(3, 1, 187, 96)
    with torch.inference_mode():
        for block in (*models["MSD_musicnn"].timbral, *models["MSD_musicnn"].temporal):
            padded = torch.nn.functional.pad(x, (0, 0, *block.time_pad))
            expected = block.bn(torch.relu(block.conv(padded))).amax(dim=3)
            torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-5)
