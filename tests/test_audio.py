"""audio: real files made with ffmpeg/soundfile, real Debian music and a real S3 server.

Generated media are cached per session: the 20-minute OGG costs about a second to make.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from raytag.audio import (
    AudioError,
    AudioErrorCode,
    DecodedTrack,
    decode,
    decode_patches,
    decode_policies,
    decode_random_patches,
    decode_track,
    patch_starts,
)
from raytag.config import AudioConfig
from raytag.importers.musicnn import AUDIO as MUSICNN
from raytag.patching import split_patches
from raytag.storage import filesystem

SR = 16_000
SINGULARITY_OGG = Path("/usr/share/games/singularity/music/A New Journey.ogg")
ASC_MP3 = Path("/usr/share/games/asc/music/machine_wars.mp3")
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}
CHIRP = "aevalsrc='0.5*sin(2*PI*(200*t+0.2*t*t))':s=8000:d={seconds}"  # 200 Hz rising


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """make(name, *ffmpeg_args) -> path, generated once per session."""
    root = tmp_path_factory.mktemp("media")

    def make(name: str, *args: str | Path) -> Path:
        path = root / name
        if not path.exists():
            ffmpeg(*args, path)
        return path

    return make


def sine_args(rate: int, channels: int, seconds: float = 2.0, freq: int = 440) -> list[str]:
    """A sine on every channel (pan), so the downmix must keep it whatever the layout."""
    pan = f"pan={LAYOUTS[channels]}|" + "|".join(f"c{i}=c0" for i in range(channels))
    return ["-f", "lavfi", "-i", f"sine=f={freq}:r={rate}:d={seconds}", "-af", pan]


@pytest.fixture(scope="session")
def long_ogg(media: Callable[..., Path]) -> Path:
    """20 minutes of a rising chirp: every position in the file sounds different."""
    return media("long.ogg", "-f", "lavfi", "-i", CHIRP.format(seconds=1200), "-c:a", "libvorbis")


@pytest.fixture(scope="session")
def streamed_flac(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s of FLAC written to a pipe: STREAMINFO has no length, so no header duration."""
    out = tmp_path_factory.mktemp("streamed") / "streamed.flac"
    with out.open("wb") as fh:
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=f=440:r=22050:d=20"]
            + ["-c:a", "flac", "-f", "flac", "pipe:1"],
            stdout=fh,
            check=True,
        )
    return out


def dominant_hz(wave: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def code_of(call: Callable[[], object]) -> AudioErrorCode:
    with pytest.raises(AudioError) as info:
        call()
    assert isinstance(info.value.code, AudioErrorCode) and info.value.message
    return info.value.code


# -- formats, rates, channels ------------------------------------------------------------

FORMATS = [  # (id, extension, codec args, source rate, channels)
    ("wav-s16-8k-mono", "wav", ["-c:a", "pcm_s16le"], 8000, 1),
    ("wav-s24-96k-8ch", "wav", ["-c:a", "pcm_s24le"], 96000, 8),
    ("wav-s32-22k-stereo", "wav", ["-c:a", "pcm_s32le"], 22050, 2),
    ("wav-f32-44k-6ch", "wav", ["-c:a", "pcm_f32le"], 44100, 6),
    ("flac-96k-stereo", "flac", [], 96000, 2),
    ("flac-48k-8ch", "flac", [], 48000, 8),
    ("vorbis-22k-stereo", "ogg", ["-c:a", "libvorbis"], 22050, 2),
    ("vorbis-48k-6ch", "ogg", ["-c:a", "libvorbis"], 48000, 6),
    ("opus-48k-stereo", "opus", ["-c:a", "libopus"], 48000, 2),
    ("opus-8k-mono", "opus", ["-c:a", "libopus"], 8000, 1),
    ("opus-48k-8ch", "opus", ["-c:a", "libopus"], 48000, 8),
    ("mp3-22k-stereo", "mp3", ["-c:a", "libmp3lame"], 22050, 2),
    ("mp3-44k-mono", "mp3", ["-c:a", "libmp3lame"], 44100, 1),
    ("aac-44k-stereo", "m4a", ["-c:a", "aac"], 44100, 2),
    ("aac-96k-6ch", "m4a", ["-c:a", "aac"], 96000, 6),
    ("aac-8k-mono", "m4a", ["-c:a", "aac"], 8000, 1),
]


def probe(path: Path) -> tuple[int, int]:
    """(sample rate, channels) as ffprobe sees them: the file is what the test claims."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-of", "csv=p=0"]
        + ["-show_entries", "stream=sample_rate,channels", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate, channels = out.strip().split(",")
    return int(rate), int(channels)


@pytest.mark.parametrize(
    ("name", "ext", "codec", "rate", "channels"), FORMATS, ids=[f[0] for f in FORMATS]
)
def test_decodes_every_format_to_16k_mono(media, name, ext, codec, rate, channels) -> None:
    path = media(f"{name}.{ext}", *sine_args(rate, channels), *codec)
    # Opus always decodes at 48 kHz; an 8 kHz input survives only as a header hint.
    assert probe(path) == (48000 if ext == "opus" else rate, channels)
    wave = decode(str(path))
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.shape[0] - 2.0 * SR) <= 0.05 * SR  # codec padding/priming only
    assert np.isfinite(wave).all()
    assert np.sqrt(np.mean(wave**2)) > 0.02  # the downmix kept the signal
    assert abs(dominant_hz(wave[SR // 4 : -SR // 4]) - 440) < 3


def test_downmix_keeps_both_channels_and_other_rates(media) -> None:
    chord = "aevalsrc='0.4*sin(2*PI*440*t)|0.4*sin(2*PI*660*t)':s=44100:d=2"
    path = media("chord.ogg", "-f", "lavfi", "-i", chord, "-c:a", "libvorbis")
    wave = decode(f"file://{path}")
    spectrum = np.abs(np.fft.rfft(wave[SR // 2 : SR + SR // 2]))  # 1 s -> 1 Hz bins
    left, right, between = spectrum[440], spectrum[660], spectrum[550]
    assert 0.5 < left / right < 2 and min(left, right) > 50 * between
    for rate in (8000, 22050):
        resampled = decode(str(path), sample_rate=rate)
        assert abs(resampled.shape[0] - 2 * rate) <= 0.01 * rate


@pytest.mark.parametrize("path", [SINGULARITY_OGG, ASC_MP3], ids=["ogg", "mp3"])
def test_real_music_ogg_and_mp3(path: Path) -> None:
    # Installed by the Makefile (singularity-music, asc-music): required, never skipped.
    # Note the space in the OGG's name.
    assert path.exists()
    wave = decode(str(path))
    # libsndfile (libvorbis, mpg123) decodes independently; its MP3 header length is
    # only an estimate, so count what it actually decodes.
    reference, rate = sf.read(str(path), dtype="float32")
    expected = reference.shape[0] / rate
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.shape[0] / SR - expected) < 0.1
    assert np.isfinite(wave).all() and 0.01 < np.sqrt(np.mean(wave**2)) < 0.9


# -- errors ------------------------------------------------------------------------------


def test_error_codes_are_stable_and_pickle() -> None:
    assert [c.value for c in AudioErrorCode] == [
        "not_found",
        "empty",
        "undecodable",
        "too_short",
        "too_long",
        "non_finite",
        "read_failed",
        "unsupported_uri",
    ]
    error = pickle.loads(pickle.dumps(AudioError(AudioErrorCode.EMPTY, "x.wav: zero-byte file")))
    assert error.code is AudioErrorCode.EMPTY and error.message == "x.wav: zero-byte file"
    assert str(error) == "empty: x.wav: zero-byte file"


def test_not_found(tmp_path) -> None:
    assert code_of(lambda: decode(str(tmp_path / "missing.wav"))) == "not_found"
    assert code_of(lambda: decode(f"file://{tmp_path}/missing.ogg")) == "not_found"
    config = AudioConfig(max_patches=2)
    assert code_of(lambda: decode_patches(str(tmp_path / "no/dir.mp3"), config)) == "not_found"


def test_empty_file_and_no_samples(tmp_path, media) -> None:
    (tmp_path / "zero.wav").touch()
    assert code_of(lambda: decode(str(tmp_path / "zero.wav"))) == "empty"
    header_only = media(
        "header-only.wav", "-f", "lavfi", "-i", "sine", "-t", "0", "-c:a", "pcm_s16le"
    )
    assert 0 < header_only.stat().st_size < 100
    assert code_of(lambda: decode(str(header_only))) == "empty"
    assert code_of(lambda: decode_patches(str(header_only), AudioConfig())) == "empty"


def test_random_bytes_are_undecodable(tmp_path) -> None:
    path = tmp_path / "noise.mp3"
    path.write_bytes(np.random.default_rng(0).bytes(8192))
    assert code_of(lambda: decode(str(path))) == "undecodable"


def test_truncated_and_corrupt_files_are_undecodable(tmp_path, media, streamed_flac) -> None:
    m4a = media("moov-at-end.m4a", *sine_args(44100, 2), "-c:a", "aac")
    ogg = media("trunc-src.ogg", *sine_args(44100, 2), "-c:a", "libvorbis")
    flac = streamed_flac.read_bytes()
    garbled = bytearray(flac)
    garbled[len(flac) // 2 : len(flac) // 2 + 2000] = np.random.default_rng(1).bytes(2000)
    cases = {
        "m4a-cut.m4a": m4a.read_bytes()[: m4a.stat().st_size // 3],  # index (moov) lost
        "ogg-cut-in-headers.ogg": ogg.read_bytes()[:1000],
        "flac-cut-in-half.flac": flac[: len(flac) // 2],
        "flac-garbled-middle.flac": bytes(garbled),
    }
    for name, data in cases.items():
        path = str(tmp_path / name)
        Path(path).write_bytes(data)
        assert code_of(lambda p=path: decode(p)) == "undecodable", name
        config = AudioConfig(max_patches=2)
        assert code_of(lambda p=path, c=config: decode_patches(p, c)) == "undecodable", name


def test_truncated_mp3_decodes_its_intact_prefix(tmp_path, media) -> None:
    """FFmpeg's MP3 demuxer stops quietly at a cut: what is real is a shorter track."""
    full = media("twenty.mp3", *sine_args(22050, 2, seconds=20), "-c:a", "libmp3lame")
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 5])
    wave = decode(str(cut))
    assert 7 < wave.shape[0] / SR < 9 and abs(dominant_hz(wave[:SR]) - 440) < 3
    # The header still claims 20 s: the windows past the real end come back short, so
    # decode_patches falls back to a full decode and reports the real duration.
    track = decode_patches(str(cut), AudioConfig(max_patches=2))
    assert track.patches.shape == (2, 3 * SR)
    assert track.duration_s == pytest.approx(wave.shape[0] / SR)
    np.testing.assert_array_equal(track.patches, split_patches(wave, 3 * SR, 2))


def test_too_short(media) -> None:
    clip = media("short.wav", *sine_args(44100, 1, seconds=0.3), "-c:a", "pcm_s16le")
    assert code_of(lambda: decode_patches(str(clip), AudioConfig())) == "too_short"
    assert code_of(lambda: decode_patches(str(clip), AudioConfig(max_patches=3))) == "too_short"
    assert decode(str(clip)).shape[0] == round(0.3 * SR)  # decode() itself has no minimum
    # decode_track (training's whole tracks) applies the config's minimum.
    assert code_of(lambda: decode_track(str(clip), AudioConfig())) == "too_short"
    assert decode_track(str(clip), AudioConfig(min_seconds=0.25)).shape[0] == round(0.3 * SR)


def test_too_long_from_header(long_ogg) -> None:
    with pytest.raises(AudioError) as info:
        decode(str(long_ogg), max_seconds=60)
    assert info.value.code == "too_long" and "1200.0 s" in info.value.message  # header length
    config = AudioConfig(max_patches=4, max_seconds=600)
    assert code_of(lambda: decode_patches(str(long_ogg), config)) == "too_long"


def test_too_long_without_header_stops_decoding_at_the_limit(tmp_path, streamed_flac) -> None:
    wave = decode(str(streamed_flac), max_seconds=20)
    assert wave.shape[0] == 20 * SR
    assert code_of(lambda: decode(str(streamed_flac), max_seconds=19.5)) == "too_long"
    # Proof that decoding stopped: the second half is cut off, yet with a 5 s limit the
    # decoder never gets there and the answer is too_long, not undecodable.
    cut = tmp_path / "cut.flac"
    cut.write_bytes(streamed_flac.read_bytes()[: streamed_flac.stat().st_size // 2])
    assert code_of(lambda: decode(str(cut))) == "undecodable"
    assert code_of(lambda: decode(str(cut), max_seconds=5)) == "too_long"
    assert code_of(lambda: decode_patches(str(cut), AudioConfig(max_seconds=5))) == "too_long"
    assert code_of(lambda: decode_track(str(cut), AudioConfig(max_seconds=5))) == "too_long"


@pytest.mark.parametrize(("bad", "rate"), [(np.nan, 44100), (np.inf, 22050)])
def test_non_finite(tmp_path, bad: float, rate: int) -> None:
    """A NaN or infinite sample anywhere, also once resampled to 16 kHz."""
    t = np.arange(2 * rate) / rate
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    wave[rate // 2] = bad
    path = str(tmp_path / "bad.wav")
    sf.write(path, wave, rate, subtype="FLOAT")
    assert code_of(lambda: decode(path)) == "non_finite"
    assert code_of(lambda: decode_patches(path, AudioConfig())) == "non_finite"


def test_read_failed_on_a_directory(tmp_path) -> None:
    (tmp_path / "album.flac").mkdir()
    assert code_of(lambda: decode(str(tmp_path / "album.flac"))) == "read_failed"


def test_read_failed_on_permission_denied(media) -> None:
    """A real EACCES. Root bypasses file modes, so as root a forked child drops to nobody."""
    folder = Path(tempfile.mkdtemp())  # 0755, unlike pytest's tmp dirs, so nobody gets in
    folder.chmod(0o755)
    locked = folder / "locked.ogg"
    locked.write_bytes(media("sine.ogg", *sine_args(44100, 1), "-c:a", "libvorbis").read_bytes())
    locked.chmod(0o000)
    try:
        if os.geteuid() == 0:
            code, message = decode_as_nobody(str(locked)).split("|", 1)
        else:
            code, message = decode_error(str(locked))
    finally:
        shutil.rmtree(folder)
    assert code == "read_failed" and "Permission denied" in message


def decode_error(path: str) -> tuple[str, str]:
    with pytest.raises(AudioError) as info:
        decode(path)
    return str(info.value.code), info.value.message


def decode_as_nobody(path: str) -> str:
    """Decode in a forked child that dropped to uid/gid 65534; "code|message" comes back."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        result = "crashed|"
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                decode(path)
                result = "decoded|"
            except AudioError as error:
                result = f"{error.code}|{error.message}"
        finally:
            os.write(write_end, result.encode())
            os._exit(0)
    os.close(write_end)
    result = os.read(read_end, 4096).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    return result


# -- patch policy ------------------------------------------------------------------------


def test_patch_starts_all_patches_drop_the_partial_tail() -> None:
    np.testing.assert_array_equal(patch_starts(10 * 100 + 99, 100, None), np.arange(10) * 100)
    np.testing.assert_array_equal(patch_starts(300, 100, None), [0, 100, 200])
    assert patch_starts(300, 100, None).dtype == np.int64


def test_patch_starts_short_track_is_one_padded_patch() -> None:
    np.testing.assert_array_equal(patch_starts(1, 100, None), [0])
    np.testing.assert_array_equal(patch_starts(99, 100, 4), [0])
    np.testing.assert_array_equal(patch_starts(150, 100, 4), [0])


def test_patch_starts_k_evenly_spaced() -> None:
    starts = patch_starts(100 * 1000, 1000, 4)
    np.testing.assert_array_equal(starts, [0, 33000, 66000, 99000])
    np.testing.assert_array_equal(patch_starts(1000, 10, 3), np.rint(np.linspace(0, 990, 3)))
    np.testing.assert_array_equal(patch_starts(10_000, 100, 1), [0])
    # K at least the number of full patches: the same as taking all of them.
    np.testing.assert_array_equal(patch_starts(450, 100, 4), patch_starts(450, 100, None))
    np.testing.assert_array_equal(patch_starts(450, 100, 9), [0, 100, 200, 300])


def test_patch_starts_properties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        size = int(rng.integers(1, 500))
        n = int(rng.integers(size, 100 * size))
        k = None if rng.random() < 0.3 else int(rng.integers(1, 20))
        starts = patch_starts(n, size, k)
        assert len(starts) == min(n // size, k or n)
        assert starts[0] == 0 and starts[-1] + size <= n
        assert (np.diff(starts) >= size).all()  # never overlapping
        if k is not None and n // size > k > 1:
            assert starts[-1] == n - size  # spread to the very end


def test_patch_starts_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        patch_starts(-1, 100, None)
    with pytest.raises(ValueError):
        patch_starts(100, 0, None)


def test_decode_patches_all(media) -> None:
    path = media(
        "chirp-10.5.ogg", "-f", "lavfi", "-i", CHIRP.format(seconds=10.5), "-c:a", "libvorbis"
    )
    track = decode_patches(str(path), AudioConfig())
    assert isinstance(track, DecodedTrack)
    assert track.patches.shape == (3, 3 * SR) and track.patches.dtype == np.float32
    assert track.duration_s == pytest.approx(10.5)
    wave = decode(str(path))
    np.testing.assert_array_equal(track.patches, wave[: 9 * SR].reshape(3, 3 * SR))
    # K larger than the number of full patches: the same as all of them.
    np.testing.assert_array_equal(
        decode_patches(str(path), AudioConfig(max_patches=5)).patches, track.patches
    )


@pytest.mark.parametrize("max_patches", [None, 4])
def test_decode_patches_zero_pads_a_short_track(media, max_patches: int | None) -> None:
    path = media("two-seconds.flac", *sine_args(44100, 2))
    track = decode_patches(str(path), AudioConfig(max_patches=max_patches))
    assert track.patches.shape == (1, 3 * SR) and track.duration_s == pytest.approx(2.0)
    assert np.abs(track.patches[0, : 2 * SR - 100]).max() > 0.05
    assert not track.patches[0, 2 * SR :].any()


def test_decode_patches_k_windows_match_the_full_decode(long_ogg) -> None:
    config = AudioConfig(max_patches=4)
    track = decode_patches(str(long_ogg), config)
    assert track.patches.shape == (4, config.patch_samples) and track.duration_s == 1200.0
    wave = decode(str(long_ogg))
    starts = patch_starts(wave.shape[0], config.patch_samples, 4)
    assert starts[-1] > 1190 * SR
    for patch, start in zip(track.patches, starts, strict=True):
        segment = wave[start : start + config.patch_samples]
        np.testing.assert_allclose(patch, segment, atol=1e-4)
        # The chirp rises 0.4 Hz/s, so the pitch also says where in the track we are.
        t = (start + config.patch_samples / 2) / SR
        assert abs(dominant_hz(patch) - (200 + 0.4 * t)) < 2


def test_random_patches_are_the_full_decode_at_uniform_places(long_ogg, media) -> None:
    """Training's crops: n windows at uniformly random starts, equal to the whole track's
    samples there (only the windows are decoded: 3 s each of a 20-minute file)."""
    config = AudioConfig()
    track = decode_random_patches(str(long_ogg), config, 5, np.random.default_rng(7))
    assert track.patches.shape == (5, config.patch_samples) and track.duration_s == 1200.0
    wave = decode(str(long_ogg))
    # The same draws: uniform over every start that leaves a whole patch.
    starts = np.random.default_rng(7).integers(0, 1200 * SR - config.patch_samples + 1, size=5)
    assert starts.max() - starts.min() > 60 * SR  # spread over the track, not clustered
    for patch, start in zip(track.patches, starts, strict=True):
        np.testing.assert_allclose(patch, wave[start : start + config.patch_samples], atol=1e-4)
    # A track shorter than a patch: zero-padded, every crop the whole track.
    short = media("two-seconds.flac", *sine_args(44100, 2))
    crops = decode_random_patches(str(short), config, 3, np.random.default_rng(0)).patches
    assert crops.shape == (3, config.patch_samples) and not crops[:, 2 * SR :].any()
    np.testing.assert_array_equal(crops[0], crops[2])
    assert np.abs(crops[0, : 2 * SR - 100]).max() > 0.05


def test_decode_patches_k_decodes_only_the_windows(tmp_path) -> None:
    """NaN everywhere except around the 4 windows: only a windowed decode can succeed."""
    rate, seconds, config = 8000, 600, AudioConfig(max_patches=4)
    t = np.arange(seconds * rate) / rate
    wave = np.full(t.shape, np.nan, dtype=np.float32)
    for start in patch_starts(seconds * SR, config.patch_samples, 4) / SR:
        keep = (t > start - 2) & (t < start + config.patch_seconds + 2)
        wave[keep] = 0.5 * np.sin(2 * np.pi * 440 * t[keep])
    sf.write(tmp_path / "mostly-nan.wav", wave, rate, subtype="FLOAT")
    track = decode_patches(str(tmp_path / "mostly-nan.wav"), config)
    assert track.patches.shape == (4, config.patch_samples) and track.duration_s == seconds
    for patch in track.patches:
        assert abs(dominant_hz(patch) - 440) < 1 and np.sqrt(np.mean(patch**2)) > 0.3
    assert code_of(lambda: decode(str(tmp_path / "mostly-nan.wav"))) == "non_finite"
    all_patches = AudioConfig(max_patches=None)
    assert code_of(lambda: decode_patches(str(tmp_path / "mostly-nan.wav"), all_patches)) == (
        "non_finite"
    )


def test_decode_patches_without_header_duration_falls_back_to_full_decode(streamed_flac) -> None:
    config = AudioConfig(max_patches=2)
    track = decode_patches(str(streamed_flac), config)
    wave = decode(str(streamed_flac))
    assert track.duration_s == pytest.approx(20.0)
    np.testing.assert_array_equal(track.patches, split_patches(wave, config.patch_samples, 2))
    assert patch_starts(wave.shape[0], config.patch_samples, 2)[-1] == 17 * SR


# -- several patch policies from one decoding --------------------------------------------


def assert_each_as_alone(uri: str, configs: list[AudioConfig]) -> list[DecodedTrack]:
    """decode_policies gives every config exactly what decode_patches gives it alone."""
    tracks = decode_policies(uri, configs)
    assert len(tracks) == len(configs)
    for track, config in zip(tracks, configs, strict=True):
        alone = decode_patches(uri, config)
        assert track.duration_s == alone.duration_s
        assert track.patches.dtype == np.float32 and track.patches.shape[1] == config.patch_samples
        np.testing.assert_array_equal(track.patches, alone.patches, strict=True)
    return tracks


def test_policies_equal_each_policy_alone(media, long_ogg) -> None:
    short = media("two-seconds.flac", *sine_args(44100, 2))
    tracks = assert_each_as_alone(str(short), [AudioConfig(max_patches=32), MUSICNN])
    assert [len(t.patches) for t in tracks] == [1, 1]
    # 3 full patches: whole for two configs, 2 windows for the third.
    chirp = media(
        "chirp-10.5.ogg", "-f", "lavfi", "-i", CHIRP.format(seconds=10.5), "-c:a", "libvorbis"
    )
    configs = [AudioConfig(), MUSICNN, AudioConfig(max_patches=2), AudioConfig(sample_rate=8000)]
    tracks = assert_each_as_alone(str(chirp), configs)
    assert [len(t.patches) for t in tracks] == [3, 3, 2, 3]
    # An MP3's header duration is an estimate: windows start from it, whole cuts do not,
    # so a windowed config is not cut from the whole track another config decoded.
    mp3 = media("twenty.mp3", *sine_args(22050, 2, seconds=20), "-c:a", "libmp3lame")
    tracks = assert_each_as_alone(str(mp3), [MUSICNN, AudioConfig(max_patches=2)])
    assert [len(t.patches) for t in tracks] == [6, 2]
    assert tracks[0].duration_s != tracks[1].duration_s
    # 20 minutes: the whole track for one config, windows for three (one with context).
    configs = [
        AudioConfig(max_patches=4),
        AudioConfig(max_patches=None),
        replace(MUSICNN, max_patches=3),
        AudioConfig(max_patches=2),
    ]
    tracks = assert_each_as_alone(str(long_ogg), configs)
    assert [len(t.patches) for t in tracks] == [4, 400, 3, 2]


def test_policies_without_header_duration(streamed_flac) -> None:
    tracks = assert_each_as_alone(
        str(streamed_flac), [AudioConfig(max_patches=2), replace(MUSICNN, max_patches=2)]
    )
    assert [t.duration_s for t in tracks] == [pytest.approx(20.0)] * 2


def bytes_read(call: Callable[[], object]) -> int:
    """Bytes this process read from files while ``call`` ran (/proc/self/io: rchar)."""

    def rchar() -> int:
        fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
        return int(fields["rchar"])

    before = rchar()
    call()
    return rchar() - before


def test_policies_decode_the_whole_track_once(media) -> None:
    """Three configs that each need the whole track: FFmpeg reads the file once, where a
    decode_patches per config reads it three times."""
    path = str(media("twenty-s16.wav", *sine_args(44100, 2, seconds=20), "-c:a", "pcm_s16le"))
    configs = [AudioConfig(max_patches=32), MUSICNN, AudioConfig(max_patches=8)]
    size = Path(path).stat().st_size
    decode_patches(path, configs[0])  # the OS's file cache and FFmpeg's probing, warm
    assert bytes_read(lambda: decode_policies(path, configs)) < 1.1 * size
    assert bytes_read(lambda: [decode_patches(path, c) for c in configs]) > 2.9 * size


def outcome(function: Callable[..., object], *args: object) -> str:
    """The error code ``function(*args)`` raises, or "ok"."""
    try:
        function(*args)
    except AudioError as error:
        return str(error.code)
    return "ok"


@pytest.mark.parametrize("first_rate", [SR, 8000])
def test_policies_fail_with_the_first_failing_policy(tmp_path, media, first_rate: int) -> None:
    clip = str(media("short.wav", *sine_args(44100, 1, seconds=0.3), "-c:a", "pcm_s16le"))
    noise = tmp_path / "noise.mp3"
    noise.write_bytes(np.random.default_rng(0).bytes(8192))
    header_only = media(
        "header-only.wav", "-f", "lavfi", "-i", "sine", "-t", "0", "-c:a", "pcm_s16le"
    )
    too_long = AudioConfig(sample_rate=first_rate, min_seconds=0.1, max_seconds=0.2)
    lenient = AudioConfig(sample_rate=first_rate, min_seconds=0.25)
    cases = [
        (clip, [too_long, AudioConfig()]),
        (clip, [AudioConfig(), too_long]),
        (clip, [lenient, AudioConfig(), too_long]),
        (clip, [lenient, MUSICNN]),
        (str(tmp_path / "missing.wav"), [lenient, MUSICNN]),
        (str(noise), [lenient, MUSICNN]),
        (str(header_only), [lenient, MUSICNN]),
    ]
    for uri, configs in cases:
        alone = [outcome(decode_patches, uri, config) for config in configs]
        first_failure = next(code for code in alone if code != "ok")
        assert outcome(decode_policies, uri, configs) == first_failure, (uri, alone)
    assert [outcome(decode_patches, clip, config) for config in cases[2][1]] == [
        "ok",
        "too_short",
        "too_long",
    ]


def test_policies_non_finite_only_where_a_policy_looks(tmp_path) -> None:
    """NaN only past the windows: the windowed policies succeed, the whole track fails."""
    rate, seconds = 8000, 600
    windows = [AudioConfig(max_patches=4), replace(MUSICNN, max_patches=4)]
    t = np.arange(seconds * rate) / rate
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    wave[(t > 100) & (t < 101)] = np.nan
    path = str(tmp_path / "nan-at-100s.wav")
    sf.write(path, wave, rate, subtype="FLOAT")
    assert_each_as_alone(path, windows)
    assert outcome(decode_policies, path, [*windows, AudioConfig()]) == "non_finite"


# -- object storage ----------------------------------------------------------------------


def test_decode_from_s3(s3_bucket, long_ogg, media) -> None:
    fs, _ = filesystem(s3_bucket)
    uri = f"{s3_bucket}/music/long.ogg"
    fs.put(str(long_ogg), filesystem(uri)[1])
    config = AudioConfig(max_patches=4)
    remote, local = decode_patches(uri, config), decode_patches(str(long_ogg), config)
    assert remote.duration_s == local.duration_s
    np.testing.assert_array_equal(remote.patches, local.patches)
    small = media("chord-s3.mp3", *sine_args(22050, 2), "-c:a", "libmp3lame")
    fs.put(str(small), filesystem(f"{s3_bucket}/small.mp3")[1])
    np.testing.assert_array_equal(decode(f"{s3_bucket}/small.mp3"), decode(str(small)))
    assert code_of(lambda: decode(f"{s3_bucket}/music/missing.ogg")) == "not_found"
    with fs.open(filesystem(f"{s3_bucket}/zero.wav")[1], "wb"):
        pass
    assert code_of(lambda: decode(f"{s3_bucket}/zero.wav")) == "empty"
    fs.pipe(filesystem(f"{s3_bucket}/noise.mp3")[1], np.random.default_rng(0).bytes(8192))
    assert code_of(lambda: decode(f"{s3_bucket}/noise.mp3")) == "undecodable"


def test_s3_with_wrong_credentials_is_read_failed(s3_bucket, media, monkeypatch) -> None:
    import s3fs

    small = media("sine.ogg", *sine_args(44100, 1), "-c:a", "libvorbis")
    uri = f"{s3_bucket}/sine.ogg"
    fs, path = filesystem(uri)
    fs.put(str(small), path)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec would reuse the good client
    try:
        with pytest.raises(AudioError) as info:
            decode(uri)
        assert info.value.code == "read_failed"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_s3_endpoint_down_is_read_failed(monkeypatch) -> None:
    import s3fs

    from tests.services import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore would retry for ~10 s
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        assert code_of(lambda: decode("s3://bucket/track.ogg")) == "read_failed"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_any_fsspec_url(media) -> None:
    """memory:// is a real fsspec filesystem: FFmpeg reads it through read/seek too."""
    source = media("sine.ogg", *sine_args(44100, 1), "-c:a", "libvorbis")
    fs, path = filesystem("memory://raytag-test/sine.ogg")
    fs.pipe(path, source.read_bytes())
    try:
        np.testing.assert_array_equal(decode("memory://raytag-test/sine.ogg"), decode(str(source)))
        assert code_of(lambda: decode("memory://raytag-test/other.ogg")) == "not_found"
    finally:
        fs.rm(path)
