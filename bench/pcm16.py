"""What 16-bit patches cost in scores: every model's track scores from the patches as they
cross the object store (16-bit PCM, a per-track scale: the tagging job's default) against
float32 patches, and the bytes each form takes (issue 23's bar: scores within 1e-4).

Inputs: bench/decode.py's 32 mixed-format 30-s clips and the full-length Debian music
(OGG/MP3, 2-6 min, at the job's default of at most 32 patches). Models: the paper's
spectrogram and waveform presets and the musicnn architecture with musicnn's patches (its
STFT context), fresh weights seeded as bench/tagging.py seeds them; musicnn's pretrained
MTT and MSD taggers (imported, docs/musicnn.md); and any trained raytag model folder given
with ``--model-folder`` (e.g. the demo's champion). How far 16 bits move a score depends on
how a model weighs quiet spectral detail, so every architecture, fresh and trained, is
measured. Patches go through the stage functions themselves (``decode_batch`` then
``stored_patches``), scores through ``predict_patches``.

    .venv/bin/python bench/pcm16.py --model-folder demo/runs/*/checkpoint_*  # ~6 min
    .venv/bin/python bench/pcm16.py --quick --results /tmp/pcm16_smoke.json

Results: bench/results/pcm16.json; summary in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import make_inputs  # noqa: E402
from record import new_record, save  # noqa: E402
from tagging import DEBIAN_MUSIC  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "pcm16.json"
FRESH = ("spectrogram", "waveform", "musicnn")
PRETRAINED = ("MTT_musicnn", "MSD_musicnn")


def models(folders: list[str]) -> Iterator[tuple[str, Any, Any]]:
    """(name, model, patch policy) of every model measured; the job's max_patches (32)."""
    import torch

    from raytag.catalogue import VOCABULARY
    from raytag.checkpoint import load_model
    from raytag.config import AudioConfig
    from raytag.importers.musicnn import AUDIO, ensure_wheel, load_musicnn
    from raytag.models import build_model

    for name in FRESH:
        torch.manual_seed(0)
        if name == "musicnn":
            model = build_model(name, n_tags=len(VOCABULARY), context_samples=AUDIO.context_samples)
            yield f"{name} (fresh)", model.eval(), replace(AUDIO, max_patches=32)
        else:
            model = build_model(name, n_tags=len(VOCABULARY)).eval()
            yield f"{name} (fresh)", model, AudioConfig(max_patches=32)
    wheel = ensure_wheel()
    for checkpoint in PRETRAINED:
        yield checkpoint, load_musicnn(wheel, checkpoint).eval(), replace(AUDIO, max_patches=32)
    for folder in folders:
        loaded = load_model(folder)
        name = f"{loaded.name} v{loaded.version} ({loaded.model.arch}, trained)"
        yield name, loaded.model.eval(), replace(loaded.audio, max_patches=32)


def compare(files: list[str], folders: list[str]) -> dict:
    import pyarrow as pa

    from raytag.models.inference import predict_patches
    from raytag.tagging.stages import decode_batch, patches_column, stored_patches

    results = {}
    for name, model, audio in models(folders):
        worst, diffs, bytes_16, bytes_32 = ("", 0.0), [], 0, 0
        for path in files:
            null = pa.nulls(1, pa.string())
            row = pa.table({"track_id": ["t"], "uri": [path], "error_code": null, "message": null})
            pcm = decode_batch(row, (audio,), pcm16=True)
            exact = decode_batch(row, (audio,), pcm16=False)
            bytes_16 += pcm[patches_column(0)].nbytes
            bytes_32 += exact[patches_column(0)].nbytes
            scores_16 = predict_patches(model, stored_patches(pcm, 0), 8)[0].mean(axis=0)
            scores_32 = predict_patches(model, stored_patches(exact, 0), 8)[0].mean(axis=0)
            diff = float(np.abs(scores_16 - scores_32).max())
            diffs.append(diff)
            worst = max(worst, (Path(path).name, diff), key=lambda pair: pair[1])
        results[name] = {
            "tracks": len(files),
            "max_abs_score_diff": max(diffs),
            "median_max_abs_score_diff": float(np.median(diffs)),
            "worst_track": worst[0],
            "patch_bytes_16bit": bytes_16,
            "patch_bytes_float32": bytes_32,
        }
        print(f"{name:30s} max |diff| {max(diffs):.2e} (median {np.median(diffs):.2e}, worst "
              f"{worst[0]}); bytes 16-bit/float32 {bytes_16 / bytes_32:.3f}")  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 clips and 2 full tracks")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--model-folder", nargs="*", default=[], help="trained raytag models")
    args = parser.parse_args()

    import ray

    full = sorted(p for pattern in DEBIAN_MUSIC for p in glob.glob(pattern))
    files = [str(f) for f in make_inputs(args.quick)] + (full[:2] if args.quick else full)
    record = new_record("pcm16", __file__, sys.argv[1:])
    record["inputs"] = {"clips_30s": len(files) - len(full[: 2 if args.quick else None]),
                        "full_length_tracks": len(full[: 2 if args.quick else None])}  # fmt: skip
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        record["models"] = compare(files, args.model_folder)
    finally:
        ray.shutdown()
    save(record, args.results)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
