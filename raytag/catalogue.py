"""The labelled demo catalogue: MIDI arrangements rendered by FluidSynth (spec: demo-catalogue.md).

Every tag is decided before a note is written, so labels are exact by construction. Each track
draws from its own RNG seeded by ``(seed, index)``, so the catalogue does not depend on how the
workers are scheduled. ``check`` re-derives every tag from the saved MIDI files alone.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import mido
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raytag.storage import arrow_filesystem, filesystem, is_local, join, local_path

# --- The spec: vocabulary and what each tag means -------------------------------------------
FAMILIES: dict[str, range] = {
    "piano": range(0, 8),
    "chromatic_percussion": range(8, 16),
    "organ": range(16, 24),
    "guitar": range(24, 32),
    "bass": range(32, 40),
    "strings": range(40, 52),
    "brass": range(56, 64),
    "reed": range(64, 72),
    "pipe": range(72, 80),
    "synth_lead": range(80, 88),
    "synth_pad": range(88, 96),
}
VOCABULARY: tuple[str, ...] = (
    *FAMILIES,
    *("drums", "slow", "medium", "fast", "major", "minor", "loud", "quiet"),
    *("high_register", "low_register"),
)
EXCLUSIVE = (("slow", "medium", "fast"), ("major", "minor"), ("loud", "quiet"))
EXCLUSIVE += (("high_register", "low_register"),)
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
VELOCITIES = {"loud": (90, 127), "quiet": (30, 60)}
DRUM_CHANNEL = 9

# --- Generator settings ----------------------------------------------------------------------
TEMPOS = {"slow": (55, 84), "medium": (96, 124), "fast": (136, 180)}  # >5 BPM from 90 and 130
MELODY_CENTRES = {"high_register": (72, 92), "low_register": (40, 60)}
KEY_NAMES = {
    "major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
    "minor": ("Cm", "C#m", "Dm", "Ebm", "Em", "Fm", "F#m", "Gm", "G#m", "Am", "Bbm", "Bm"),
}
GAIN = 0.25  # one FluidSynth gain for all tracks (at 0.3 the loudest of 40 peaked at 0.99)
TPB = 480  # MIDI ticks per beat
TAIL_S = 0.5  # release and reverb kept after the last note
SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)
CODECS = {
    "wav": ("-c:a", "pcm_s16le"),
    "flac": ("-c:a", "flac"),
    "ogg": ("-c:a", "libvorbis", "-q:a", "5"),
    "mp3": ("-c:a", "libmp3lame", "-b:a", "160k"),
}
# The SoundFonts whose keys the table below was probed in (Debian packages fluid-soundfont-gm,
# timgm6mb-soundfont, musescore-general-soundfont-small, opl3-soundfont): three sets of samples
# (MuseScore_General reuses most of FluidR3_GM's) and one FM synthesizer. Not sf_GMbank.sf2
# (csound-soundfont): it shares TimGM6mb's samples, so it cannot stand in for a held-out one.
DEFAULT_SOUNDFONTS = tuple(
    f"/usr/share/sounds/{name}"
    for name in (
        "sf2/FluidR3_GM.sf2",
        "sf2/TimGM6mb.sf2",
        "sf3/MuseScore_General_Lite.sf3",
        "sf2/OPL-3_FM_128M.sf2",
    )
)
GENERATOR_VERSION = 2  # bump when the music changes, so existing catalogues get re-rendered
META_KEY = b"raytag.catalogue"

# Arrangement vocabulary. Rhythms are (onset, length[, scale-step offset]) in beats of a 4/4 bar
# (3/4 bars keep what starts before beat 3); melody cells are note lengths in ticks.
PROGRESSIONS = (  # scale degrees of the chords; the last chord of a track is always the tonic
    *((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (0, 3, 0, 4), (0, 5, 1, 4)),
    *((0, 6, 5, 6), (0, 2, 3, 4), (0, 3, 5, 4), (0, 4, 0, 4), (0, 0, 3, 3)),
)
MELODY_CELLS = {
    "flowing": ((240, 240), (480,), (720, 240), (480, 480)),
    "sparse": ((960,), (1440, 480), (1920,), (960, 960)),
    "busy": ((120, 120, 240), (240, 240), (120, 120, 120, 120), (240, 120, 120)),
    "syncopated": ((720, 720, 480), (240, 480, 240), (360, 360, 240)),
    "triplets": ((160, 160, 160), (320, 160), (480,)),
    "dotted": ((360, 120), (720, 240), (480,)),
}
CHORD_RHYTHMS = {
    "sustain": ((0, 4),),
    "halves": ((0, 2), (2, 2)),
    "beats": ((0, 1), (1, 1), (2, 1), (3, 1)),
    "eighths": tuple((i / 2, 0.5) for i in range(8)),
    "anticipated": ((0, 1.5), (1.5, 2.5)),
    "dotted": ((0, 1.5), (1.5, 1.5), (3, 1)),
    "afterbeats": ((1, 1), (2, 1), (3, 1)),
}
BASS_RHYTHMS = {
    "roots": ((0, 4, 0),),
    "root_fifth": ((0, 2, 0), (2, 2, 4)),
    "beats": ((0, 1, 0), (1, 1, 0), (2, 1, 4), (3, 1, 0)),
    "walking": ((0, 1, 0), (1, 1, 2), (2, 1, 4), (3, 1, 5)),
    "octaves": tuple((i / 2, 0.5, 7 * (i % 2)) for i in range(8)),
    "syncopated": ((0, 1.5, 0), (1.5, 1, 0), (2.5, 1.5, 4)),
}
COUNTER_RHYTHMS = {"whole": ((0, 4),), "halves": ((0, 2), (2, 2)), "dotted": ((0, 3), (3, 1))}
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40)  # all but OPL-3 have each; FluidSynth plays kit 0 there
# The keys that every default soundfont sounds clearly for a program: FluidR3_GM and TimGM6mb
# probed with 1 s notes at velocities 30 and 127 (FluidR3_GM's contrabass, for one, is silent
# above 57), then narrowed by tools/probe_soundfonts.py for MuseScore_General and OPL-3.
# Unlisted programs sound from 21 to 108. Parts are folded by octaves into their program's keys.
_PROGRAMS_BY_HIGHEST_KEY = {
    57: (43,),
    70: (47,),
    72: (58, 67),
    77: (89,),
    78: (11, 78),
    81: (46,),
    82: (39,),
    84: (28, 33, 34, 35, 36, 37, 65, 70),
    85: (31, 69),
    86: (23,),
    88: (95,),
    90: (26, 71, 92),
    92: (24,),
    93: (4, 40, 85),
    94: (0, 1, 3, 5, 15),
    95: (13,),
    96: (19, 22, 41, 44, 45, 48, 57, 59, 60, 61, 64, 68, 82),
    97: (49, 74),
    99: (32, 66),
    100: (88,),
    105: (25,),
    106: (6, 87, 91),
}
HIGHEST_KEY = {prog: key for key, progs in _PROGRAMS_BY_HIGHEST_KEY.items() for prog in progs}
LOWEST_KEY = {68: 36}  # the oboe
DRUM_PATTERNS = {  # GM key -> 16 sixteenth steps of a 4/4 bar (every pattern hits every beat)
    "rock": {36: "x.......x.......", 38: "....x.......x...", 42: "x.x.x.x.x.x.x.x."},
    "disco": {36: "x...x...x...x...", 38: "....x.......x...", 46: "..x...x...x...x."},
    "halftime": {36: "x.........x.....", 38: "........x.......", 42: "x.x.x.x.x.x.x.x."},
    "funk": {36: "x..x..x...x..x..", 38: "....x..x.x..x...", 42: "xxxxxxxxxxxxxxxx"},
    "bossa": {36: "x..xx..xx..xx..x", 37: "x..x..x...x..x..", 42: "x.x.x.x.x.x.x.x."},
    "jazz": {51: "x...x.x.x...x.x.", 44: "....x.......x...", 36: "x..............."},
    "breakbeat": {36: "x.x.......xx....", 38: "....x..x.x..x..x", 42: "x.x.x.x.x.x.x.x."},
    "shaker": {70: "xxxxxxxxxxxxxxxx", 36: "x.......x.......", 39: "....x.......x..."},
}


@dataclass
class Part:
    """One MIDI channel; notes are (start tick, length in ticks, pitch, velocity)."""

    name: str
    program: int
    channel: int
    pan: int = 64
    notes: list[tuple[int, int, int, int]] = field(default_factory=list)


@dataclass
class Song:
    """What all parts of a track share: key, tempo, metre, harmony and dynamic level."""

    rng: random.Random
    tonic: int
    mode: str
    bpm: int
    meter: int
    ticks: int
    loudness: str = "loud"
    sevenths: bool = False
    chords: list[tuple[int, int]] = field(default_factory=list)  # (start tick, scale degree)

    def pitch(self, step: int) -> int:
        """MIDI pitch of an absolute scale step (step 0 is the tonic in MIDI octave -1)."""
        return self.tonic + 12 * (step // 7) + SCALES[self.mode][step % 7]

    def in_scale(self, lo: int, hi: int) -> list[int]:
        """The scale's pitches in [lo, hi], kept within the piano range."""
        scale = SCALES[self.mode]
        return [p for p in range(max(lo, 21), min(hi, 108) + 1) if (p - self.tonic) % 12 in scale]

    def root_step(self, tick: int, centre: int) -> int:
        """Scale step of the chord root at ``tick``, in the octave nearest ``centre``."""
        degree = self.chords[bisect.bisect_right(self.chords, (tick, 99)) - 1][1]
        return degree + 7 * round((centre - self.pitch(degree)) / 12)

    def chord_tones(self, tick: int, lo: int, hi: int) -> list[int]:
        """Pitches in [lo, hi] of the diatonic triad (or seventh chord) sounding at ``tick``."""
        root = self.root_step(tick, 60)
        pcs = {self.pitch(root + k) % 12 for k in ((0, 2, 4, 6) if self.sevenths else (0, 2, 4))}
        return [p for p in range(lo, hi + 1) if p % 12 in pcs]

    def dynamics(self, lead: bool = False) -> tuple[int, float]:
        """A part's base velocity and legato (the fraction of each slot that sounds).

        The melody takes the upper half of the velocity range so that it stands out.
        """
        lo, hi = VELOCITIES[self.loudness]
        return self.rng.randint((lo + hi) // 2 if lead else lo, hi), self.rng.uniform(0.65, 1.0)

    def velocity(self, base: int, accent: int = 0) -> int:
        """A note's velocity: the part's level, an accent and jitter, kept inside the range."""
        lo, hi = VELOCITIES[self.loudness]
        return max(lo, min(hi, base + accent + self.rng.randint(-8, 8)))

    def bar_slots(self, rhythm: tuple) -> list[tuple]:
        """Absolute (tick, length, *extra) of a one-bar rhythm repeated over the whole track."""
        out = []
        for bar in range(0, self.ticks, self.meter * TPB):
            for onset, length, *extra in rhythm:
                start = bar + int(onset * TPB)
                if onset < self.meter and start < self.ticks:
                    end = min(bar + int(min(onset + length, self.meter) * TPB), self.ticks)
                    out.append((start, end - start, *extra))
        return out


def coverage(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: for how long a part sounds."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


def family_of(program: int) -> str | None:
    """The spec's instrument family of a GM program (None for the unused 52-55 and 96-127)."""
    return next((name for name, programs in FAMILIES.items() if program in programs), None)


def key_range(program: int) -> tuple[int, int]:
    """The lowest and highest key a GM program sounds in every installed soundfont."""
    return LOWEST_KEY.get(program, 21), HIGHEST_KEY.get(program, 108)


def _fold(part: Part) -> None:
    """Move notes by octaves into the program's keys (pitch classes, so the scale, stay)."""
    lo, hi = key_range(part.program)
    folded = set()
    for start, length, pitch, vel in part.notes:
        while pitch > hi:
            pitch -= 12
        while pitch < lo:
            pitch += 12
        folded.add((start, length, pitch, vel))  # a set: folded chord voices may coincide
    part.notes = sorted(folded)


def _melody(song: Song, part: Part, centre: int) -> None:
    """A scale-step random walk on a repeated two-bar rhythm, ending on the tonic."""
    rng, phrase, rhythm, filled = song.rng, 2 * song.meter * TPB, [], 0
    cells, rest_p = MELODY_CELLS[rng.choice(sorted(MELODY_CELLS))], rng.uniform(0, 0.12)
    while filled < phrase:
        for length in rng.choice(cells):
            length = min(length, phrase - filled)
            if length > 0:
                rhythm.append(-length if rng.random() < rest_p else length)  # negative: a rest
                filled += length
    rhythm[0] = abs(rhythm[0])  # a phrase never starts with a rest
    scale, (base, legato) = song.in_scale(centre - 14, centre + 14), song.dynamics(lead=True)
    i, t = len(scale) // 2, 0
    while t < song.ticks:
        for length in rhythm:
            if length > 0 and t < song.ticks:
                i = abs(i + rng.choice((-4, -3, -2, -1, -1, 0, 1, 1, 2, 3, 4)))
                i = min(i, 2 * (len(scale) - 1) - i)  # reflect at both ends of the range
                if t % TPB == 0 and rng.random() < 0.6:  # strong beats lean on chord tones
                    chord = set(song.chord_tones(t, scale[0], scale[-1]))
                    tones = [j for j, p in enumerate(scale) if p in chord]
                    i = min(tones, key=lambda j: abs(j - i))
                dur = max(60, int(min(length, song.ticks - t) * legato))
                part.notes.append((t, dur, scale[i], song.velocity(base, 6 * (t % TPB == 0))))
            t += abs(length)
    start, _, pitch, vel = part.notes[-1]
    tonic = min((p for p in scale if p % 12 == song.tonic), key=lambda p: abs(p - pitch))
    part.notes[-1] = (start, song.ticks - start, tonic, vel)


def _chords(song: Song, part: Part, centre: int) -> None:
    """Block chords in one of several rhythms: 2-4 voices near ``centre``, sometimes drop-2."""
    voices, drop2 = song.rng.choice((2, 3, 3, 4)), song.rng.random() < 0.3
    base, legato = song.dynamics()
    for t, length in song.bar_slots(CHORD_RHYTHMS[song.rng.choice(sorted(CHORD_RHYTHMS))]):
        tones = song.chord_tones(t, centre - 12, centre + 12)
        voicings = [tones[k : k + voices] for k in range(len(tones) - voices + 1)]
        voicing = min(voicings, key=lambda v: abs(sum(v) / voices - centre))  # nearest inversion
        if drop2 and voices >= 3:
            voicing[-2] -= 12
        vel = song.velocity(base)
        part.notes += [(t, max(60, int(length * legato)), p, vel) for p in voicing]


def _bass(song: Song, part: Part, centre: int) -> None:
    """A bass line on chord roots, fifths and passing scale steps."""
    base, legato = song.dynamics()
    for t, length, offset in song.bar_slots(BASS_RHYTHMS[song.rng.choice(sorted(BASS_RHYTHMS))]):
        pitch = song.pitch(song.root_step(t, centre) + offset)
        part.notes.append((t, max(60, int(length * legato)), pitch, song.velocity(base)))


def _counter(song: Song, part: Part, centre: int) -> None:
    """A slow counter-line that moves to one of the two nearest chord tones."""
    (base, _), pitch = song.dynamics(), centre
    for t, length in song.bar_slots(COUNTER_RHYTHMS[song.rng.choice(sorted(COUNTER_RHYTHMS))]):
        tones = song.chord_tones(t, centre - 9, centre + 9)
        pitch = song.rng.choice(sorted(tones, key=lambda p: (abs(p - pitch), p))[:2])
        part.notes.append((t, length, pitch, song.velocity(base)))


def _arpeggio(song: Song, part: Part, centre: int) -> None:
    """Broken chords up, down, up-down or at random, in eighths, sixteenths or triplets."""
    rng, (base, legato) = song.rng, song.dynamics()
    step, order, span = rng.choice((240, 120, 160)), rng.randrange(4), rng.choice((12, 19))
    for k, t in enumerate(range(0, song.ticks, step)):
        tones = song.chord_tones(t, centre, centre + span)
        cycle = (tones, tones[::-1], tones + tones[-2:0:-1], [rng.choice(tones)])[order]
        dur = max(60, int(min(step, song.ticks - t) * legato))
        part.notes.append((t, dur, cycle[k % len(cycle)], song.velocity(base)))


def _drums(song: Song, part: Part) -> None:
    """One of several beats, sometimes after a one-bar intro, sometimes with an opening crash."""
    pattern, bar = DRUM_PATTERNS[song.rng.choice(sorted(DRUM_PATTERNS))], song.meter * TPB
    start = bar if song.ticks >= 4 * bar and song.rng.random() < 0.3 else 0
    base, _ = song.dynamics()
    for t0 in range(start, song.ticks, bar):
        for key, hits in pattern.items():
            for i, hit in enumerate(hits[: 4 * song.meter]):
                if hit == "x" and t0 + 120 * i < song.ticks:
                    vel = song.velocity(base, 8 * (i % 4 == 0))  # accent the beats
                    part.notes.append((t0 + 120 * i, 120, key, vel))
    if song.rng.random() < 0.5:
        part.notes.append((start, 120, 49, song.velocity(base, 8)))


ACCOMPANIMENT = {  # role -> (builder, lowest and highest register centre)
    "chords": (_chords, 48, 76),
    "bass": (_bass, 30, 50),
    "counter": (_counter, 45, 80),
    "arpeggio": (_arpeggio, 45, 80),
}


def _swing(part: Part, end: int) -> None:
    """Delay off-beat eighths to 2/3 of the beat by warping time within each whole beat."""

    def warp(tick: int) -> int:
        beat, pos = divmod(tick, TPB)
        if (beat + 1) * TPB > end:  # the last, partial beat stays as it is
            return tick
        return beat * TPB + (pos * 4 // 3 if pos < 240 else 320 + (pos - 240) * 2 // 3)

    part.notes = [(warp(s), warp(s + n) - warp(s), p, v) for s, n, p, v in part.notes]


def _sounds_enough(song: Song, part: Part) -> bool:
    """The spec renders only parts sounding for half the track; keep a margin above that."""
    return coverage([(s, s + n) for s, n, *_ in part.notes]) >= 0.6 * song.ticks


def compose(seed: int, index: int, duration_s: float) -> tuple[Song, list[Part], list[str]]:
    """Decide a track's tags, then write parts that satisfy them: (song, parts, tags)."""
    rng = random.Random(f"raytag-catalogue:{seed}:{index}")
    tempo, register = rng.choice(sorted(TEMPOS)), rng.choice(sorted(MELODY_CENTRES))
    bpm, meter = rng.randint(*TEMPOS[tempo]), rng.choice((4, 4, 4, 3))
    ticks = round(duration_s * bpm / 60 * TPB)
    song = Song(rng, rng.randrange(12), rng.choice(sorted(SCALES)), bpm, meter, ticks)
    song.loudness, song.sevenths = rng.choice(sorted(VELOCITIES)), rng.random() < 0.3
    progression = rng.choice(PROGRESSIONS)
    span = rng.choice((meter, 2 * meter, 2 if meter == 4 else meter))  # beats per chord
    song.chords = [(t, progression[k % 4]) for k, t in enumerate(range(0, ticks, span * TPB))]
    song.chords[-1] = (song.chords[-1][0], 0)  # end on the tonic chord
    roles, swing = rng.sample(sorted(ACCOMPANIMENT), rng.randint(1, 3)), rng.random() < 0.2
    parts, centre = [], rng.randint(*MELODY_CENTRES[register])
    for channel, role in enumerate(["melody", *roles]):
        family = rng.choice(sorted(FAMILIES))  # any family in any role
        for _ in range(200):  # redraw until the part sounds long enough (and in its register)
            part = Part(role, rng.choice(FAMILIES[family]), channel, rng.randint(24, 104))
            lo, hi = key_range(part.program)
            if role == "melody":
                _melody(song, part, min(max(centre, lo + 10), hi - 10))
            else:
                build, low, high = ACCOMPANIMENT[role]
                build(song, part, min(max(rng.randint(low, high), lo + 6), hi - 6))
            _fold(part)
            if swing:
                _swing(part, ticks)
            median = statistics.median(n[2] for n in part.notes)
            if role == "melody" and (median < 72 if register == "high_register" else median > 60):
                centre += 2 if register == "high_register" else -2
            elif _sounds_enough(song, part):
                break
        else:
            raise RuntimeError(f"could not compose the {role} of track {seed}:{index}")
        parts.append(part)
    if rng.random() < 0.6:
        parts.append(Part("drums", rng.choice(DRUM_KITS), DRUM_CHANNEL))
        _drums(song, parts[-1])
        if swing:
            _swing(parts[-1], ticks)
    on = {tempo, song.mode, song.loudness, register}
    on |= {family_of(p.program) if p.channel != DRUM_CHANNEL else "drums" for p in parts}
    return song, parts, [tag for tag in VOCABULARY if tag in on]


def to_midi(song: Song, parts: list[Part]) -> mido.MidiFile:
    """A type-1 MIDI file: a conductor track (tempo, metre, key) and one named track per part."""
    mid = mido.MidiFile(type=1, ticks_per_beat=TPB)
    conductor = mido.MidiTrack([mido.MetaMessage("track_name", name="conductor")])
    conductor.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(song.bpm)))
    conductor.append(mido.MetaMessage("time_signature", numerator=song.meter, denominator=4))
    conductor.append(mido.MetaMessage("key_signature", key=KEY_NAMES[song.mode][song.tonic]))
    conductor.append(mido.MetaMessage("end_of_track", time=song.ticks))
    mid.tracks.append(conductor)
    for part in parts:
        ch = part.channel
        track = mido.MidiTrack([mido.MetaMessage("track_name", name=part.name)])
        track.append(mido.Message("program_change", channel=ch, program=part.program))
        track.append(mido.Message("control_change", channel=ch, control=10, value=part.pan))
        events = []
        for start, length, pitch, vel in part.notes:
            end = min(start + length, song.ticks)
            events.append((start, 1, mido.Message("note_on", channel=ch, note=pitch, velocity=vel)))
            events.append((end, 0, mido.Message("note_off", channel=ch, note=pitch)))
        now = 0
        for tick, _, msg in sorted(events, key=lambda e: e[:2]):  # note-offs before note-ons
            track.append(msg.copy(time=tick - now))
            now = tick
        track.append(mido.MetaMessage("end_of_track", time=song.ticks - now))
        mid.tracks.append(track)
    return mid


def _run(cmd: list[str]) -> None:
    """Run a tool and fail with its own error message."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")


def render_midi(
    soundfont: str, midi_path: str, wav: str, rate: int, *, reverb: bool, chorus: bool
) -> None:
    """Render a MIDI file to WAV with FluidSynth at the catalogue's one fixed gain."""
    # Dynamic sample loading reads only the samples a track plays: 5x faster with FluidR3_GM.
    fluidsynth = ["fluidsynth", "-niq", "-o", "synth.dynamic-sample-loading=1", "-g", str(GAIN)]
    effects = ["-R", str(int(reverb)), "-C", str(int(chorus))]
    _run([*fluidsynth, *effects, "-r", str(rate), "-F", wav, soundfont, midi_path])


def _render_track(job: tuple) -> dict:
    """Compose one track, save its MIDI, render it with FluidSynth and encode it with ffmpeg."""
    index, seed, duration_s, soundfonts, formats, workdir, scratch, out_uri = job
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


def _assign_splits(n: int, seed: int, splits: tuple[float, float, float]) -> list[str]:
    """Exact split sizes (at least one valid and test track when asked for and n >= 3)."""
    valid, test = (max(int(n >= 3 and f > 0), round(n * f)) for f in splits[1:])
    names = ["valid"] * min(valid, n) + ["test"] * min(test, n - min(valid, n))
    names = ["train"] * (n - len(names)) + names
    random.Random(f"raytag-splits:{seed}").shuffle(names)
    return names


def _stored_params(manifest_uri: str) -> dict | None:
    """The parameters an existing catalogue was made with (None when there is none)."""
    fs, path = arrow_filesystem(manifest_uri)
    try:
        metadata = pq.read_schema(path, filesystem=fs).metadata or {}
    except (FileNotFoundError, OSError):
        return None
    return json.loads(metadata[META_KEY]) if META_KEY in metadata else None


def synthesize(
    out_uri: str,
    n_tracks: int,
    seed: int = 0,
    *,
    duration_s: float = 10.0,
    soundfonts: list[str] | None = None,
    formats: list[str] | None = None,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    workers: int | None = None,
) -> str:
    """Render a labelled catalogue of ``n_tracks`` under ``out_uri``; returns the manifest URI.

    Audio goes to ``<out>/audio/``, MIDI to ``<out>/midi/`` and the manifest, written last, to
    ``<out>/manifest.parquet``. Returns at once if a manifest made with the same parameters is
    already there.
    """
    soundfonts = [os.path.abspath(p) for p in soundfonts or DEFAULT_SOUNDFONTS]
    formats = list(formats or CODECS)
    if n_tracks < 1 or not 2.0 <= duration_s <= 600.0:
        raise ValueError("need n_tracks >= 1 and 2 <= duration_s <= 600")
    if unknown := set(formats) - set(CODECS):
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {sorted(CODECS)}")
    if missing := [p for p in soundfonts if not os.path.isfile(p)]:
        raise FileNotFoundError(f"soundfonts not found: {missing}")
    probed = {os.path.basename(os.path.realpath(p)) for p in DEFAULT_SOUNDFONTS}
    if unprobed := [p for p in soundfonts if os.path.basename(os.path.realpath(p)) not in probed]:
        warnings.warn(
            f"{unprobed}: keys not probed; a part may fall where its instrument is silent and "
            "still be tagged. Run tools/probe_soundfonts.py on them and narrow the key table.",
            stacklevel=2,
        )
    if missing := [tool for tool in ("fluidsynth", "ffmpeg") if shutil.which(tool) is None]:
        raise FileNotFoundError(f"{missing} not on PATH (apt-get install fluidsynth ffmpeg)")
    if len(splits) != 3 or abs(sum(splits) - 1) > 1e-6 or min(splits) < 0:
        raise ValueError("splits are three fractions (train, valid, test) summing to 1")
    params = dict(version=GENERATOR_VERSION, n_tracks=n_tracks, seed=seed, gain=GAIN)
    params |= dict(duration_s=float(duration_s), soundfonts=soundfonts, formats=formats)
    params["splits"] = [float(f) for f in splits]
    manifest_uri = join(out_uri, "manifest.parquet")
    stored = _stored_params(manifest_uri)
    if stored == params:
        return manifest_uri
    fs, path = arrow_filesystem(manifest_uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)  # an old manifest must not vouch for files being rewritten
    with tempfile.TemporaryDirectory(prefix="raytag-catalogue-") as scratch:
        workdir = os.path.abspath(local_path(out_uri)) if is_local(out_uri) else scratch
        for sub in ("audio", "midi"):
            os.makedirs(os.path.join(workdir, sub), exist_ok=True)
        jobs = [
            (i, seed, duration_s, soundfonts, formats, workdir, scratch, out_uri)
            for i in range(n_tracks)
        ]
        # Threads suffice: a track spends ~98% of its time in its own fluidsynth and ffmpeg
        # processes (composing takes a few ms), and threads need no pickling, __main__ guard or
        # fork (forking a process that runs s3fs or Ray threads can deadlock).
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            rows = list(pool.map(_render_track, jobs))
        if not is_local(out_uri):
            fs, root = filesystem(out_uri)
            files = [
                f"{sub}/{row['track_id']}.{ext}"
                for row in rows
                for sub, ext in (("midi", "mid"), ("audio", row["format"]))
            ]
            fs.put([os.path.join(scratch, f) for f in files], [join(root, f) for f in files])
    for row, split in zip(rows, _assign_splits(n_tracks, seed, splits), strict=True):
        row["split"] = split
    table = pa.Table.from_pylist(rows)  # track_id, uri, tags, split and the extras
    pq.write_table(
        table.replace_schema_metadata({META_KEY: json.dumps(params)}), path, filesystem=fs
    )
    return manifest_uri


def _key_tonic(key: str) -> tuple[int, str]:
    """Tonic pitch class and mode of a MIDI key-signature name such as 'F#m' or 'Bb'."""
    name = key.removesuffix("m")
    tonic = "C D EF G A B".index(name[0]) + name.count("#") - name.count("b")
    return tonic % 12, "minor" if key.endswith("m") else "major"


def _read_notes(mid: mido.MidiFile) -> tuple[list[int], str | None, int, dict, list[tuple]]:
    """Tempos, key, length in ticks, programs by channel and notes (track, channel, pitch,
    velocity, on tick, off tick) of a MIDI file."""
    tempos, key, length, notes, programs = [], None, 0, [], defaultdict(set)
    for track in mid.tracks:
        now, name, held = 0, "", defaultdict(list)
        for msg in track:
            now += msg.time
            if msg.type == "track_name":
                name = msg.name
            elif msg.type == "set_tempo":
                tempos.append(msg.tempo)
            elif msg.type == "key_signature":
                key = msg.key
            elif msg.type == "program_change":
                programs[msg.channel].add(msg.program)
            elif msg.type == "note_on" and msg.velocity > 0:
                held[msg.channel, msg.note].append((now, msg.velocity))
            elif msg.type in ("note_on", "note_off") and held[msg.channel, msg.note]:
                on, vel = held[msg.channel, msg.note].pop(0)
                notes.append((name, msg.channel, msg.note, vel, on, now))
        length = max(length, now)
    return tempos, key, length, programs, notes


def derive_tags(mid: mido.MidiFile) -> tuple[list[str], list[str]]:
    """The spec's tags read off a MIDI file alone, and the spec rules it breaks (if any)."""
    tempos, key, length, programs, notes = _read_notes(mid)
    melody = sorted((n for n in notes if n[0] == "melody"), key=lambda n: n[4])
    channels = sorted({n[1] for n in notes})
    if len(set(tempos)) != 1 or key is None or not melody or len(channels) < 2:
        return [], ["needs one tempo, a key signature, a melody track and another part"]
    on, issues, beat = set(), [], mid.ticks_per_beat
    for ch in channels:
        drum = ch == DRUM_CHANNEL  # a drum hit counts as sounding for one beat
        spans = [(n[4], n[4] + beat if drum else n[5]) for n in notes if n[1] == ch]
        family = "drums" if drum else family_of(min(programs[ch], default=-1))
        if not drum and (len(programs[ch]) != 1 or family is None):
            issues.append(f"channel {ch} plays programs {sorted(programs[ch])}")
        if coverage(spans) < 0.5 * length:
            issues.append(f"channel {ch} sounds for less than half the track but is rendered")
        elif family:
            on.add(family)
    bpm = mido.tempo2bpm(tempos[0])
    on.add("slow" if bpm < 90 else "medium" if bpm <= 130 else "fast")
    if min(abs(bpm - 90), abs(bpm - 130)) < 5 - 0.01:  # 0.01: MIDI tempo rounding
        issues.append(f"tempo {bpm:.1f} BPM is within 5 BPM of a boundary")
    tonic, mode = _key_tonic(key)
    pitched = [n for n in notes if n[1] != DRUM_CHANNEL]
    if outside := sorted({n[2] % 12 for n in pitched if (n[2] - tonic) % 12 not in SCALES[mode]}):
        issues.append(f"pitch classes {outside} are outside {key} ({mode})")
    if melody[-1][2] % 12 != tonic:  # the tonic is heard, not just declared
        issues.append(f"melody ends on pitch class {melody[-1][2] % 12}, not the tonic {tonic}")
    on.add(mode)
    on |= {tag for tag, (lo, hi) in VELOCITIES.items() if all(lo <= n[3] <= hi for n in notes)}
    median = statistics.median(n[2] for n in melody)
    on |= {"high_register"} if median >= 72 else {"low_register"} if median <= 60 else set()
    issues += [f"not exactly one of {group}" for group in EXCLUSIVE if len(on & set(group)) != 1]
    return [tag for tag in VOCABULARY if tag in on], issues


def check(out_uri: str) -> list[str]:
    """Re-derive every track's tags from its saved MIDI; list what disagrees (empty: all good)."""
    afs, path = arrow_filesystem(join(out_uri, "manifest.parquet"))
    rows = pq.read_table(path, filesystem=afs).to_pylist()
    fs, root = filesystem(out_uri)
    problems = [] if len({r["track_id"] for r in rows}) == len(rows) else ["duplicate track_ids"]
    for row in rows:
        tid = row["track_id"]
        try:
            midi_bytes = fs.cat_file(join(root, "midi", f"{tid}.mid"))
            mid = mido.MidiFile(file=io.BytesIO(midi_bytes))
        except (OSError, EOFError, ValueError) as err:  # missing, truncated or not MIDI
            problems.append(f"{tid}: MIDI unreadable ({type(err).__name__}: {err})")
            continue
        tags, issues = derive_tags(mid)
        problems += [f"{tid}: {issue}" for issue in issues]
        if list(row["tags"]) != tags:
            problems.append(f"{tid}: the manifest says {list(row['tags'])}, the MIDI gives {tags}")
        if not fs.exists(filesystem(row["uri"])[1]):
            problems.append(f"{tid}: audio {row['uri']} is missing")
    return problems
