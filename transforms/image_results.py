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


class _MaskCache:
    """One image's encoded masks and location regions: repeated mentions share one grounded mask, and a location
    part often keeps the whole mask, so each distinct mask is resized and encoded once per image."""

    def __init__(self, anatomy: AnatomyResult, height: int, width: int, margin_fraction: float):
        self._anatomy, self._height, self._width, self._margin_fraction = anatomy, height, width, margin_fraction
        self._encoded: dict[tuple[tuple[int, int], bytes], EncodedMask | None] = {}
        self._regions: dict[tuple[str, ...], np.ndarray] = {}

    def encode(self, mask: np.ndarray) -> EncodedMask | None:
        key = (mask.shape, mask.tobytes())
        if key not in self._encoded:
            rle, area, bbox = encode_resized(mask, self._height, self._width)
            self._encoded[key] = EncodedMask(rle, area, bbox, self._height, self._width) if area else None
        return self._encoded[key]

    def region(self, part: tuple[str, ...], shape: tuple[int, int]) -> np.ndarray:
        """The part's locations, grown by a small margin that keeps lesion pixels the anatomy boundary cuts off."""
        if part not in self._regions:
            region = np.zeros(shape, bool)
            for loc in part:
                region |= self._anatomy.masks.get(loc, region)
            self._regions[part] = dilate(region, int(round(self._margin_fraction * max(shape))))
        return self._regions[part]


def location_parts(grounding: Grounding, unions: list[list[str]]) -> list[tuple[str, ...]]:
    """The location sets a grounded mask is asked about: each grounded location and each fully grounded union."""
    if grounding.finding.entity == LesionType.CARDIOMEGALY.value:
        return []
    grounded = set(grounding.grounded_locations)
    parts = [(loc,) for loc in grounding.grounded_locations]
    parts += [tuple(u) for u in unions if len(u) > 1 and set(u) <= grounded]
    return parts


def encode_groundings(groundings: list[Grounding], anatomy: AnatomyResult, height: int, width: int,
                      unions: list[list[str]], part_margin: float = 0.02) -> list[FindingOnImage]:
    """One image's groundings with their masks (whole, and per location part) at source resolution."""
    cache = _MaskCache(anatomy, height, width, part_margin)
    return [_encode_grounding(g, cache, unions) for g in groundings]


def _encode_grounding(grounding: Grounding, cache: _MaskCache, unions: list[list[str]]) -> FindingOnImage:
    masks: dict[tuple[str, ...], EncodedMask] = {}
    if grounding.mask is not None:
        full = cache.encode(grounding.mask)
        if full is not None:
            masks[FULL_MASK] = full
        for part in location_parts(grounding, unions):
            encoded = cache.encode(grounding.mask & cache.region(part, grounding.mask.shape))
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

