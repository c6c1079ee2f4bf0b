"""Reference outputs of the ORIGINAL musicnn (TensorFlow), for raytag's parity tests.

Runs only in a throwaway environment outside the repository, never in raytag's venv::

    python3.11 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.15.1 numpy==1.26.4 librosa==0.9.2
    /tmp/tfenv/bin/pip install --no-deps musicnn==0.1.0

    # 1. cut the clips (16 kHz mono 16-bit FLAC, so both sides decode identical samples)
    /tmp/tfenv/bin/python tools/musicnn_reference.py cut tests/fixtures/musicnn
    # 2. run the original on them
    /tmp/tfenv/bin/python tools/musicnn_reference.py reference tests/fixtures/musicnn
    # 3. (benchmark) time the original tagger on any audio files
    /tmp/tfenv/bin/python tools/musicnn_reference.py bench /tmp/bench/*.flac

``reference`` builds musicnn's graph itself (musicnn.models.define_model, as
musicnn.extractor does), restores the checkpoint WITHOUT musicnn's bare ``except``
(which silently keeps random weights when restoring fails), checks that every variable
equals the checkpoint, and runs every patch of every clip in one session. musicnn's own
``extractor()`` is run too, and its taggram must agree: it returns patch 0's mid-end
and penultimate features for every patch (a bug), so only its tags are compared. The
spectrogram is musicnn's own ``batch_data`` (librosa, float16 rounding, log10).

Writes ``reference.npz`` (per model and clip: patch probabilities, track probabilities,
penultimate features; two log-mel patches) and ``reference.json`` (versions, clips,
top-5 tags) into the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SR = 16_000
PATCH = 187 * 256  # musicnn's 3-s patch: 187 frames of 256 samples
MODELS = ("MTT_musicnn", "MSD_musicnn")
# (source file, start in s, samples, clip name). Singularity music: Max McCracken,
# CC BY-SA 3.0 (Debian singularity-music); ASC music: Michael Kievernagel, GPL-2+
# (Debian asc-music). machine_wars is 100 samples short of 4 patches: musicnn still
# takes the 4th, whose last centred frame is the track's last frame.
CLIPS = (
    ("/usr/share/games/singularity/music/Awakening.ogg", 60, 20 * SR, "awakening"),
    ("/usr/share/games/singularity/music/Media Threat.ogg", 90, 20 * SR, "media_threat"),
    ("/usr/share/games/singularity/music/Nebula.ogg", 60, 20 * SR, "nebula"),
    ("/usr/share/games/asc/music/machine_wars.mp3", 60, 4 * PATCH - 100, "machine_wars"),
)
LOGMEL_PATCHES = (("awakening", 1), ("machine_wars", 3))  # a middle and a track-end patch


def cut(folder: Path) -> None:
    """Decode, downmix and resample with FFmpeg, then store exact-length 16-bit FLAC."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    for source, start, n, name in CLIPS:
        raw = subprocess.run(
            ["ffmpeg", "-v", "error", "-ss", str(start), "-i", source, "-t", str(n / SR + 1),
             "-ac", "1", "-ar", str(SR), "-f", "f32le", "-"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        wave = np.frombuffer(raw, np.float32)[:n]
        if wave.size != n:
            raise SystemExit(f"{source}: only {wave.size} samples from {start} s")
        sf.write(folder / f"{name}.flac", wave, SR, subtype="PCM_16", format="FLAC")
        print(f"{name}.flac: {n} samples from {source} at {start} s")


def _restored_session(tf, models, model: str, n_frames: int, n_tags: int):
    """musicnn's graph (as extractor() builds it) with the checkpoint restored and checked."""
    import musicnn

    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, n_frames, 96])
        is_training = tf.compat.v1.placeholder(tf.bool)
        outputs = models.define_model(x, is_training, model, n_tags)
        probs = tf.nn.sigmoid(outputs[0])
    penultimate = outputs[-1]
    sess = tf.compat.v1.Session()
    sess.run(tf.compat.v1.global_variables_initializer())
    prefix = os.path.join(os.path.dirname(musicnn.__file__), model) + "/"
    tf.compat.v1.train.Saver().restore(sess, prefix)  # raises if it cannot restore
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)  # the prefix, not the folder
    variables = tf.compat.v1.global_variables()
    for var in variables:
        if not np.array_equal(sess.run(var), reader.get_tensor(var.op.name)):
            raise SystemExit(f"{model}: {var.op.name} was not restored")
    print(f"{model}: {len(variables)} variables restored and checked")
    return sess, x, is_training, probs, penultimate


def reference(folder: Path) -> None:
    import librosa
    import tensorflow as tf
    from musicnn import configuration, models
    from musicnn.extractor import batch_data, extractor

    tf.compat.v1.disable_eager_execution()
    n_frames = librosa.time_to_frames(3, sr=SR, n_fft=512, hop_length=256) + 1  # as extractor
    assert n_frames == 187
    arrays: dict[str, np.ndarray] = {}
    record: dict = {
        "generator": "tools/musicnn_reference.py",
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
            "librosa": librosa.__version__,
            "musicnn": "0.1.0",
        },
        "clips": {},
        "models": {},
    }
    for source, start, n, name in CLIPS:
        record["clips"][name] = {"source": source, "start_s": start, "samples": n}
    for model in MODELS:
        labels = configuration.MTT_LABELS if "MTT" in model else configuration.MSD_LABELS
        sess, x, is_training, probs, penultimate = _restored_session(
            tf, models, model, n_frames, len(labels)
        )
        record["models"][model] = {"labels": labels, "clips": {}}
        for _, _, _, name in CLIPS:
            path = str(folder / f"{name}.flac")
            batch, spectrogram = batch_data(path, n_frames, n_frames)
            patch_probs, patch_pen = sess.run(
                [probs, penultimate], feed_dict={x: batch, is_training: False}
            )
            track = patch_probs.mean(axis=0)
            arrays[f"{model}/{name}/patch_probs"] = patch_probs.astype(np.float32)
            arrays[f"{model}/{name}/track_probs"] = track.astype(np.float32)
            arrays[f"{model}/{name}/penultimate"] = patch_pen.astype(np.float32)
            if model == MODELS[0]:
                for clip, index in LOGMEL_PATCHES:
                    if clip == name:
                        arrays[f"logmel/{name}/{index}"] = batch[index].astype(np.float32)
            top5 = np.argsort(-track, kind="stable")[:5]
            record["models"][model]["clips"][name] = {
                "n_patches": int(batch.shape[0]),
                "spectrogram_frames": int(spectrogram.shape[0]),
                "top5": [[labels[i], round(float(track[i]), 4)] for i in top5],
            }
            # The original entry point must agree (and so must have restored its weights).
            taggram, _ = extractor(path, model=model, extract_features=False)
            gap = float(np.abs(taggram - patch_probs).max())
            if gap > 1e-5:
                raise SystemExit(f"{model} {name}: extractor() differs from the graph by {gap}")
            top5 = record["models"][model]["clips"][name]["top5"]
            print(f"{model} {name}: {batch.shape[0]} patches, top-5 {top5}")
        sess.close()
    np.savez_compressed(folder / "reference.npz", **arrays)
    (folder / "reference.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {folder / 'reference.npz'} and {folder / 'reference.json'}")


def bench(files: list[str], model: str) -> None:
    """The original tagger, one run: musicnn.tagger.top_tags per file (which rebuilds the
    graph every call, as the package does), then the graph built once for all files."""
    import librosa
    import tensorflow as tf
    from musicnn import configuration, models
    from musicnn.extractor import batch_data
    from musicnn.tagger import top_tags

    tf.compat.v1.disable_eager_execution()
    started = time.perf_counter()
    for path in files:
        top_tags(path, model=model, topN=5, print_tags=False)
    per_file = time.perf_counter() - started
    labels = configuration.MTT_LABELS if "MTT" in model else configuration.MSD_LABELS
    n_frames = librosa.time_to_frames(3, sr=SR, n_fft=512, hop_length=256) + 1
    started = time.perf_counter()
    sess, x, is_training, probs, _ = _restored_session(tf, models, model, n_frames, len(labels))
    for path in files:
        batch, _ = batch_data(path, n_frames, n_frames)
        sess.run(probs, feed_dict={x: batch, is_training: False}).mean(axis=0)
    once = time.perf_counter() - started
    result = {
        "model": model,
        "tracks": len(files),
        "top_tags_s": round(per_file, 2),
        "top_tags_tracks_per_s": round(len(files) / per_file, 3),
        "graph_once_s": round(once, 2),
        "graph_once_tracks_per_s": round(len(files) / once, 3),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("cut").add_argument("folder", type=Path)
    commands.add_parser("reference").add_argument("folder", type=Path)
    bench_parser = commands.add_parser("bench")
    bench_parser.add_argument("files", nargs="+")
    bench_parser.add_argument("--model", default="MTT_musicnn")
    args = parser.parse_args()
    if args.command == "cut":
        cut(args.folder)
    elif args.command == "reference":
        reference(args.folder)
    else:
        bench(args.files, args.model)


if __name__ == "__main__":
    sys.exit(main())
