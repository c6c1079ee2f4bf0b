"""Transfer benchmark (not a test): how well do a pretrained model's features tag the demo
catalogue with the network frozen and only a linear classifier per tag trained on them?

    .venv/bin/python bench/learning.py --n-tracks 4000 --render-only   # the catalogues, once
    .venv/bin/raytag import musicnn --no-register --out bench/data/musicnn
    .venv/bin/python bench/transfer.py

bench/learning.py trains the spectrogram model from scratch; this measures what a team with
a small labelled catalogue gets from the imported musicnn taggers (docs/musicnn.md) instead.

1. Every track of the learning benchmark's catalogues (the training catalogue's train and
   test splits, the held-out-SoundFont catalogue) goes through the model's encoder whole
   (``encode``: for musicnn the front- and mid-end, max and mean over time, 1,506 values).
2. For each training-set size in ``--n-train``, a standardised L2 logistic regression per
   tag (scikit-learn, one-vs-rest) is fitted on the first N training tracks and scored on the
   held-out catalogue and on the in-distribution test split (raytag.evaluate.compute_metrics).
3. Writes ``bench/results/transfer_musicnn.json`` and prints the macro and per-tag ROC-AUC.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from learning import compact
from record import new_record, save
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from raytag import registry
from raytag.audio import decode_track
from raytag.catalogue import VOCABULARY
from raytag.config import AudioConfig
from raytag.evaluate import compute_metrics, read_labelled_tracks

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench/data/learning"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--train-manifest", default=str(DATA / "train-fluidr3gm-s1-n4000-d10/manifest.parquet")
    )
    p.add_argument(
        "--heldout-manifest", default=str(DATA / "heldout-timgm6mb-s2-n300-d10/manifest.parquet")
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=[
            str(ROOT / "bench/data/musicnn" / name) for name in ("musicnn-mtt", "musicnn-msd")
        ],
        help="model folders or registry URIs",
    )
    p.add_argument(
        "--n-train",
        type=int,
        nargs="+",
        default=[400, 1600, 3200],
        help="training-set sizes (first N tracks of the train split)",
    )
    p.add_argument("--c", type=float, default=0.01, help="inverse L2 strength of the regression")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", type=Path, default=ROOT / "bench/results/transfer_musicnn.json")
    return p.parse_args()


@torch.inference_mode()
def track_features(model: torch.nn.Module, rows: list[dict]) -> np.ndarray:
    """(tracks, features) of whole tracks, encoded one track per forward."""
    audio = AudioConfig()
    return np.stack(
        [
            model.encode(torch.from_numpy(decode_track(row["uri"], audio))[None])[0].numpy()
            for row in rows
        ]
    )


def targets(rows: list[dict]) -> np.ndarray:
    return np.array([[tag in row["tags"] for tag in VOCABULARY] for row in rows], dtype=np.int8)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    for manifest in (args.train_manifest, args.heldout_manifest):
        if not Path(manifest).exists():
            raise SystemExit(
                f"{manifest} is missing: render it with bench/learning.py --render-only"
            )
    sets = {
        "train": read_labelled_tracks(args.train_manifest, "train")[: max(args.n_train)],
        "heldout": read_labelled_tracks(args.heldout_manifest),
        "in_distribution": read_labelled_tracks(args.train_manifest, "test"),
    }
    vocabulary = list(VOCABULARY)
    record = {
        **new_record("transfer", __file__, sys.argv[1:]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "tracks": {name: len(rows) for name, rows in sets.items()},
        "models": {},
    }
    for uri in args.models:
        model = registry.load(uri).model
        started = time.time()
        features = {name: track_features(model, rows) for name, rows in sets.items()}
        extract_s = time.time() - started
        print(
            f"{uri}: features of {sum(record['tracks'].values())} tracks in {extract_s:.0f} s",
            flush=True,
        )
        runs = {}
        for n in args.n_train:
            started = time.time()
            regression = LogisticRegression(C=args.c, max_iter=2000)
            classifier = make_pipeline(StandardScaler(), OneVsRestClassifier(regression))
            classifier.fit(features["train"][:n], targets(sets["train"][:n]))
            fit_s = time.time() - started
            runs[str(n)] = {"fit_s": round(fit_s, 1)}
            for name in ("heldout", "in_distribution"):
                metrics = compute_metrics(
                    targets(sets[name]), classifier.predict_proba(features[name]), vocabulary
                )
                runs[str(n)][name] = compact(metrics)
            held, ind = runs[str(n)]["heldout"], runs[str(n)]["in_distribution"]
            print(
                f"  {n} training tracks: held out {held['macro_roc_auc']:.3f}, "
                f"in distribution {ind['macro_roc_auc']:.3f} (fit {fit_s:.0f} s)"
            )
            print("   ", " ".join(f"{t['tag']}={t['roc_auc']:.2f}" for t in held["per_tag"]))
        record["models"][Path(uri).name] = {"extract_s": round(extract_s, 1), "runs": runs}
    save(record, args.results)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
