"""What one image contributes to the dataset, encoded at source resolution: small enough to shuffle."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from schemas.vocab import LesionType
from transforms.grounding import Grounding
from transforms.masks import dilate, encode_resized
from transforms.records import AnatomyResult, ErrorRecord

FULL_MASK = ()  # key of the whole fused mask in `FindingOnImage.masks`


@dataclass(frozen=True)
class EncodedMask:
    rle: str
    area: int
    bbox: list[int]
    height: int
    width: int


@dataclass
class FindingOnImage:
    finding_id: str
    target: str
    grounded_locations: tuple[str, ...]
    unreached_locations: tuple[str, ...]
    discard: str | None
    stage: str
    details: str  # JSON
    scores: dict
    source: str
    masks: dict[tuple[str, ...], EncodedMask] = field(default_factory=dict)  # location tuple -> mask part


@dataclass
class ImageResult:
    study_id: str
    dicom_id: str
    image_path: str
    height: int = 0
    width: int = 0
    findings: list[FindingOnImage] = field(default_factory=list)
    empty_locations: dict[str, list[str]] = field(default_factory=dict)
    error: ErrorRecord | None = None


def _encode(mask: np.ndarray, height: int, width: int) -> EncodedMask | None:
    rle, area, bbox = encode_resized(mask, height, width)
    if area == 0:
        return None
    return EncodedMask(rle=rle, area=area, bbox=bbox, height=height, width=width)


def location_parts(grounding: Grounding, unions: list[list[str]]) -> list[tuple[str, ...]]:
    """The location sets a grounded mask is asked about: each grounded location and each fully grounded union."""
    if grounding.finding.entity == LesionType.CARDIOMEGALY.value:
        return []
    grounded = set(grounding.grounded_locations)
    parts = [(loc,) for loc in grounding.grounded_locations]
    parts += [tuple(u) for u in unions if len(u) > 1 and set(u) <= grounded]
    return parts


def encode_grounding(grounding: Grounding, anatomy: AnatomyResult, height: int, width: int,
                     unions: list[list[str]], part_margin: float = 0.02) -> FindingOnImage:
    masks: dict[tuple[str, ...], EncodedMask] = {}
    if grounding.mask is not None:
        full = _encode(grounding.mask, height, width)
        if full is not None:
            masks[FULL_MASK] = full
        margin = int(round(part_margin * max(grounding.mask.shape)))
        for part in location_parts(grounding, unions):
            region = np.zeros_like(grounding.mask)
            for loc in part:
                region |= anatomy.masks.get(loc, region)
            # a small margin keeps lesion pixels that the anatomy boundary cuts off
            encoded = _encode(grounding.mask & dilate(region, margin), height, width)
            if encoded is not None:
                masks[part] = encoded
    return FindingOnImage(
        finding_id=grounding.finding.finding_id,
        target=grounding.finding.entity,
        grounded_locations=grounding.grounded_locations,
        unreached_locations=grounding.unreached_locations,
        discard=grounding.discard.value if grounding.discard else None,
        stage=grounding.stage.value,
        details=json.dumps(grounding.details, sort_keys=True, default=float),
        scores={k: float(v) for k, v in grounding.scores.items()},
        source=grounding.source,
        masks=masks,
    )

