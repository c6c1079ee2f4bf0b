"""What a training run is made with: its settings and the model every worker starts from."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from raytag.config import AudioConfig
from raytag.models import build_model, model_from_config
from raytag.settings import json_pairs, require_at_least, setting

log = logging.getLogger(__name__)


def read_vocabulary(option: str | None) -> tuple[str, ...] | None:
    """``--vocabulary``: 'demo' (the demo catalogue's tags), a JSON list file, or None."""
    if option is None:
        return None
    if option == "demo":
        from raytag.catalogue import VOCABULARY

        return VOCABULARY
    with open(option) as f:
        return tuple(json.load(f))


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; logged to MLflow as params. Each field is an
    option of ``raytag train`` (:mod:`raytag.settings`)."""

    manifest: str = setting(help="Labelled Parquet manifest (local or s3://).")
    model: str = setting("spectrogram-small", "Model preset.")
    model_overrides: dict[str, Any] = setting(
        factory=dict,
        help="Model config override key=value, the value as JSON where it parses; repeatable.",
        flag="--set",
        parse=json_pairs,
        multiple=True,
    )
    # See initial_model.
    init_from: str | None = setting(
        None,
        "Start from this model (models:/NAME@ALIAS, runs:/..., a folder) instead of a fresh "
        "--model: its architecture, weights and patch settings; shared tags keep their outputs.",
    )
    freeze_encoder: bool = setting(
        False, "Train only the dense head on the frozen encoder (transfer learning)."
    )
    vocabulary: tuple[str, ...] | None = setting(
        None,
        "'demo' (the demo catalogue's tags), a JSON list file, or unset for the sorted tags "
        "of the manifest.",
        parse=read_vocabulary,
    )
    epochs: int = setting(20, "Epochs at most; early stopping may end the run sooner.")
    batch_size: int = setting(32, "Patches per training step of each worker.")
    learning_rate: float = setting(1e-3, "Adam's learning rate.")
    weight_decay: float = setting(0.0, "Adam's weight decay.")
    early_stopping_patience: int = setting(
        5, "Epochs without a better validation loss before training stops."
    )
    lr_decay_factor: float = setting(
        0.2, "Factor of the learning rate on a validation-loss plateau."
    )
    lr_patience: int = setting(2, "Epochs without a better validation loss before it decays.")
    patches_per_track: int = setting(1, "Random training patches per track per epoch.")
    shuffle_buffer: int = setting(
        256, "Training patches mixed in a local shuffle buffer on each worker (0: off)."
    )
    val_patches_per_track: int = setting(3, "Evenly spaced, fixed validation patches per track.")
    patch_seconds: float = setting(
        3.0,
        "Length of training crops, validation patches and the patches tracks are scored by "
        "(stored with the model).",
    )
    cache_decoded: bool = setting(
        True,
        "Keep decoded audio in Ray's object store between epochs; off: every epoch decodes "
        "only the crops it trains on, for catalogues larger than the cluster's memory.",
    )
    num_workers: int = setting(
        1, "Ray Train workers; each trains on its own share of the data (DDP: gradients averaged)."
    )
    cpus_per_worker: float | None = setting(
        None,
        "CPUs each worker reserves (fractions allowed); the cluster's other CPUs decode the "
        "data. Default: Ray Train's, 1 on a CPU worker and none beside a GPU.",
    )
    use_gpu: bool | None = setting(None, "Default: GPUs if the cluster has any.", flag="--gpu")
    mixed_precision: bool = setting(True, "bf16 autocast on GPU workers.")
    # Opt-in: CPUs without bf16 dot products (AVX512-BF16, AMX) likely run it slower, and
    # even with them it has not paid off (measured in docs/benchmarks.md).
    cpu_bf16: bool = setting(
        False,
        "bf16 autocast on CPU workers too; a training step measured no faster with it "
        "(docs/benchmarks.md).",
    )
    storage_path: str = setting("runs", "Checkpoints (local or s3://).")
    run_name: str = setting("raytag", "Same name again resumes from its last checkpoint.")
    max_failures: int = setting(
        3,
        "Worker failures to survive: each one restarts every worker from the last "
        "checkpoint; one more ends the run with a TrainingError (-1: no limit).",
    )
    keep_checkpoints: int = setting(
        2, "Checkpoints kept: the best by validation loss (every epoch's metrics stay)."
    )
    seed: int = setting(0, "Seed of the fresh weights, dropout and the shuffle buffer.")
    record_track_ids: bool = setting(
        False,
        "Write the track ids each worker trained on in the epoch into every checkpoint "
        "(worker_RANK.json), to audit how the data was sharded; the list grows with the "
        "catalogue.",
    )
    threshold_rule: str = setting(
        "max_f1",
        "How each tag's decision threshold is chosen on the valid split: max_f1 (its best "
        "F1) or precision (the most recall at --target-precision).",
    )
    target_precision: float | None = setting(
        None,
        "Precision each tag's threshold aims for on the valid split (--threshold-rule "
        "precision); a tag that reaches it nowhere keeps its max_f1 threshold.",
    )

    def __post_init__(self) -> None:
        # Checked here, so that a typo fails before training rather than after it.
        from raytag.evaluate.calibration import check_rule

        require_at_least(
            self, 1, "epochs", "batch_size", "patches_per_track", "val_patches_per_track",
            "num_workers", "keep_checkpoints",
        )  # fmt: skip
        require_at_least(
            self, 0, "weight_decay", "early_stopping_patience", "lr_patience",
            "shuffle_buffer",
        )  # fmt: skip
        require_at_least(self, -1, "max_failures")  # -1: Ray Train's "no limit"
        for name in ("learning_rate", "patch_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 (got {getattr(self, name)})")
        if not 0 < self.lr_decay_factor < 1:  # ReduceLROnPlateau's own bounds
            raise ValueError(f"lr_decay_factor must be in (0, 1) (got {self.lr_decay_factor})")
        check_rule(self.threshold_rule, self.target_precision)
        if self.init_from is None:  # else the overrides meet the model it names, once loaded
            try:
                with torch.random.fork_rng(devices=[]):  # the caller's RNG does not move
                    build_model(self.model, n_tags=1, **self.model_overrides)
            except (TypeError, ValueError) as error:  # an unknown field, a value of no use
                given = f" with {self.model_overrides}" if self.model_overrides else ""
                raise ValueError(f"cannot build model {self.model!r}{given}: {error}") from error

    def audio(self) -> AudioConfig:
        return AudioConfig(patch_seconds=self.patch_seconds)

    def to_params(self) -> dict[str, str]:
        """Flat string params for MLflow."""
        return {k: json.dumps(v) if not isinstance(v, str) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class InitialModel:
    """What every worker builds before training (or before loading a checkpoint)."""

    config: dict[str, Any]  # TaggingModel.config_dict(): plain data
    audio: AudioConfig
    weights: dict[str, torch.Tensor] | None  # None: freshly initialised


def initial_model(config: TrainConfig, vocabulary: list[str]) -> InitialModel:
    """A fresh ``config.model``, or the model ``config.init_from`` names: its architecture,
    weights and patch settings, with a classifier for ``vocabulary`` that keeps the rows of
    the tags both vocabularies share (new tags start from fresh rows).

    ``model_overrides`` still apply (e.g. dropout); one that changes a weight's shape fails
    here, on the driver, before any worker starts.
    """
    with torch.random.fork_rng():  # seeded fresh weights; the caller's RNG does not move
        torch.manual_seed(config.seed)
        return _initial_model(config, vocabulary)


def _initial_model(config: TrainConfig, vocabulary: list[str]) -> InitialModel:
    """``initial_model``'s work, under the seeded RNG it forks."""
    if config.init_from is None:
        fresh = build_model(config.model, n_tags=len(vocabulary), **config.model_overrides)
        return InitialModel(fresh.config_dict(), config.audio(), None)
    from raytag import registry

    start = registry.load(config.init_from)
    model_config = {
        **start.model.config_dict(),
        **config.model_overrides,
        "n_tags": len(vocabulary),
    }
    model = model_from_config(model_config)
    weights = start.model.state_dict()
    fresh = model.state_dict()
    classifier = (f"{model.CLASSIFIER}.weight", f"{model.CLASSIFIER}.bias")

    def fits(key: str) -> bool:  # the classifier has a row per tag: only its rows may differ
        old, new = weights[key].shape, fresh[key].shape
        return old[1:] == new[1:] if key in classifier else old == new

    misfits = [key for key in fresh if key not in weights or not fits(key)]
    if misfits:
        raise ValueError(
            f"the weights of {config.init_from} do not fit with overrides "
            f"{config.model_overrides}: {', '.join(misfits)}"
        )
    shared = [
        (new, start.vocabulary.index(tag))
        for new, tag in enumerate(vocabulary)
        if tag in start.vocabulary
    ]
    for key in classifier:
        rows = fresh[key].clone()
        for new, old in shared:
            rows[new] = weights[key][old]
        weights[key] = rows
    model.load_state_dict(weights)
    log.info(
        "starting from %s (%s): %d of %d tags keep their classifier rows",
        config.init_from,
        model.arch,
        len(shared),
        len(vocabulary),
    )
    audio = replace(
        config.audio(),
        patch_seconds=start.audio.patch_seconds,
        context_samples=start.audio.context_samples,
    )
    return InitialModel(model_config, audio, model.state_dict())
