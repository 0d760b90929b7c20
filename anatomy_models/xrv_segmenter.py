"""What the torchxrayvision segmentation backends (CXAS, ChestX-Det PSPNet) share: options, weights
resolution at construction, batched inference on the chosen device and precision, thresholds per
structure. Each subclass names its weights, input size, structure map (our name -> the model's class
name) and how it builds the model.

Precision: on CUDA the forward pass runs under autocast (bf16 where the GPU supports it, else fp16), which
the convolutional encoders tolerate; the logits are cast back to fp32 before the sigmoid, the resize to
each image's size and the thresholds, so a mask edge moves by at most the rounding of a logit near the
threshold. On CPU the default is fp32 (autocast is slower than fp32 on most CPUs); bf16 can be asked for.
"""
from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from anatomy_models.base import AnatomyBackend, validated_options
from anatomy_models.weights import (
    Precision, WeightsSpec, masks_and_confidence, pick_device, pick_precision, resolve_weights, segment_batch)
from transforms.records import AnatomyResult


class XrvSegmenterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights_dir: str | None = None  # default: torchxrayvision's cache directory
    device: str = "auto"  # 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    thresholds: dict[str, float] = Field(default_factory=dict)  # per structure (our names), overrides `threshold`
    batch_size: int = Field(4, ge=1)
    precision: Precision = "auto"  # autocast dtype of the forward pass

    @field_validator("thresholds")
    @classmethod
    def _in_unit_interval(cls, thresholds: dict[str, float]) -> dict[str, float]:
        if any(not 0.0 < value < 1.0 for value in thresholds.values()):
            raise ValueError("thresholds must lie in (0, 1)")
        return thresholds


class XrvSegmenter(AnatomyBackend):
    options_model: type[XrvSegmenterOptions] = XrvSegmenterOptions
    weights_spec: WeightsSpec
    input_size: int
    structures: dict[str, str]  # our name -> the model's class name, in output order
    model_targets: Sequence[str]  # the model's class names, in channel order

    def __init__(self, **options):
        self.options = validated_options(self.options_model, self.name, options)
        unknown = sorted(set(self.options.thresholds) - set(self.structures))
        if unknown:
            raise ValueError(f"backend '{self.name}': invalid options: thresholds: unknown structures {unknown}; "
                             f"known: {sorted(self.structures)}")
        # resolved now, so that a missing file fails in the launcher rather than on a worker
        self.weights_path = resolve_weights(self.weights_spec, self.options.weights_dir)
        self.model: torch.nn.Module | None = None
        self.device = pick_device(self.options.device)
        try:
            self.precision = pick_precision(self.options.precision, self.device)
        except ValueError as error:
            raise ValueError(f"backend '{self.name}': {error}") from None
        self.names = list(self.structures)
        self.channels = [list(self.model_targets).index(self.structures[name]) for name in self.names]
        self.thresholds = [self.options.thresholds.get(name, self.options.threshold) for name in self.names]

    @abstractmethod
    def build_model(self, weights: Path) -> torch.nn.Module:
        """The model with the weights file loaded (torchxrayvision's own loader)."""

    def load(self) -> None:
        if self.model is None:
            self.model = self.build_model(self.weights_path).to(self.device).eval()

    def result(self, masks: dict[str, np.ndarray], confidence: dict[str, float]) -> AnatomyResult:
        return AnatomyResult(masks=masks, confidence=confidence, backend=self.name, version=self.version)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context of a forward pass (a no-op for fp32)."""
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.precision)

    def segment(self, images: Sequence[np.ndarray]) -> list[AnatomyResult]:
        self.load()
        results = []
        for start in range(0, len(images), self.options.batch_size):
            chunk = images[start : start + self.options.batch_size]
            with self.autocast():
                batch = segment_batch(self.model, chunk, self.channels, self.input_size, self.device)
            for probabilities in batch:
                results.append(self.result(*masks_and_confidence(probabilities, self.names, self.thresholds)))
        return results
