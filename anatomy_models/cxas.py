"""CXAS anatomy backend: torchxrayvision's chest X-ray anatomy segmentation UNet (159 classes).

Our Location values are CXAS class names, so lungs, zones, 'lung' and 'heart' map one to one; the
extra structures grounding uses are mapped in `EXTRA_STRUCTURES`. Weights are read from
`weights_dir` (torchxrayvision's file name), never downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torchxrayvision.baseline_models import chestx_anatomy

from anatomy_models.base import register
from anatomy_models.weights import CXAS_WEIGHTS
from anatomy_models.xrv_segmenter import XrvSegmenter
from schemas.vocab import Location

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


def build_cxas_model(weights: Path) -> chestx_anatomy.UNetResNet50:
    """The CXAS UNet with its weights, through torchxrayvision's own loader.

    torchxrayvision's constructor downloads the file when it is absent from `cache_dir`; resolving the
    file first (in the backend's constructor) means torchxrayvision's constructor always finds it and never downloads.
    """
    return chestx_anatomy.UNetResNet50(weights=True, cache_dir=str(weights.parent))


@register("anatomy", "cxas")
class CxasAnatomy(XrvSegmenter):
    """159-class CXAS UNet-ResNet50 (torchxrayvision); masks for every Location plus `EXTRA_STRUCTURES`."""

    version = "UNet_ResNet50_default"
    weights_spec = CXAS_WEIGHTS
    input_size = CXAS_INPUT_SIZE
    structures = STRUCTURES
    model_targets = chestx_anatomy.TARGETS

    def build_model(self, weights: Path) -> torch.nn.Module:
        return build_cxas_model(weights)
