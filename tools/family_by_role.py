"""Where does a model lose the instrument families? ROC-AUC of each family tag with its
positive tracks split by the role the family plays (the melody, or only accompaniment) and
by how many pitched parts the track has, each subset against all the tag's negatives.

    .venv/bin/python tools/family_by_role.py MODEL_FOLDER MANIFEST [--split test] [--output F]

Reads each track's parts from its MIDI (``midi_uri``, written by ``raytag.catalogue``:
one named track per part, named by its role). A diagnostic for docs/learning.md, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import mido
import numpy as np
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

from raytag.catalogue import DRUM_CHANNEL, FAMILIES, family_of
from raytag.checkpoint import load_model
from raytag.evaluate import score_tracks


def pitched_parts(midi_uri: str) -> list[tuple[str, str]]:
    """(role, family) of every pitched part of a track."""
    parts = []
    for track in mido.MidiFile(midi_uri).tracks:
        name = next((m.name for m in track if m.type == "track_name"), "")
        program = next(
            (m.program for m in track if m.type == "program_change" and m.channel != DRUM_CHANNEL),
            None,
        )
        if program is not None:
            parts.append((name, family_of(program)))
    return parts


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    return float(roc_auc_score(y_true, y_score)) if 0 < y_true.sum() < len(y_true) else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("manifest")
    p.add_argument("--split", default=None)
    p.add_argument("--output", default=None, help="JSON file for the table")
    args = p.parse_args()

    loaded = load_model(args.model)
    scores = score_tracks(loaded, args.manifest, args.split)
    rows = pq.read_table(args.manifest, columns=["track_id", "midi_uri"]).to_pylist()
    midi = {row["track_id"]: row["midi_uri"] for row in rows}
    parts = [pitched_parts(midi[track_id]) for track_id in scores.track_ids]
    table = {}
    for family in FAMILIES:
        column = loaded.vocabulary.index(family)
        y, s = scores.y_true[:, column], scores.y_score[:, column]
        negatives = y == 0
        subsets: dict[str, list[int]] = defaultdict(list)
        for i, track_parts in enumerate(parts):
            roles = {role for role, fam in track_parts if fam == family}
            if not roles:
                continue
            subsets["melody" if "melody" in roles else "accompaniment only"].append(i)
            subsets[f"{len(track_parts)} pitched parts"].append(i)
        row = {"all": {"n": int(y.sum()), "roc_auc": auc(y, s)}}
        for name, idx in sorted(subsets.items()):
            keep = negatives.copy()
            keep[idx] = True
            row[name] = {"n": len(idx), "roc_auc": auc(y[keep], s[keep])}
        table[family] = row
    names = sorted({k for row in table.values() for k in row}, key=lambda k: (k != "all", k))
    print(f"{'family':22s}" + "".join(f"{n:>22s}" for n in names))
    for family, row in table.items():
        cells = [row.get(n) for n in names]
        print(
            f"{family:22s}"
            + "".join(
                f"{'':>22s}"
                if c is None or c["roc_auc"] is None
                else f"{c['roc_auc']:>15.3f} (n={c['n']:>3d})"
                for c in cells
            )
        )
    means = {
        n: statistics.mean(
            r[n]["roc_auc"] for r in table.values() if r.get(n) and r[n]["roc_auc"] is not None
        )
        for n in names
    }
    print(f"{'mean':22s}" + "".join(f"{means[n]:>22.3f}" for n in names))
    if args.output:
        report = {"model": args.model, "manifest": args.manifest, "split": args.split}
        report |= {"per_family": table, "mean": means}
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
