"""Audio files (local or in object storage) to float32 mono waveforms and fixed-length
patches.

torchcodec decodes, resamples and downmixes inside FFmpeg, so an 8-channel 96 kHz
file never exists in memory at full size. Local files go to FFmpeg as paths; remote
ones as fsspec file objects that FFmpeg reads and seeks on demand, never as a whole
download. With ``max_patches`` set and a duration in the header, only the K patch
windows are decoded, which bounds time and memory for hour-long tracks.

Every failure of one file surfaces as :class:`AudioError` with a stable code, so a
batch job can record it next to the URI and carry on. A URI raytag does not read
(``http://``, ``ftp://``, ``gs://`` without gcsfs: see :func:`raytag.manifest.unreadable_uri`)
fails before any connection is tried.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from torchcodec.decoders import AudioDecoder

from raytag.config import SAMPLE_RATE, AudioConfig
from raytag.manifest import unreadable_uri
from raytag.patching import patch_starts, random_crops, random_starts, split_patches
from raytag.storage import filesystem, is_local, local_path

__all__ = [
    "AudioError",
    "AudioErrorCode",
    "DecodedTrack",
    "decode",
    "decode_patches",
    "decode_policies",
    "decode_random_patches",
    "decode_track",
    "patch_starts",
]

# A last window may come back this much short of a full patch (header durations of
# MP3/AAC are estimates) and is zero-padded; anything shorter means the header lied.
_WINDOW_SLACK_S = 0.25


class AudioErrorCode(StrEnum):
    """Why a file could not become a waveform. The values are stored in job outputs."""

    NOT_FOUND = "not_found"
    EMPTY = "empty"
    UNDECODABLE = "undecodable"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    NON_FINITE = "non_finite"
    READ_FAILED = "read_failed"
    UNSUPPORTED_URI = "unsupported_uri"  # as the manifest's row checks call it


class AudioError(Exception):
    """One file's failure: a machine-readable ``code`` and a human ``message``."""

    def __init__(self, code: AudioErrorCode | str, message: str) -> None:
        # Both in args so the exception pickles across Ray workers unchanged.
        super().__init__(AudioErrorCode(code), message)
        self.code = AudioErrorCode(code)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class DecodedTrack:
    patches: np.ndarray  # (n_patches, patch_samples) float32
    duration_s: float  # the whole track, not just the decoded windows


def decode(
    uri: str, sample_rate: int = SAMPLE_RATE, *, max_seconds: float | None = None
) -> np.ndarray:
    """The whole track as float32 mono at ``sample_rate``.

    ``max_seconds`` rejects longer tracks from the header duration before decoding, or,
    when the header has none, stops decoding as soon as the limit is passed.
    """
    _check_rate(sample_rate)
    with _open_decoder(uri, sample_rate) as decoder:
        wave = _OpenTrack(uri, decoder, sample_rate).whole(max_seconds)
    _check_finite(uri, wave)
    return wave


def decode_track(uri: str, config: AudioConfig) -> np.ndarray:
    """The whole track under ``config``'s limits: refused when longer than
    ``max_seconds`` or shorter than ``min_seconds``."""
    wave = decode(uri, config.sample_rate, max_seconds=config.max_seconds)
    _check_too_short(uri, wave, config)
    return wave


def decode_patches(uri: str, config: AudioConfig) -> DecodedTrack:
    """The track's patches under ``config``'s policy (see :func:`patch_starts`).

    With ``max_patches`` set and a header duration, only those K windows are decoded.
    Patches carry ``config.context_samples`` of context on each side (see patching).
    """
    return decode_policies(uri, [config])[0]


def decode_policies(uri: str, configs: Sequence[AudioConfig]) -> list[DecodedTrack]:
    """The track's patches under each of ``configs``, in order: one decoding of the track
    for several models' patch policies.

    Each config gets exactly what :func:`decode_patches` gives for it alone. The file is
    opened once per sample rate, and the whole track decoded at most once (per
    ``max_seconds``) and cut for every config that needs it whole; a config that takes K
    windows of a long track decodes its windows from the same open file. A track that
    fails under one config fails as a whole, with the error of the first config, in
    order, that fails.
    """
    outcomes: dict[int, DecodedTrack | AudioError] = {}
    for rate in dict.fromkeys(config.sample_rate for config in configs):
        same_rate = {i: config for i, config in enumerate(configs) if config.sample_rate == rate}
        outcomes.update(_decode_at_rate(uri, rate, same_rate))
    tracks = []
    for i in range(len(configs)):  # a config after a failed one at its rate has no outcome
        outcome = outcomes[i]
        if isinstance(outcome, AudioError):
            raise outcome
        tracks.append(outcome)
    return tracks


def decode_random_patches(
    uri: str, config: AudioConfig, n: int, rng: np.random.Generator
) -> DecodedTrack:
    """``n`` patches (``config.patch_samples`` long) at uniformly random places: training's
    crops. With a header duration only those windows are decoded, so a crop of a
    four-minute song costs a crop's decoding, not the song's: what lets training stream
    a catalogue whose decoded audio does not fit in memory."""
    with _open_decoder(uri, config.sample_rate) as decoder:
        return _OpenTrack(uri, decoder, config.sample_rate).random_patches(config, n, rng)


def _decode_at_rate(
    uri: str, rate: int, configs: dict[int, AudioConfig]
) -> dict[int, DecodedTrack | AudioError]:
    """Each of ``configs`` (index -> config, all at ``rate``) from one open file, up to
    and including the first that fails."""
    outcomes: dict[int, DecodedTrack | AudioError] = {}
    index = next(iter(configs))  # a file that cannot be opened fails the first config
    try:
        with _open_decoder(uri, rate) as decoder:
            track = _OpenTrack(uri, decoder, rate)
            for index, config in configs.items():
                outcomes[index] = track.evenly_spaced_patches(config)
    except AudioError as error:
        outcomes[index] = error
    return outcomes


class _OpenTrack:
    """One open file at one rate, for every policy cut from it: its header duration, and
    its whole waveform once decoded."""

    def __init__(self, uri: str, decoder: AudioDecoder, rate: int) -> None:
        self.uri, self.decoder, self.rate = uri, decoder, rate
        self.header = _header_duration(decoder)
        self._whole: dict[float | None, np.ndarray] = {}  # by max_seconds

    def whole(self, max_seconds: float | None) -> np.ndarray:
        """The whole track, decoded once per limit (see :func:`decode`)."""
        _check_too_long(self.uri, self.header, max_seconds)
        if max_seconds not in self._whole:
            self._whole[max_seconds] = _decode_all(self.uri, self.decoder, self.rate, max_seconds)
        return self._whole[max_seconds]

    def evenly_spaced_patches(self, config: AudioConfig) -> DecodedTrack:
        """What :func:`decode_patches` gives."""
        size, k, context = config.core_samples, config.max_patches, config.context_samples

        def evenly_spaced(n_samples: int) -> np.ndarray | None:
            if k is None or (n_samples + context) // size <= k:
                return None  # every patch anyway: one full decode is cheaper than seeking
            return patch_starts(n_samples, size, k, context)

        return self._windows_or_whole(
            config, evenly_spaced, size, context, lambda wave: split_patches(wave, size, k, context)
        )

    def random_patches(self, config: AudioConfig, n: int, rng: np.random.Generator) -> DecodedTrack:
        """What :func:`decode_random_patches` gives."""
        size = config.patch_samples
        return self._windows_or_whole(
            config,
            lambda n_samples: random_starts(n_samples, size, n, rng),
            size,
            0,
            lambda wave: random_crops(wave, size, n, rng),
        )

    def _windows_or_whole(
        self,
        config: AudioConfig,
        starts_for: Callable[[int], np.ndarray | None],
        size: int,
        context: int,
        cut: Callable[[np.ndarray], np.ndarray],
    ) -> DecodedTrack:
        """Decode only the windows ``starts_for(samples in the header's duration)`` picks;
        the whole track, cut into patches by ``cut``, when it picks none, when the header
        has no duration or when a window comes back short (a wrong header)."""
        header, rate = self.header, self.rate
        _check_too_long(self.uri, header, config.max_seconds)
        starts = starts_for(int(header * rate)) if header is not None else None
        patches = None
        if starts is not None:
            patches = _decode_windows(self.decoder, starts, size, rate, context)
        duration = header
        if patches is None:
            wave = self.whole(config.max_seconds)
            _check_too_short(self.uri, wave, config)
            duration = wave.shape[0] / rate
            patches = cut(wave)
        _check_finite(self.uri, patches)
        return DecodedTrack(patches=patches, duration_s=float(duration))


# -- opening -------------------------------------------------------------------------


@contextmanager
def _open_decoder(uri: str, sample_rate: int) -> Iterator[AudioDecoder]:
    """A mono decoder at ``sample_rate``; any failure inside the block becomes AudioError."""
    problem = unreadable_uri(uri)
    if problem is not None:
        raise AudioError(AudioErrorCode.UNSUPPORTED_URI, f"{uri}: {problem}")
    remote: _RemoteFile | None = None
    try:
        if is_local(uri):
            yield _decoder(_checked_local_path(uri), sample_rate)
        else:
            with _open_remote(uri) as remote:
                yield _decoder(remote, sample_rate)
    except AudioError:
        raise
    except Exception as err:
        # FFmpeg may re-raise a failed read as its own error: the read's cause wins.
        if remote is not None and remote.failure is not None:
            raise remote.failure from err
        raise _classify(uri, err) from err


def _decoder(source: Any, sample_rate: int) -> AudioDecoder:
    return AudioDecoder(source, sample_rate=sample_rate, num_channels=1)


def _checked_local_path(uri: str) -> str:
    """Find missing, empty and unreadable files here: FFmpeg's messages blur these cases."""
    path = os.path.abspath(local_path(uri))  # absolute: FFmpeg reads "name:" as a protocol
    info = os.stat(path)
    if info.st_size == 0 and stat.S_ISREG(info.st_mode):
        raise AudioError(AudioErrorCode.EMPTY, f"{uri}: zero-byte file")
    with open(path, "rb"):  # PermissionError, IsADirectoryError -> read_failed
        pass
    return path


@contextmanager
def _open_remote(uri: str) -> Iterator[_RemoteFile]:
    try:
        fs, path = filesystem(uri)
        info = fs.info(path)
        if info.get("type") == "directory":
            raise AudioError(AudioErrorCode.READ_FAILED, f"{uri}: is a directory")
        if info.get("size") == 0:
            raise AudioError(AudioErrorCode.EMPTY, f"{uri}: zero-byte file")
        handle = fs.open(path, "rb")
    except (AudioError, FileNotFoundError):
        raise
    except Exception as err:  # credentials, network, bucket errors: all I/O
        raise AudioError(AudioErrorCode.READ_FAILED, f"{uri}: {_reason(err)}") from err
    with handle:
        yield _RemoteFile(uri, handle)


class _RemoteFile:
    """The read/seek object FFmpeg pulls from; remembers I/O failures as read_failed."""

    def __init__(self, uri: str, handle: Any) -> None:
        self._uri = uri
        self._handle = handle
        self.failure: AudioError | None = None

    def read(self, size: int = -1) -> bytes:
        return self._io(self._handle.read, size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._io(self._handle.seek, offset, whence)

    def _io(self, method: Any, *args: int) -> Any:
        try:
            return method(*args)
        except Exception as err:
            self.failure = AudioError(AudioErrorCode.READ_FAILED, f"{self._uri}: {_reason(err)}")
            raise self.failure from err


def _classify(uri: str, err: Exception) -> AudioError:
    reason = _reason(err)
    if isinstance(err, FileNotFoundError | NotADirectoryError):
        return AudioError(AudioErrorCode.NOT_FOUND, f"{uri}: not found")
    if isinstance(err, OSError):
        return AudioError(AudioErrorCode.READ_FAILED, f"{uri}: {reason}")
    if "No audio frames were decoded" in reason:  # torchcodec on a header-only file
        return AudioError(AudioErrorCode.EMPTY, f"{uri}: no audio samples")
    return AudioError(AudioErrorCode.UNDECODABLE, f"{uri}: {reason}")


def _reason(err: BaseException) -> str:
    """The useful tail of an error (torchcodec prefixes its C++ source location)."""
    text = str(err) or type(err).__name__
    if ".cpp:" in text:  # "function, /path/File.cpp:123, message"
        text = text.rsplit(".cpp:", 1)[1].split(", ", 1)[-1]
    return text.strip()


# -- decoding ------------------------------------------------------------------------


def _header_duration(decoder: AudioDecoder) -> float | None:
    duration = decoder.metadata.duration_seconds_from_header
    return float(duration) if duration and duration > 0 else None


def _begin(decoder: AudioDecoder) -> float:
    """Stream start time; MP3 starts after the encoder delay, not at 0."""
    return float(decoder.metadata.begin_stream_seconds_from_header or 0.0)


def _samples(decoder: AudioDecoder, start: float, stop: float | None) -> np.ndarray:
    data = decoder.get_samples_played_in_range(start, stop).data
    return np.ascontiguousarray(data[0].numpy(), dtype=np.float32)


def _decode_all(
    uri: str, decoder: AudioDecoder, sample_rate: int, max_seconds: float | None
) -> np.ndarray:
    """Decode from the start; with a limit, stop one sample past it."""
    begin = _begin(decoder)
    limit = None if max_seconds is None else int(max_seconds * sample_rate)
    wave = _samples(decoder, begin, None if limit is None else begin + (limit + 1) / sample_rate)
    if wave.size == 0:
        raise AudioError(AudioErrorCode.EMPTY, f"{uri}: no audio samples")
    if limit is not None and wave.shape[0] > limit:
        raise AudioError(AudioErrorCode.TOO_LONG, f"{uri}: longer than {max_seconds} s")
    return wave


def _check_too_short(uri: str, wave: np.ndarray, config: AudioConfig) -> None:
    if wave.shape[0] < config.min_seconds * config.sample_rate:
        raise AudioError(
            AudioErrorCode.TOO_SHORT,
            f"{uri}: {wave.shape[0] / config.sample_rate:.2f} s is shorter than "
            f"{config.min_seconds} s",
        )


def _decode_windows(
    decoder: AudioDecoder, starts: np.ndarray, size: int, rate: int, context: int = 0
) -> np.ndarray | None:
    """Only the windows at ``starts`` (with ``context`` samples either side, zeros before
    the track's start); None when one comes back short (the header was wrong)."""
    begin = _begin(decoder)
    width = size + 2 * context
    patches = np.zeros((len(starts), width), dtype=np.float32)
    for row, start in enumerate(starts):
        first = max(int(start) - context, 0)
        offset = first - (int(start) - context)  # zeros before the track's start
        stop = int(start) + size + context
        try:
            window = _samples(decoder, begin + first / rate, begin + stop / rate)
        except RuntimeError:  # past the real end, or damage: let the full decode decide
            return None
        # The patch may end up to `context` samples past the track, its right context too.
        if offset + window.shape[0] < size - _WINDOW_SLACK_S * rate:
            return None
        n = min(width - offset, window.shape[0])
        patches[row, offset : offset + n] = window[:n]
    return patches


def _check_rate(sample_rate: int) -> None:
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")


def _check_too_long(uri: str, header: float | None, max_seconds: float | None) -> None:
    if max_seconds is not None and header is not None and header > max_seconds:
        raise AudioError(
            AudioErrorCode.TOO_LONG, f"{uri}: {header:.1f} s is longer than {max_seconds} s"
        )


def _check_finite(uri: str, samples: np.ndarray) -> None:
    if not np.isfinite(samples).all():
        raise AudioError(AudioErrorCode.NON_FINITE, f"{uri}: NaN or infinite samples")
