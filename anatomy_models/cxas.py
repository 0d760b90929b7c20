"""CXAS anatomy backend: torchxrayvision's chest X-ray anatomy segmentation UNet (159 classes).

Our Location values are CXAS class names, so lungs, zones, 'lung' and 'heart' map one to one; the
extra structures grounding uses are mapped in `EXTRA_STRUCTURES`. Weights are read from
`weights_dir` (torchxrayvision's file name), never downloaded.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torchxrayvision.baseline_models import chestx_anatomy

from anatomy_models.base import AnatomyBackend, register, validated_options
from anatomy_models.weights import CXAS_WEIGHTS, masks_and_confidence, pick_device, resolve_weights, segment_batch
from schemas.vocab import Location
from transforms.records import AnatomyResult

# Our name -> CXAS class name, for structures beyond the Location vocabulary.
EXTRA_STRUCTURES: dict[str, str] = {
    "mediastinum": "cardiomediastinum",
    "diaphragm": "diaphragm",
    "right hemidiaphragm": "right hemidiaphragm",
    "left hemidiaphragm": "left hemidiaphragm",
    "trachea": "trachea",
    "spine": "spine",
    "aorta": "aorta",
}

# Our name -> CXAS class name, in output order.
STRUCTURES: dict[str, str] = {location.value: location.value for location in Location} | EXTRA_STRUCTURES

CXAS_INPUT_SIZE = 512


class CxasOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights_dir: str | None = None  # default: torchxrayvision's cache directory
    device: str = "auto"  # 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    thresholds: dict[str, float] = Field(default_factory=dict)  # per structure (our names), overrides `threshold`
    batch_size: int = Field(4, ge=1)

    @field_validator("thresholds")
    @classmethod
    def _known_structures(cls, thresholds: dict[str, float]) -> dict[str, float]:
        known = set(STRUCTURES)
        unknown = sorted(set(thresholds) - known)
        if unknown:
            raise ValueError(f"unknown structures {unknown}; known: {sorted(known)}")
        if any(not 0.0 < value < 1.0 for value in thresholds.values()):
            raise ValueError("thresholds must lie in (0, 1)")
        return thresholds



def build_cxas_model(weights: Path) -> chestx_anatomy.UNetResNet50:
    """The CXAS UNet with its weights, through torchxrayvision's own loader.

    torchxrayvision's constructor downloads the file when it is absent from `cache_dir`; resolving the
    file first (in the backend's constructor) means torchxrayvision's constructor always finds it and never downloads.
    """
    return chestx_anatomy.UNetResNet50(weights=True, cache_dir=str(weights.parent))


@register("anatomy", "cxas")
class CxasAnatomy(AnatomyBackend):
    """159-class CXAS UNet-ResNet50 (torchxrayvision); masks for every Location plus `EXTRA_STRUCTURES`."""

    version = "UNet_ResNet50_default"

    def __init__(self, **options):
        self.options = validated_options(CxasOptions, "cxas", options)
        self.weights_path = resolve_weights(CXAS_WEIGHTS, self.options.weights_dir)  # fails now, not on a worker
        self.model: torch.nn.Module | None = None
        self.device = pick_device(self.options.device)
        self.names = list(STRUCTURES)
        self.channels = [chestx_anatomy.TARGETS.index(STRUCTURES[name]) for name in self.names]
        self.thresholds = [self.options.thresholds.get(name, self.options.threshold) for name in self.names]

    def load(self) -> None:
        if self.model is None:
            self.model = build_cxas_model(self.weights_path).to(self.device).eval()

    def segment(self, images: Sequence[np.ndarray]) -> list[AnatomyResult]:
        self.load()
        results = []
        for start in range(0, len(images), self.options.batch_size):
            chunk = images[start : start + self.options.batch_size]
            for probabilities in segment_batch(self.model, chunk, self.channels, CXAS_INPUT_SIZE, self.device):
                masks, confidence = masks_and_confidence(probabilities, self.names, self.thresholds)
                results.append(AnatomyResult(masks=masks, confidence=confidence, backend=self.name, version=self.version))
        return results
