"""Which recipe gives `make demo` its best model in its few CPU minutes: the demo's
spectrogram model trained from scratch, or the imported musicnn MTT warm-started on the
demo's tags (``--init-from``), with its encoder frozen or not?

    .venv/bin/python bench/demo_recipe.py --recipes scratch,musicnn-frozen   # ~12 min

Each recipe trains exactly as the demo does (raytag.demo's catalogue: DemoSettings' tracks,
length and seed; its TrainConfig: epochs, batch size, patches per track, early stopping)
through ``raytag.train.run_training`` on a local Ray of 2 CPUs and a local MLflow store,
and is scored on the catalogue's test split (the figure the demo reports). Recorded per
recipe: the training's wall time, its epochs, the test split's macro and per-tag ROC-AUC
and PR-AUC, and the macro F1 at the thresholds calibrated on the validation split.

Results: bench/results/demo_recipe.json; summary in docs/learning.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from record import new_record, save

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "demo_recipe.json"
RECIPES: dict[str, dict[str, Any]] = {  # TrainConfig fields over the demo's own
    "scratch": {},
    "musicnn-frozen": {"init_from": "musicnn", "freeze_encoder": True},
    "musicnn": {"init_from": "musicnn"},
}


def train(recipe: str, overrides: dict[str, Any], base: Any, musicnn: Path) -> dict[str, Any]:
    from raytag.train import run_training

    if overrides.get("init_from") == "musicnn":
        overrides = {**overrides, "init_from": str(musicnn)}
    config = replace(base, run_name=f"{recipe}-{int(time.time())}", **overrides)
    began = time.monotonic()
    result = run_training(config, experiment="demo-recipe")
    wall = time.monotonic() - began
    metrics = result.metrics
    return {
        "config": overrides,
        "wall_s": round(wall, 1),
        "epochs": result.epochs,
        "best_val_loss": result.best_val_loss,
        "test_macro_roc_auc": metrics.macro_roc_auc,
        "test_macro_pr_auc": metrics.macro_pr_auc,
        "test_macro_f1": result.test_macro_f1,
        "per_tag_roc_auc": {t.tag: t.roc_auc for t in metrics.per_tag},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated")
    parser.add_argument("--workdir", type=Path, default=HERE / "data" / "demo_recipe")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    if unknown := set(recipes) - set(RECIPES):
        sys.exit(f"unknown recipes {sorted(unknown)}; known: {', '.join(RECIPES)}")

    import ray

    from raytag.catalogue import VOCABULARY, synthesize
    from raytag.demo.settings import DemoSettings
    from raytag.importers.musicnn import ensure_wheel, write_model_folder
    from raytag.train import TrainConfig

    settings = DemoSettings()
    workdir = args.workdir.resolve()
    manifest = synthesize(
        str(workdir / "catalogue"), settings.n_tracks, settings.seed, duration_s=settings.duration_s
    )
    musicnn = workdir / "musicnn-mtt"
    if not musicnn.exists():
        write_model_folder(ensure_wheel(), "mtt", musicnn)
    base = TrainConfig(
        manifest=manifest, model=settings.model, vocabulary=VOCABULARY,
        epochs=settings.epochs, batch_size=settings.batch_size,
        patches_per_track=settings.patches_per_track, storage_path=str(workdir / "runs"),
        seed=settings.seed,
    )  # fmt: skip
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    import mlflow

    if mlflow.get_experiment_by_name("demo-recipe") is None:  # artifacts beside the store
        mlflow.create_experiment("demo-recipe", (workdir / "artifacts").as_uri())
    record = new_record("demo_recipe", __file__, sys.argv[1:])
    record["inputs"] = {"settings": settings.__dict__, "manifest": manifest}
    record["recipes"] = {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for recipe in recipes:
            record["recipes"][recipe] = outcome = train(recipe, RECIPES[recipe], base, musicnn)
            print(f"{recipe}: {outcome['wall_s']} s, {outcome['epochs']} epochs, test macro "
                  f"ROC-AUC {outcome['test_macro_roc_auc']:.3f}, PR-AUC "
                  f"{outcome['test_macro_pr_auc']:.3f}", flush=True)  # fmt: skip
            save(record, args.results)
    finally:
        ray.shutdown()
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
