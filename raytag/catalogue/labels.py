"""The catalogue's spec: the vocabulary, what each tag means, and the tags read back off a
MIDI file alone (how ``check`` proves the labels without trusting the generator).
"""

from __future__ import annotations

import statistics
from collections import defaultdict

import mido

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
