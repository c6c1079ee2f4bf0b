"""Which keys each GM program sounds in a SoundFont: how the catalogue's key table grows.

A part whose notes fall where its instrument is silent would carry a family tag it never plays,
so the generator folds every part into keys that sound in every SoundFont it supports. This
renders each program's 88 keys as 1 s notes at velocities 30 and 127 (the quiet and loud
extremes; no reverb or chorus, the catalogue's gain) and calls a key sounding when its peak
is above -60 dBFS and twice the tail of the note before. A program's range is its longest run
of sounding keys. It prints the catalogue's current table narrowed to what every given
SoundFont sounds, ready to paste into raytag/catalogue/soundfonts.py before supporting a new
SoundFont:

    .venv/bin/python tools/probe_soundfonts.py /usr/share/sounds/sf2/OPL-3_FM_128M.sf2
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import mido
import numpy as np
import soundfile as sf

from raytag.catalogue import FAMILIES, TPB, key_range, render_midi

RATE = 16000
KEYS = range(21, 109)
VELOCITIES = (30, 127)
NOTE_S, STEP_S = 1.0, 2.5  # long enough for slow attacks; long gaps let releases fade
FLOOR_DBFS = -60.0  # quieter than this at velocity 30 is lost in a mix
OVER_TAIL = 2.0  # a key must rise clearly above the release of the key before it


def probe_midi(program: int) -> mido.MidiFile:
    """Every key at each velocity, one note per STEP_S, at 60 BPM (one beat = one second)."""
    mid = mido.MidiFile(type=0, ticks_per_beat=TPB)
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(60))])
    track.append(mido.Message("program_change", program=program))
    gap = 0
    for velocity in VELOCITIES:
        for key in KEYS:
            track.append(mido.Message("note_on", note=key, velocity=velocity, time=gap))
            track.append(mido.Message("note_off", note=key, time=int(NOTE_S * TPB)))
            gap = int((STEP_S - NOTE_S) * TPB)
    mid.tracks.append(track)
    return mid


def longest_run(keys: set[int]) -> tuple[int, int]:
    """(lowest, highest) of the longest run of consecutive keys; (0, -1) when there is none."""
    best, start = (0, -1), None
    for key in range(KEYS.start, KEYS.stop + 1):
        if key in keys:
            start = key if start is None else start
        elif start is not None:
            best = max(best, (start, key - 1), key=lambda r: r[1] - r[0])
            start = None
    return best


def sounding_range(soundfont: str, program: int, workdir: str) -> tuple[int, int]:
    """The keys of ``program`` that sound at every probed velocity, as (lowest, highest)."""
    midi, wav = (os.path.join(workdir, f"{program}.{ext}") for ext in ("mid", "wav"))
    probe_midi(program).save(midi)
    render_midi(soundfont, midi, wav, RATE, reverb=False, chorus=False)
    audio, _ = sf.read(wav, always_2d=True)
    mono = np.abs(audio.mean(axis=1))
    heard = set(KEYS)
    for v in range(len(VELOCITIES)):
        for i, key in enumerate(KEYS):
            onset = int((v * len(KEYS) + i) * STEP_S * RATE)
            peak = mono[onset + int(0.02 * RATE) : onset + int(NOTE_S * RATE)].max()
            tail = mono[max(0, onset - int(0.1 * RATE)) : onset].max(initial=0.0)
            if 20 * np.log10(peak + 1e-12) <= FLOOR_DBFS or peak <= OVER_TAIL * tail:
                heard.discard(key)
    return longest_run(heard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("soundfonts", nargs="+")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    programs = [p for family in FAMILIES.values() for p in family]
    ranges = {p: key_range(p) for p in programs}
    for soundfont in args.soundfonts:
        with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(args.threads) as pool:
            found = pool.map(lambda p, sf2=soundfont: sounding_range(sf2, p, workdir), programs)
            for p, (lo, hi) in zip(programs, found, strict=True):
                narrowed = max(ranges[p][0], lo), min(ranges[p][1], hi)
                if narrowed != ranges[p]:
                    print(f"{os.path.basename(soundfont)}: program {p} {ranges[p]} -> {narrowed}")
                ranges[p] = narrowed
    by_highest = defaultdict(list)
    for p, (_, hi) in ranges.items():
        if hi < KEYS[-1]:
            by_highest[hi].append(p)
    print("_PROGRAMS_BY_HIGHEST_KEY = {")
    for hi in sorted(by_highest):
        progs = by_highest[hi]
        print(f"    {hi}: ({', '.join(map(str, progs))}{',' if len(progs) == 1 else ''}),")
    print("}")
    lowest = {p: lo for p, (lo, _) in ranges.items() if lo > KEYS[0]}
    print(f"LOWEST_KEY = {lowest}")


if __name__ == "__main__":
    main()
