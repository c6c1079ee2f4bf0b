"""Composition: a track's tags are drawn first, then parts are written that satisfy them.

Every tag is decided before a note is written, so labels are exact by construction. Each
track draws from its own RNG seeded by ``(seed, index)``, so the music does not depend on
how the workers are scheduled.
"""

from __future__ import annotations

import bisect
import random
import statistics
from dataclasses import dataclass, field

import mido

from raytag.catalogue.labels import (
    DRUM_CHANNEL,
    FAMILIES,
    SCALES,
    VELOCITIES,
    VOCABULARY,
    coverage,
    family_of,
)
from raytag.catalogue.soundfonts import key_range

TEMPOS = {"slow": (55, 84), "medium": (96, 124), "fast": (136, 180)}  # >5 BPM from 90 and 130
MELODY_CENTRES = {"high_register": (72, 92), "low_register": (40, 60)}
KEY_NAMES = {
    "major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
    "minor": ("Cm", "C#m", "Dm", "Ebm", "Em", "Fm", "F#m", "Gm", "G#m", "Am", "Bbm", "Bm"),
}
TPB = 480  # MIDI ticks per beat

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
