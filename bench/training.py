"""Training throughput: samples/s per worker and the share of step time spent waiting for
data, for both models, through the training issue's data path (Ray Data decode -> random
patches -> ``get_dataset_shard``), on a fresh local Ray.

``raytag.train`` reports both numbers every epoch (``train_samples_per_s_per_worker``,
``data_wait_fraction``; they are in MLflow too). The first epoch includes decoding into
the object store (``--cache-decoded``, the default) and is reported apart from the
steady state of the later epochs. ``--no-cache-decoded`` streams and decodes every epoch,
the path for catalogues larger than the cluster's memory. Both paths run by default.

    .venv/bin/python bench/training.py
    .venv/bin/python bench/training.py --models spectrogram --paths streaming

Results: bench/results/training.json; summary in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from record import new_record, save

from raytag.train import TrainConfig, fit

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "training"
RESULTS = HERE / "results" / "training.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["spectrogram", "waveform"])
    parser.add_argument("--tracks", type=int, default=96, help="generated 10-s tracks")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--paths", nargs="+", default=["cached", "streaming"],
                        choices=["cached", "streaming"])  # fmt: skip
    parser.add_argument("--shuffle-buffer", type=int, default=TrainConfig.shuffle_buffer,
                        help="patches in the local shuffle buffer (0: none)")  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    import ray

    from raytag.catalogue import VOCABULARY, synthesize

    catalogue = DATA / f"catalogue-{args.tracks}"
    manifest = str(catalogue / "manifest.parquet")
    if not Path(manifest).exists():
        manifest = synthesize(str(catalogue), args.tracks, seed=21, duration_s=10.0)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             log_to_driver=False)  # fmt: skip
    record = {
        **new_record("training", __file__, sys.argv[1:]),
        "tracks": args.tracks,
        "shuffle_buffer": args.shuffle_buffer,
        "runs": [],
    }
    for name, path in [(name, path) for name in args.models for path in args.paths]:
        config = TrainConfig(
            manifest=manifest, model=name, vocabulary=VOCABULARY, epochs=args.epochs,
            batch_size=args.batch_size, cache_decoded=path == "cached",
            shuffle_buffer=args.shuffle_buffer,
            early_stopping_patience=args.epochs, keep_checkpoints=args.epochs,
            storage_path=tempfile.mkdtemp(),
            run_name=f"bench-{name}-{path}",
        )  # fmt: skip
        started = time.perf_counter()
        result = fit(config)
        if result.error:
            raise result.error
        # One row per kept checkpoint: every epoch, as keep_checkpoints = epochs.
        epochs = sorted(result.metrics_dataframe.to_dict("records"), key=lambda e: e["epoch"])
        steady = epochs[1:] or epochs
        summary = {
            "model": name,
            "data_path": path,
            "wall_s": round(time.perf_counter() - started, 1),
            "workers": config.num_workers,
            "first_epoch": _epoch(epochs[0]),
            "steady_samples_per_s_per_worker": round(
                statistics.mean(e["train_samples_per_s_per_worker"] for e in steady), 2
            ),
            "steady_data_wait_fraction": round(
                statistics.mean(e["data_wait_fraction"] for e in steady), 4
            ),
            "epochs": [_epoch(e) for e in epochs],
        }
        print(json.dumps(summary), flush=True)
        record["runs"].append(summary)
    ray.shutdown()
    save(record, args.results)
    print(f"wrote {args.results}")


def _epoch(metrics: dict) -> dict:
    return {
        "epoch": int(metrics["epoch"]),
        "samples_per_s_per_worker": round(metrics["train_samples_per_s_per_worker"], 2),
        "data_wait_fraction": round(metrics["data_wait_fraction"], 4),
    }


if __name__ == "__main__":
    main()
