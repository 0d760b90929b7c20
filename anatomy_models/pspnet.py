"""ChestX-Det PSPNet anatomy backend (torchxrayvision, 14 structures).

The model has lungs, heart, mediastinum, diaphragm and more but no lung zones: the zones and the
'lung' union come from its lung masks by the rule in `zones.py` (the same rule the classical backend
uses). Weights are read from `weights_dir` (torchxrayvision's file name), never downloaded.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torchxrayvision.baseline_models import chestx_det

from anatomy_models.base import AnatomyBackend, register, validated_options
from anatomy_models.weights import PSPNET_WEIGHTS, masks_and_confidence, pick_device, resolve_weights, segment_batch
from anatomy_models.zones import ZONE_BOUNDS, ZoneBoundsOption, lung_regions
from schemas.vocab import Location
from transforms.records import AnatomyResult

# Our name -> ChestX-Det target name (sides are the patient's, as in our vocabulary).
STRUCTURES: dict[str, str] = {
    Location.RIGHT_LUNG.value: "Right Lung",
    Location.LEFT_LUNG.value: "Left Lung",
    Location.HEART.value: "Heart",
    "mediastinum": "Mediastinum",
    "diaphragm": "Facies Diaphragmatica",
    "aorta": "Aorta",
    "trachea": "Weasand",
    "spine": "Spine",
    "right hilum": "Right Hilus Pulmonis",
    "left hilum": "Left Hilus Pulmonis",
}

SIDED_PAIRS: tuple[tuple[str, str], ...] = ((Location.RIGHT_LUNG.value, Location.LEFT_LUNG.value), ("right hilum", "left hilum"))

PSPNET_INPUT_SIZE = 512


class PspnetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights_dir: str | None = None  # default: torchxrayvision's cache directory
    device: str = "auto"  # 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    thresholds: dict[str, float] = Field(default_factory=dict)  # per structure (our names), overrides `threshold`
    batch_size: int = Field(4, ge=1)
    zone_bounds: ZoneBoundsOption = ZONE_BOUNDS

    @field_validator("thresholds")
    @classmethod
    def _known_structures(cls, thresholds: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(thresholds) - set(STRUCTURES))
        if unknown:
            raise ValueError(f"unknown structures {unknown}; known: {sorted(STRUCTURES)}")
        if any(not 0.0 < value < 1.0 for value in thresholds.values()):
            raise ValueError("thresholds must lie in (0, 1)")
        return thresholds


def build_pspnet_model(weights: Path) -> chestx_det.PSPNet:
    """The ChestX-Det PSPNet with its weights, through torchxrayvision's own loader.

    torchxrayvision's constructor downloads the file when it is absent from `cache_dir`; resolving the
    file first (in the backend's constructor) means torchxrayvision's constructor always finds it and never downloads.
    The file is a DataParallel state dict (keys prefixed `module.`), which that loader strips.
    """
    return chestx_det.PSPNet(cache_dir=str(weights.parent))


def _centroid_x(mask: np.ndarray) -> float:
    """Mean column of a mask; NaN when empty (so comparisons with it are False)."""
    return float(np.nonzero(mask)[1].mean()) if mask.any() else float("nan")


@register("anatomy", "pspnet")
class PspnetAnatomy(AnatomyBackend):
    """ChestX-Det PSPNet (torchxrayvision): lungs, heart, mediastinum, diaphragm, ...; zones from `zones.py`."""

    version = "pspnet_chestxray_best_model_4"

    def __init__(self, **options):
        self.options = validated_options(PspnetOptions, "pspnet", options)
        self.weights_path = resolve_weights(PSPNET_WEIGHTS, self.options.weights_dir)  # fails now, not on a worker
        self.model: torch.nn.Module | None = None
        self.device = pick_device(self.options.device)
        self.names = list(STRUCTURES)
        self.channels = [chestx_det.PSPNet.targets.index(STRUCTURES[name]) for name in self.names]
        self.thresholds = [self.options.thresholds.get(name, self.options.threshold) for name in self.names]

    def load(self) -> None:
        if self.model is None:
            self.model = build_pspnet_model(self.weights_path).to(self.device).eval()

    def segment(self, images: Sequence[np.ndarray]) -> list[AnatomyResult]:
        self.load()
        results = []
        for start in range(0, len(images), self.options.batch_size):
            chunk = images[start : start + self.options.batch_size]
            for probabilities in segment_batch(self.model, chunk, self.channels, PSPNET_INPUT_SIZE, self.device):
                masks, confidence = masks_and_confidence(probabilities, self.names, self.thresholds)
                results.append(self._with_zones(masks, confidence))
        return results

    def _with_zones(self, masks: dict[str, np.ndarray], confidence: dict[str, float]) -> AnatomyResult:
        right, left = Location.RIGHT_LUNG.value, Location.LEFT_LUNG.value
        # Our contract puts the patient's left lung on the image right; if the model's sides come out
        # the other way round (a mirrored film), follow the image convention.
        if _centroid_x(masks[right]) > _centroid_x(masks[left]):
            for right_name, left_name in SIDED_PAIRS:
                masks[right_name], masks[left_name] = masks[left_name], masks[right_name]
                confidence[right_name], confidence[left_name] = confidence[left_name], confidence[right_name]
        regions = lung_regions(masks[right], masks[left], self.options.zone_bounds)
        for name in regions:
            if name not in confidence:
                side = right if name.startswith("right") else left if name.startswith("left") else None
                confidence[name] = confidence[side] if side else min(confidence[right], confidence[left])
            if not regions[name].any():
                confidence[name] = 0.0
        masks.update(regions)
        return AnatomyResult(masks=masks, confidence=confidence, backend=self.name, version=self.version)
