"""ChestX-Det PSPNet anatomy backend (torchxrayvision, 14 structures).

The model has lungs, heart, mediastinum, diaphragm and more but no lung zones: the zones and the
'lung' union come from its lung masks by the rule in `zones.py` (the same rule the classical backend
uses). Weights are read from `weights_dir` (torchxrayvision's file name), never downloaded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchxrayvision.baseline_models import chestx_det

from anatomy_models.base import register
from anatomy_models.weights import PSPNET_WEIGHTS
from anatomy_models.xrv_segmenter import XrvSegmenter, XrvSegmenterOptions
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


class PspnetOptions(XrvSegmenterOptions):
    zone_bounds: ZoneBoundsOption = ZONE_BOUNDS


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
class PspnetAnatomy(XrvSegmenter):
    """ChestX-Det PSPNet (torchxrayvision): lungs, heart, mediastinum, diaphragm, ...; zones from `zones.py`."""

    version = "pspnet_chestxray_best_model_4"

    options_model = PspnetOptions
    weights_spec = PSPNET_WEIGHTS
    input_size = PSPNET_INPUT_SIZE
    structures = STRUCTURES
    model_targets = chestx_det.PSPNet.targets

    def build_model(self, weights: Path) -> torch.nn.Module:
        return build_pspnet_model(weights)

    def result(self, masks: dict[str, np.ndarray], confidence: dict[str, float]) -> AnatomyResult:
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
        return super().result(masks, confidence)
