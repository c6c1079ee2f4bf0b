"""Can major be told from minor in a labelled catalogue's audio, with no learning at all?

A yardstick for a model's major/minor tags (not a bound either way): each track's pitch-class
profile (the power of raytag's semitone bands, log-compressed, summed over time and folded
into 12 pitch classes) is correlated with the Krumhansl-Kessler major and minor key
profiles at all 12 tonics; the best major correlation minus the best minor one scores
"major". Prints that score's ROC-AUC against the track's major tag and writes it as JSON:

    .venv/bin/python tools/key_profile_mode.py bench/data/learning/heldout-timgm6mb-s2-n300-d10 \
        --output bench/results/key_profile_mode_heldout.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from sklearn.metrics import roc_auc_score

from raytag.audio import decode
from raytag.models.features import LogSemitone

# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def pitch_class_profile(bands: LogSemitone, wave: np.ndarray, lowest_note: int) -> np.ndarray:
    """(12,) log-compressed semitone power summed over time, indexed by pitch class (C = 0)."""
    with torch.inference_mode():
        per_note = bands(torch.from_numpy(wave)[None])[0].sum(dim=0).numpy()
    profile = np.zeros(12)
    np.add.at(profile, (lowest_note + np.arange(per_note.size)) % 12, per_note)
    return profile


def best_correlation(profile: np.ndarray, key_profile: np.ndarray) -> float:
    return max(np.corrcoef(np.roll(key_profile, tonic), profile)[0, 1] for tonic in range(12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("catalogue", type=Path, help="folder with manifest.parquet")
    parser.add_argument("--split", help="only this split of the manifest (e.g. test)")
    parser.add_argument("--output", type=Path, help="write the result here as JSON")
    args = parser.parse_args()
    rows = pq.read_table(args.catalogue / "manifest.parquet").to_pylist()
    rows = [row for row in rows if args.split in (None, row.get("split"))]
    lowest_note = 36  # C2: a 4096-point STFT resolves semitones from there up
    bands = LogSemitone(n_fft=4096, n_bands=83, lowest_note=lowest_note)
    scores, is_major = [], []
    for row in rows:
        profile = pitch_class_profile(bands, decode(row["uri"]), lowest_note)
        scores.append(
            best_correlation(profile, MAJOR_PROFILE) - best_correlation(profile, MINOR_PROFILE)
        )
        is_major.append("major" in row["tags"])
    result = {
        "catalogue": str(args.catalogue),
        "split": args.split,
        "tracks": len(rows),
        "major_roc_auc": round(float(roc_auc_score(is_major, scores)), 4),
    }
    print(json.dumps(result))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
