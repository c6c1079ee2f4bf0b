"""The interface every tagging model declares, whatever its architecture.

Training, tagging, checkpoints and the registry rely on this and nothing more, so a new
architecture (as musicnn was) needs no change outside ``raytag.models``:

- ``forward``: (batch, samples) waveform patches -> (batch, n_tags) logits, so one module
  trains with BCE-with-logits and serves;
- two stages that transfer learning cuts between: ``encode`` (waveform -> features pooled
  over time) and ``head`` (pooled -> (logits, embedding)); ``embed`` runs both;
- ``config``, a frozen dataclass of plain data (:class:`ModelConfig`) that rebuilds the
  model without pickling code, saved as ``config_dict()`` beside the weights with ``arch``;
- the audio it must be fed, read from that config: ``sample_rate``, and ``context_samples``
  of context each patch carries on both sides (``AudioConfig.context_samples``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class ModelConfig(Protocol):
    """What every model config holds, besides the fields of its own architecture."""

    arch: ClassVar[str]  # the name model_from_config rebuilds it by

    @property
    def n_tags(self) -> int: ...

    @property
    def dense_units(self) -> int:
        """Width of the penultimate layer: the size of the embedding."""

    @property
    def sample_rate(self) -> int:
        """The rate the model's input must be decoded at."""

    @property
    def context_samples(self) -> int:
        """Samples of context each input patch must carry on both sides (0: none)."""


class TaggingModel(nn.Module, ABC):
    """A tagger in two stages: ``encode`` (waveform -> features pooled over time) and
    ``head`` (pooled -> (logits, embedding)), the dense layers.

    The cut is where transfer learning starts: after :meth:`freeze_encoder` only the head
    trains, no gradient flows through the convolutions (which makes fine-tuning cheap
    enough for CPUs), and the encoder's batch norms and dropout stay in inference mode.
    """

    HEAD: ClassVar[tuple[str, ...]]  # the submodules after the pooling
    CLASSIFIER: ClassVar[str]  # the last linear layer: one output per tag
    config: ModelConfig
    encoder_frozen: bool = False

    @abstractmethod
    def encode(self, waveform: Tensor) -> Tensor:
        """(batch, samples) -> (batch, features) pooled over time."""

    @abstractmethod
    def head(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled features -> (logits (batch, n_tags), embedding (batch, dense_units))."""

    @property
    def arch(self) -> str:
        return type(self.config).arch

    def config_dict(self) -> dict[str, Any]:
        """The config as plain data, with the architecture name to rebuild it."""
        return {"arch": self.arch, **asdict(self.config)}

    def embed(self, waveform: Tensor) -> tuple[Tensor, Tensor]:
        """(batch, samples) -> (logits (batch, n_tags), embedding (batch, dense_units))."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            pooled = self.encode(waveform)
        return self.head(pooled)

    def forward(self, waveform: Tensor) -> Tensor:
        return self.embed(waveform)[0]

    def freeze_encoder(self) -> None:
        self.encoder_frozen = True
        head = {id(p) for name in self.HEAD for p in self.get_submodule(name).parameters()}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in head)
        self.train(self.training)

    def train(self, mode: bool = True) -> TaggingModel:
        super().train(mode and not self.encoder_frozen)
        if mode and self.encoder_frozen:
            for name in self.HEAD:
                self.get_submodule(name).train()
            self.training = True
        return self
