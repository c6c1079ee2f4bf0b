"""One track from arrangement to audio: MIDI saved, rendered by FluidSynth, encoded by ffmpeg."""

from __future__ import annotations

import os
import random
import subprocess

from raytag.catalogue.arrangement import compose, to_midi
from raytag.storage import is_local, join

GAIN = 0.25  # one FluidSynth gain for all tracks, low enough that the loudest do not clip
TAIL_S = 0.5  # release and reverb kept after the last note
SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)
CODECS = {
    "wav": ("-c:a", "pcm_s16le"),
    "flac": ("-c:a", "flac"),
    "ogg": ("-c:a", "libvorbis", "-q:a", "5"),
    "mp3": ("-c:a", "libmp3lame", "-b:a", "160k"),
}


def _run(cmd: list[str]) -> None:
    """Run a tool and fail with its own error message."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")


def render_midi(
    soundfont: str, midi_path: str, wav: str, rate: int, *, reverb: bool, chorus: bool
) -> None:
    """Render a MIDI file to WAV with FluidSynth at the catalogue's one fixed gain."""
    # Dynamic sample loading reads only the samples a track plays, not the whole SoundFont.
    fluidsynth = ["fluidsynth", "-niq", "-o", "synth.dynamic-sample-loading=1", "-g", str(GAIN)]
    effects = ["-R", str(int(reverb)), "-C", str(int(chorus))]
    _run([*fluidsynth, *effects, "-r", str(rate), "-F", wav, soundfont, midi_path])


def render_track(
    index: int,
    *,
    seed: int,
    duration_s: float,
    soundfonts: list[str],
    formats: list[str],
    workdir: str,
    scratch: str,
    out_uri: str,
) -> dict:
    """Compose track ``index``, save its MIDI, render it with FluidSynth and encode it with
    ffmpeg: its manifest row. Files go to ``workdir`` (the WAV to ``scratch``); the row's
    URIs point where they end up under ``out_uri``."""
    track_id = f"s{seed}-{index:06d}"
    song, parts, tags = compose(seed, index, duration_s)
    midi_path = os.path.join(workdir, "midi", f"{track_id}.mid")
    to_midi(song, parts).save(midi_path)
    rng = random.Random(f"raytag-render:{seed}:{index}")  # apart, so a format list can't move music
    sf2, fmt, rate = rng.choice(soundfonts), rng.choice(formats), rng.choice(SAMPLE_RATES)
    channels, reverb, chorus = rng.choice((1, 2)), rng.random() < 0.6, rng.random() < 0.4
    wav, name = os.path.join(scratch, f"{track_id}.wav"), f"{track_id}.{fmt}"
    render_midi(sf2, midi_path, wav, rate, reverb=reverb, chorus=chorus)
    ffmpeg = ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-i", wav]
    trim = ["-t", str(duration_s + TAIL_S), "-ac", str(channels), *CODECS[fmt]]
    _run([*ffmpeg, *trim, os.path.join(workdir, "audio", name)])
    os.remove(wav)
    if is_local(out_uri):
        uri, midi_uri = os.path.join(workdir, "audio", name), midi_path
    else:
        uri, midi_uri = join(out_uri, "audio", name), join(out_uri, "midi", f"{track_id}.mid")
    row = dict(track_id=track_id, uri=uri, tags=tags, split=None, soundfont=os.path.basename(sf2))
    row |= dict(format=fmt, sample_rate=rate, channels=channels, tempo_bpm=float(song.bpm))
    return row | dict(duration_s=float(duration_s), seed=seed, midi_uri=midi_uri)
