"""Models: the interface every model declares, exact parameter counts, the paper's shapes,
features against librosa, any-length inputs, the registry and track-level prediction."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import librosa
import numpy as np
import pytest
import ray
import torch

from raytag.config import AudioConfig
from raytag.models import (
    PRESETS,
    ModelConfig,
    TaggingModel,
    build_model,
    list_models,
    model_from_config,
)
from raytag.models.inference import (
    average_by_track,
    model_process_env,
    predict_patches,
    predict_track,
)
from raytag.patching import split_patches


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("spectrogram-small", {}), ("waveform-small", {}), ("musicnn", {"context_samples": 256})],
)
def test_every_model_family_is_a_tagging_model(name: str, overrides: dict) -> None:
    """Whatever the architecture, callers get the declared interface: encode -> head is
    embed, forward is its logits, and the config says the audio the model must be fed."""
    model = build_model(name, n_tags=5, **overrides).eval()
    assert isinstance(model, TaggingModel) and isinstance(model.config, ModelConfig)
    assert model.arch == type(model.config).arch == model.config_dict()["arch"]
    assert model.config.context_samples == overrides.get("context_samples", 0)
    samples = 3 * model.config.sample_rate + 2 * model.config.context_samples
    patches = torch.randn(2, samples)
    with torch.inference_mode():
        pooled = model.encode(patches)
        logits, embedding = model.head(pooled)
        assert pooled.ndim == 2 and pooled.shape[0] == 2
        assert logits.shape == (2, 5) and embedding.shape == (2, model.config.dense_units)
        embedded_logits, embedded = model.embed(patches)
        torch.testing.assert_close(embedded_logits, logits, rtol=0, atol=0)
        torch.testing.assert_close(embedded, embedding, rtol=0, atol=0)
        torch.testing.assert_close(model(patches), logits, rtol=0, atol=0)


def test_a_model_must_define_both_stages() -> None:
    class EncoderOnly(TaggingModel):
        def encode(self, waveform: torch.Tensor) -> torch.Tensor:
            return waveform

    with pytest.raises(TypeError, match="abstract"):
        EncoderOnly()


@pytest.mark.parametrize(
    ("name", "expected"), [("spectrogram", 5_926_198), ("waveform", 5_379_126)]
)
def test_parameter_counts_match_reference_for_50_tags(name: str, expected: int) -> None:
    assert n_params(build_model(name, n_tags=50)) == expected


def test_spectrogram_parameter_count_follows_num_filt_and_tags() -> None:
    base = n_params(build_model("spectrogram", n_tags=50))
    assert n_params(build_model("spectrogram", n_tags=51)) == base + 501
    assert n_params(build_model("spectrogram", num_filt=8)) < base


def test_waveform_front_end_shapes() -> None:
    frontend = build_model("waveform").frontend.eval()
    assert frontend(torch.randn(2, 48_000)).shape == (2, 256, 20)
    assert frontend(torch.randn(2, 59_049)).shape == (2, 256, 26)


def test_spectrogram_shapes_through_every_stage() -> None:
    model = build_model("spectrogram", n_tags=21).eval()
    logmel = model.features(torch.randn(2, 48_000))
    assert logmel.shape == (2, 1 + 48_000 // 256, 96)  # centred frames: 188 for 3 s
    frames = model.frontend(torch.randn(2, 187, 96))  # the paper's 187-frame patch
    assert frames.shape == (2, 464, 187)
    timbral = [block(torch.randn(2, 187, 96)).shape[1] for block in model.frontend.timbral]
    assert timbral == [16, 32, 64, 16, 32, 64]
    logits, embedding = model.backend(frames)
    assert logits.shape == (2, 21)
    assert embedding.shape == (2, 500)


@pytest.mark.parametrize("name", ["spectrogram-small", "waveform-small"])
@pytest.mark.parametrize("n_samples", [48_000, 59_049, 160_000])
def test_any_length_of_at_least_one_patch(name: str, n_samples: int) -> None:
    model = build_model(name, n_tags=7).eval()
    with torch.inference_mode():
        logits, embedding = model.embed(torch.randn(3, n_samples))
    assert logits.shape == (3, 7)
    assert embedding.shape == (3, model.config.dense_units)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["spectrogram-small", "waveform-small", "musicnn"])
def test_frozen_encoder_trains_only_the_head_and_keeps_its_statistics(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, n_tags=5)
    patches = torch.randn(4, 48_000)
    model.eval()
    with torch.inference_mode():
        before = model(patches)
    model.freeze_encoder()
    model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(patches), before, rtol=0, atol=0)

    head = {n for n, _ in model.named_parameters() for h in model.HEAD if n.startswith(h + ".")}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == head and head, trainable
    encoder_state = {k: v.clone() for k, v in model.state_dict().items()
                     if not any(k.startswith(h + ".") for h in model.HEAD)}  # fmt: skip
    head_bn = next(m for n, m in model.named_modules()
                   if n in model.HEAD and isinstance(m, torch.nn.BatchNorm1d))  # fmt: skip
    head_mean = head_bn.running_mean.clone()

    model.train()
    assert model.training and head_bn.training
    model(patches).sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == head
    for key, value in model.state_dict().items():
        if key in encoder_state:  # weights and batch-norm statistics alike
            assert torch.equal(value, encoder_state[key]), key
    assert not torch.equal(head_bn.running_mean, head_mean)  # the head's BN still learns


def test_registry_builds_every_preset_and_rejects_unknown() -> None:
    assert set(list_models()) >= {"spectrogram", "waveform"}
    for name in list_models():
        assert build_model(name, n_tags=3).eval()(torch.randn(1, 48_000)).shape == (1, 3)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet")
    with pytest.raises(TypeError):
        build_model("spectrogram", no_such_field=1)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_round_trips_through_json_and_rebuilds_same_model(name: str) -> None:
    model = build_model(name, n_tags=5).eval()
    config = json.loads(json.dumps(model.config_dict()))
    rebuilt = model_from_config(config).eval()
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 48_000)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_log_mel_matches_librosa() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(3 * 16_000) / 16_000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(t.size)
    wave = wave.astype(np.float32)
    power = librosa.feature.melspectrogram(
        y=wave,
        sr=16_000,
        n_fft=512,
        hop_length=256,
        n_mels=96,
        power=2.0,
        center=True,
        pad_mode="constant",
        htk=False,
        norm="slaney",
    )
    expected = np.log10(1 + 10_000 * power).T
    ours = build_model("spectrogram").features(torch.from_numpy(wave)[None])[0].numpy()
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)


def tone(midi_note: float, seconds: float = 3.0) -> torch.Tensor:
    t = torch.arange(int(seconds * 16_000)) / 16_000
    return 0.3 * torch.sin(2 * torch.pi * 440 * 2 ** ((midi_note - 69) / 12) * t)


def test_semitone_input_puts_each_note_in_its_own_band() -> None:
    model = build_model("spectrogram-small-semitone").eval()
    lowest = model.config.lowest_note
    notes = [lowest, lowest + 1, 60, 61, 69, 70, 100, lowest + model.config.n_mels - 1]
    bands = model.features(torch.stack([tone(n) for n in notes]))  # (notes, frames, bands)
    assert bands.shape[2] == model.config.n_mels
    loudest = bands[:, 20:-20].mean(dim=1).argmax(dim=1)
    assert loudest.tolist() == [n - lowest for n in notes]
    # a quarter tone sits between two bands, and each gets part of it
    between = model.features(tone(69.5)[None])[0, 20:-20].mean(dim=0)
    assert set(between.topk(2).indices.tolist()) == {69 - lowest, 70 - lowest}


def test_semitone_input_refuses_bands_it_cannot_fill() -> None:
    with pytest.raises(ValueError, match="Nyquist"):
        build_model("spectrogram-small-semitone", n_mels=72)
    with pytest.raises(ValueError, match=r"n_fft >= 2048") as refused:
        build_model("spectrogram-small-semitone", n_fft=512)
    assert "leaves the band of MIDI note" in str(refused.value)
    build_model("spectrogram-small-semitone", n_fft=512, lowest_note=72, n_mels=47)
    with pytest.raises(ValueError, match="unknown frequency_scale 'bark'"):
        build_model("spectrogram-small", frequency_scale="bark")


def test_log_gain_decides_where_a_level_change_becomes_an_offset() -> None:
    """Above the knee of log10(1 + gain * power), 20 dB less level is 2.0 less in every
    band; below it the feature falls towards 0 and the shape of a sound changes with level."""
    quiet, quieter = tone(69) / 30, tone(69) / 300  # about -40 and -60 dBFS
    drops = {}
    for gain in (10_000.0, 1e6):
        model = build_model("spectrogram-small-semitone", log_gain=gain).eval()
        band = 69 - model.config.lowest_note
        level = model.features(torch.stack([quiet, quieter]))[:, 20:-20, band].mean(dim=1)
        drops[gain] = float(level[0] - level[1])
    assert drops[1e6] == pytest.approx(2.0, abs=0.01)
    assert drops[10_000.0] < 1.8


def test_timbral_heights_set_the_filters_span_and_survive_a_json_round_trip() -> None:
    model = build_model("spectrogram-small-semitone", timbral_heights=(0.4, 0.2))
    spans = [block.conv.kernel_size for block in model.frontend.timbral]
    assert spans == [(7, 28), (3, 28), (1, 28), (7, 14), (3, 14), (1, 14)]
    rebuilt = model_from_config(json.loads(json.dumps(model.config_dict())))
    assert rebuilt.config == model.config
    with pytest.raises(ValueError, match="fractions of the bands"):
        build_model("spectrogram-small", timbral_heights=(0.9, 1.5))


def test_configs_saved_before_the_frequency_scale_and_log_gain_rebuild_the_mel_model() -> None:
    model = build_model("spectrogram-small", n_tags=5).eval()
    saved = model.config_dict()
    for field in ("frequency_scale", "lowest_note", "log_gain", "timbral_heights"):
        del saved[field]
    rebuilt = model_from_config(saved).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, 48_000)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_every_parameter_learns() -> None:
    """A few steps on a tiny batch: loss falls and every parameter gets a gradient."""
    torch.manual_seed(0)
    model = build_model("spectrogram-small", n_tags=4, dropout=0.0)
    x = torch.randn(8, 48_000)
    y = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]] * 4, dtype=torch.float32)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        losses.append(loss.item())
        optimiser.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0]


def test_average_by_track() -> None:
    values = np.arange(12, dtype=np.float32).reshape(6, 2)
    out = average_by_track(values, [1, 3, 2])
    np.testing.assert_allclose(out, [[0, 1], [4, 5], [9, 10]])
    with pytest.raises(ValueError):
        average_by_track(values, [2, 2])


def test_predict_track_averages_patch_sigmoids_and_embeddings() -> None:
    model = build_model("spectrogram-small", n_tags=6).eval()
    audio = AudioConfig(patch_seconds=1.0)
    wave = np.random.default_rng(1).standard_normal(16_000 * 5 + 123).astype(np.float32)
    prediction = predict_track(model, wave, audio, batch_size=2)
    assert prediction.n_patches == 5
    with torch.inference_mode():
        patches = torch.from_numpy(split_patches(wave, 16_000, None))
        logits, embedding = model.embed(patches)
    np.testing.assert_allclose(prediction.scores, torch.sigmoid(logits).mean(0), atol=1e-5)
    np.testing.assert_allclose(prediction.embedding, embedding.mean(0), atol=1e-4)
    assert ((prediction.scores >= 0) & (prediction.scores <= 1)).all()


def test_batching_does_not_change_predictions() -> None:
    model = build_model("waveform-small", n_tags=3).eval()
    patches = np.random.default_rng(2).standard_normal((5, 48_000)).astype(np.float32)
    one, emb_one = predict_patches(model, patches, batch_size=1)
    all_, emb_all = predict_patches(model, patches, batch_size=64)
    np.testing.assert_allclose(one, all_, atol=1e-5)
    np.testing.assert_allclose(emb_one, emb_all, atol=1e-4)


def test_long_track_policy_k_evenly_spaced() -> None:
    model = build_model("spectrogram-small", n_tags=2).eval()
    wave = np.zeros(16_000 * 60, dtype=np.float32)
    assert predict_track(model, wave, AudioConfig(max_patches=4)).n_patches == 4
    assert predict_track(model, wave, AudioConfig()).n_patches == 20
    short = np.ones(20_000, dtype=np.float32)
    assert predict_track(model, short, AudioConfig()).n_patches == 1


def test_bf16_autocast_on_cpu_only_when_asked() -> None:
    """CPU stays float32 unless ``on_cpu`` (--cpu-bf16): its outputs must not move silently."""
    from raytag.models.inference import bf16_autocast

    a, cpu = torch.ones(4, 4), torch.device("cpu")
    for kwargs, dtype in (({}, torch.float32), ({"on_cpu": True}, torch.bfloat16),
                          ({"bf16": False, "on_cpu": True}, torch.float32)):  # fmt: skip
        with bf16_autocast(cpu, **kwargs):
            assert (a @ a).dtype == dtype, kwargs


def _page_faults_of_reallocations_in_a_thread() -> int:
    """Page faults of 10 allocations of 40 MB (above glibc's largest mmap threshold), after
    10 to warm up, in a thread other than the main one, as Ray runs an actor's batches and
    a training loop. Warming up: the heap grows while Ray's own threads' small blocks
    land between the large ones, for the first 6-7 allocations here."""

    def reallocate() -> int:
        for _ in range(10):
            torch.ones(10 << 20)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            torch.ones(10 << 20)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(reallocate).result()


def test_model_processes_reuse_freed_memory_without_page_faults(ray_local: str) -> None:
    """A model process allocates the same tens of MB on every forward pass: started with
    model_process_env, Ray's worker keeps those pages instead of faulting fresh ones in."""
    faults = ray.remote(_page_faults_of_reallocations_in_a_thread)
    env = model_process_env({})
    plain = ray.get(faults.remote())
    reused = ray.get(faults.options(runtime_env={"env_vars": env}).remote())
    pages = 10 * (40 << 20) // resource.getpagesize()
    assert plain > pages / 2, (plain, reused)  # glibc's default: fresh pages each time
    assert reused < pages / 20, (plain, reused)  # the heap grows once, then is reused
    # An operator's own tunables stay, after raytag's (glibc applies them in order).
    mine = model_process_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    assert mine["GLIBC_TUNABLES"] == env["GLIBC_TUNABLES"] + ":glibc.malloc.arena_max=4"


_MAIN_THREAD_FAULTS = """
import resource, sys, torch
from raytag.models.inference import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(3):
    torch.ones(10 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(10 << 20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_a_running_process_keeps_freed_memory_for_its_main_thread() -> None:
    """``raytag evaluate`` runs forward passes in its own main thread: keep_freed_memory
    applies the model processes' malloc settings there, after start, through mallopt."""

    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", _MAIN_THREAD_FAULTS, mode],
            capture_output=True,
            text=True,
            check=True,
            env={k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"},
        ).stdout.split()
        return out[0], int(out[1])

    pages = 10 * (40 << 20) // resource.getpagesize()
    (_, plain), (applied, kept) = faults("plain"), faults("keep")
    assert applied == "True"  # glibc took every setting
    assert plain > pages / 2, (plain, kept)  # 40 MB blocks: fresh mmap'd pages each time
    assert kept < pages / 20, (plain, kept)  # the heap grows once, then is reused
