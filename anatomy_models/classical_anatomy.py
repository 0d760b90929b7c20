"""Weight-free anatomy backend: lung fields and heart from a radiograph with OpenCV/numpy.

Method (at a fixed working size, 256 px on the long side by default):
1. Intensity normalisation: 1st-99th percentile stretch (burnt-in text and black borders do not set
   the range), CLAHE, Gaussian blur.
2. Midline: the brightest column band (spine + mediastinum) in the central third; it separates the
   two lungs even when they touch through a thin or rotated mediastinum.
3. Dark field: pixels below the Otsu threshold and below their broad neighbourhood mean (the lung is
   darker than the chest wall around it, which keeps dark lateral soft tissue out); air outside the
   body (very dark, touching the image border) is removed.
4. Morphological opening cuts thin bridges (to tubes, the neck, the outer soft tissue); on each side of
   the midline, the largest remaining component centred in the upper 80 % of the image is the aerated lung.
5. Shape prior: the convex hull of that component is the lung field, so opacities, consolidation,
   devices and markers inside the lung are kept (an opacified lung is still lung). For the patient's
   left lung the medial border below the hilum is carried straight down to the base, which adds the
   lung behind the heart (the usual annotation convention). A small dilation undoes the shrinkage of
   blur + threshold + opening at the lung edge.
6. Heart: the gap between the two aerated lungs' medial borders from the hilum down to the higher of
   the two lung bottoms, convex-filled. Mediastinum: the gap between the lungs from the apices down to
   the heart's bottom (cardiomediastinal silhouette, heart included). Diaphragm: a band under each
   lung's lower border. Retrocardiac lung (an extra structure): the part of the left lung field that was
   carried down rather than seen aerated, which the film shows as soft tissue. Zones come from `zones.py`.

Confidence is a plausibility score in [0, 1] (size, height and left/right balance of the lung fields),
not a calibrated probability; a blank or non-chest image gets empty masks and confidence 0.
Image convention: the patient's left lung is on the image right (larger x).
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from anatomy_models.base import AnatomyBackend, register, validated_options
from anatomy_models.zones import ZONE_BOUNDS, ZoneBoundsOption, lower_border_band, lung_regions
from schemas.vocab import Location
from transforms.records import AnatomyResult

# Geometry, as fractions of the working image's long side unless said otherwise (tuned on whole-image
# behaviour of the dev radiographs, not per image).
RETROCARDIAC_LUNG = "retrocardiac lung"  # extra structure: lung field carried behind the heart, not seen aerated
_BLUR_SIGMA = 3.0 / 256
_OPENING = 8.0 / 256  # opening diameter that cuts bridges from lung to neck/soft tissue/tubes
_NEIGHBOURHOOD = 0.4  # of the image width: box size of the local mean a lung pixel must be darker than
_EDGE_DILATION = 6.0 / 256  # diameter of the dilation that restores the lung edge lost to blur + threshold + opening
_MIN_LUNG_AREA = 0.005  # of the image area: smaller dark blobs are not a lung
_LUNG_CENTROID_MAX_Y = 0.8  # of the image height: a lung's centroid is above the abdomen
_HILUM_LEVEL = 0.45  # of a lung's height from its apex: where the heart and the retrocardiac border start
_DIAPHRAGM_THICKNESS = 0.03  # of the image height
_MIDLINE_BAND = 2.0 / 256  # half-width of the cut made along the midline
_HEART_BOTTOM_LEVEL = 0.88  # of the lungs' height from the apices: the heart reaches at least the diaphragm's dome
_RIGHT_HEART_SHARE = 0.8  # the heart's extent right of the midline is at most this share of its extent left of it


class ClassicalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    work_size: int = Field(256, ge=128, le=1024, description="long side, px, the segmentation runs at")
    clahe_clip: float = Field(2.0, gt=0.0, le=10.0)
    zone_bounds: ZoneBoundsOption = ZONE_BOUNDS


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A 2-D image of any numeric dtype as uint8, stretched between its 1st and 99th percentiles."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    values = image.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(image.shape, np.uint8)
    low, high = np.percentile(values[finite], (1, 99))
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    values = np.where(finite, values, low)
    return np.clip((values - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)


def _disk(diameter: float) -> np.ndarray:
    size = max(3, int(round(diameter)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _convex_fill(mask: np.ndarray) -> np.ndarray:
    filled = np.zeros(mask.shape, np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if contours:
        cv2.fillPoly(filled, [cv2.convexHull(np.vstack(contours))], 1)
    return filled.astype(bool)


def find_midline(smoothed: np.ndarray) -> int:
    """Column of the spine/mediastinum: the brightest column band in the central third (rows 20-80 %)."""
    height, width = smoothed.shape
    profile = smoothed[int(0.2 * height) : int(0.8 * height)].mean(axis=0, dtype=np.float32)
    profile = cv2.GaussianBlur(profile[None, :], (0, 0), max(1.0, width / 64))[0]
    start, stop = width // 3, max(width // 3 + 1, 2 * width // 3)
    return start + int(np.argmax(profile[start:stop]))


def dark_field(smoothed: np.ndarray) -> np.ndarray:
    """Candidate aerated-lung pixels: darker than Otsu's threshold and than their neighbourhood, inside the body."""
    width = smoothed.shape[1]
    threshold, _ = cv2.threshold(smoothed, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Air around the body: much darker than the lungs' threshold and reaching the image border.
    air = (smoothed < 0.5 * threshold).astype(np.uint8)
    _, labels = cv2.connectedComponents(air)
    border_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, border_labels[border_labels > 0])
    # Lung against body only: outside air in the histogram drags the threshold below the less aerated bases.
    inside = smoothed[~outside]
    if inside.size > 0.2 * smoothed.size:
        threshold, _ = cv2.threshold(inside.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    box = max(3, int(_NEIGHBOURHOOD * width)) | 1
    neighbourhood = cv2.blur(smoothed.astype(np.float32), (box, box))
    dark = (smoothed < threshold) & (smoothed < neighbourhood)
    return dark & ~outside


def _largest_lung_components(candidates: np.ndarray, opening: np.ndarray, midline: int) -> dict[str, np.ndarray]:
    """Per side ('right' = image left of the midline), the largest opened dark component centred there."""
    opened = cv2.morphologyEx(candidates.astype(np.uint8), cv2.MORPH_OPEN, opening)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(opened)
    height, width = candidates.shape
    best = {"right": (0, 0), "left": (0, 0)}
    for label in range(1, count):
        area = stats[label, cv2.CC_STAT_AREA]
        centre_x, centre_y = centroids[label]
        if area < _MIN_LUNG_AREA * height * width or centre_y > _LUNG_CENTROID_MAX_Y * height:
            continue
        side = "right" if centre_x < midline else "left"
        if area > best[side][1]:
            best[side] = (label, area)
    return {side: labels == label if label else np.zeros_like(candidates, dtype=bool) for side, (label, _) in best.items()}


def _regrow_base(component: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Give back the thin lower parts the opening cut off (the strip beside a large heart, the costophrenic
    angle): dark pixels connected to the lung, below its middle and within its columns, where a bridge to
    the neck or the chest wall cannot be."""
    if not component.any():
        return component
    rows = np.flatnonzero(component.any(axis=1))
    cols = np.flatnonzero(component.any(axis=0))
    allowed = np.zeros_like(candidates, dtype=bool)
    allowed[(rows[0] + rows[-1]) // 2 :, cols[0] : cols[-1] + 1] = True
    allowed = (allowed & candidates) | component
    _, labels = cv2.connectedComponents(allowed.astype(np.uint8), connectivity=4)
    keep = np.unique(labels[component])
    return np.isin(labels, keep[keep > 0])


def _carry_medial_border_down(lung: np.ndarray, side: str) -> np.ndarray:
    """Extend a lung's medial border straight down from the hilum level to its bottom, then convex-fill."""
    rows = np.flatnonzero(lung.any(axis=1))
    if rows.size == 0:
        return lung
    top, bottom = int(rows[0]), int(rows[-1])
    hilum = top + int(_HILUM_LEVEL * (bottom - top))
    hilum_columns = np.flatnonzero(lung[hilum])
    if hilum_columns.size == 0:
        return lung
    extended = lung.copy()
    for row in range(hilum, bottom + 1):
        columns = np.flatnonzero(lung[row])
        if columns.size == 0:
            continue
        if side == "left":  # image right: the medial border is the smallest x
            extended[row, min(hilum_columns[0], columns[0]) : columns[-1] + 1] = True
        else:
            extended[row, columns[0] : max(hilum_columns[-1], columns[-1]) + 1] = True
    return _convex_fill(extended)


def _gap_between(right_lung: np.ndarray, left_lung: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """Pixels between the right lung's medial (largest x) and the left lung's medial (smallest x) border."""
    gap = np.zeros_like(right_lung)
    for row in range(max(top, 0), min(bottom, gap.shape[0] - 1) + 1):
        right_columns = np.flatnonzero(right_lung[row])
        left_columns = np.flatnonzero(left_lung[row])
        if right_columns.size and left_columns.size and left_columns[0] > right_columns[-1] + 1:
            gap[row, right_columns[-1] + 1 : left_columns[0]] = True
    return gap


def _cardiophrenic_row(lung: np.ndarray, side: str, top: int) -> int:
    """Row of the cardiophrenic angle: the lowest lung pixel between the lung's medial border at the heart's
    top and the lung's middle column (the lung's lower border next to the heart)."""
    cols = np.flatnonzero(lung.any(axis=0))
    middle = (cols[0] + cols[-1]) // 2
    at_top = np.flatnonzero(lung[top]) if lung[top].any() else cols
    adjacent = lung[:, middle : at_top[-1] + 1] if side == "right" else lung[:, at_top[0] : middle + 1]
    rows = np.flatnonzero(adjacent.any(axis=1))
    return int(rows[-1]) if rows.size else top


def _heart_between(right_lung: np.ndarray, left_lung: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """Rows top..bottom between the aerated lungs' medial borders (not their convex hulls, which cut into the
    heart's bulge); below a lung's last row its border is carried straight down."""
    heart = np.zeros_like(right_lung)
    right_border = left_border = None
    for row in range(max(top, 0), min(bottom, heart.shape[0] - 1) + 1):
        right_columns = np.flatnonzero(right_lung[row])
        left_columns = np.flatnonzero(left_lung[row])
        right_border = right_columns[-1] if right_columns.size else right_border
        left_border = left_columns[0] if left_columns.size else left_border
        if right_border is not None and left_border is not None and left_border > right_border + 1:
            heart[row, right_border + 1 : left_border] = True
    return heart


def _cap_right_border(heart: np.ndarray, midline: int) -> np.ndarray:
    """The heart reaches less far right of the midline than left of it; where the right lung's lower medial
    border is not aerated enough to be found, the gap would run out to the chest wall."""
    cols = np.flatnonzero(heart.any(axis=0))
    if cols.size == 0 or cols[-1] <= midline:
        return heart
    capped = heart.copy()
    capped[:, : max(0, midline - int(round(_RIGHT_HEART_SHARE * (cols[-1] - midline))))] = False
    return capped


def _extent(mask: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    return int(rows[0]), int(rows[-1])


def _lung_confidence(lung: np.ndarray, other: np.ndarray) -> float:
    """Plausibility of a lung field: enough area and height, and not lopsided against the other lung."""
    area = lung.mean()
    if area == 0:
        return 0.0
    top, bottom = _extent(lung)
    height = (bottom - top + 1) / lung.shape[0]
    balance = min(area, other.mean()) / max(area, other.mean())
    score = 0.95 * min(1.0, area / 0.06) * min(1.0, height / 0.4) * np.sqrt(balance)
    return float(np.clip(score, 0.0, 1.0))


def segment_lungs_and_heart(image: np.ndarray, work_size: int = 256, clahe_clip: float = 2.0) -> dict[str, np.ndarray]:
    """Right lung, left lung, aerated left lung, heart, mediastinum and diaphragm at the working size.

    Keys: 'right lung', 'left lung', 'heart', 'mediastinum', 'diaphragm', 'retrocardiac lung' (bool masks at
    the working size, whose long side is `work_size`).
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    height, width = image.shape
    scale = work_size / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    values = image if image.dtype == np.uint8 else np.nan_to_num(image.astype(np.float32))
    small = to_uint8(cv2.resize(values, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR))
    work_h, work_w = small.shape
    unit = max(work_h, work_w)
    equalised = cv2.createCLAHE(clipLimit=clahe_clip, tileGridSize=(8, 8)).apply(small)
    smoothed = cv2.GaussianBlur(equalised, (0, 0), _BLUR_SIGMA * unit)

    midline = find_midline(smoothed)
    candidates = dark_field(smoothed)
    band = max(1, int(round(_MIDLINE_BAND * unit)))
    candidates[:, max(midline - band, 0) : midline + band + 1] = False
    opening = _disk(_OPENING * unit)

    components = {side: _regrow_base(component, candidates)
                  for side, component in _largest_lung_components(candidates, opening, midline).items()}
    aerated = {side: _convex_fill(component) for side, component in components.items()}

    dilation = _disk(_EDGE_DILATION * unit)
    lungs = {
        "right": aerated["right"],
        "left": _carry_medial_border_down(aerated["left"], "left"),
    }
    for side in lungs:
        lungs[side] = cv2.dilate(lungs[side].astype(np.uint8), dilation).astype(bool)
    lungs["right"][:, midline:] = False
    lungs["left"][:, :midline] = False

    heart = np.zeros((work_h, work_w), bool)
    mediastinum = np.zeros((work_h, work_w), bool)
    if aerated["right"].any() and aerated["left"].any():
        (right_top, right_bottom), (left_top, left_bottom) = _extent(aerated["right"]), _extent(aerated["left"])
        heart_top = int(round(np.mean([t + _HILUM_LEVEL * (b - t) for t, b in ((right_top, right_bottom), (left_top, left_bottom))])))
        lungs_top, lungs_bottom = min(right_top, left_top), max(right_bottom, left_bottom)
        heart_bottom = max(*(_cardiophrenic_row(components[side], side, heart_top) for side in ("right", "left")),
                           int(round(lungs_top + _HEART_BOTTOM_LEVEL * (lungs_bottom - lungs_top))))
        heart = _heart_between(components["right"], components["left"], heart_top, heart_bottom)
        heart = _convex_fill(_cap_right_border(heart, midline))
        mediastinum = _gap_between(aerated["right"], aerated["left"], min(right_top, left_top), heart_bottom) | heart

    # The part of the left lung field that was carried down, not seen aerated: behind the heart and under the
    # dome. It is lung by convention, but the film shows soft tissue there.
    retrocardiac = lungs["left"] & ~cv2.dilate(aerated["left"].astype(np.uint8), dilation).astype(bool)
    both = lungs["right"] | lungs["left"]
    diaphragm = lower_border_band(both, max(1, int(round(_DIAPHRAGM_THICKNESS * work_h)))) & ~both
    return {
        Location.RIGHT_LUNG.value: lungs["right"],
        Location.LEFT_LUNG.value: lungs["left"],
        Location.HEART.value: heart,
        "mediastinum": mediastinum,
        "diaphragm": diaphragm,
        RETROCARDIAC_LUNG: retrocardiac,
    }


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def _heart_confidence(heart: np.ndarray, lung: np.ndarray, lung_confidence: float) -> float:
    """Plausible cardiothoracic ratio (heart width over lung-field width) scaled by the lungs' confidence."""
    if not heart.any() or not lung.any():
        return 0.0
    heart_width = np.ptp(np.flatnonzero(heart.any(axis=0))) + 1
    thorax_width = np.ptp(np.flatnonzero(lung.any(axis=0))) + 1
    ratio = heart_width / thorax_width
    plausible = 1.0 if 0.25 <= ratio <= 0.7 else 0.5
    return float(lung_confidence * plausible)


@register("anatomy", "classical")
class ClassicalAnatomy(AnatomyBackend):
    """Lungs, zones, heart, mediastinum and diaphragm from image intensities and shape priors; no weights."""

    version = "1"

    def __init__(self, **options):
        self.options = validated_options(ClassicalOptions, "classical", options)

    def segment(self, images: Sequence[np.ndarray]) -> list[AnatomyResult]:
        return [self.segment_one(image) for image in images]

    def segment_one(self, image: np.ndarray) -> AnatomyResult:
        image = np.asarray(image)
        height, width = image.shape[:2]
        structures = segment_lungs_and_heart(image, self.options.work_size, self.options.clahe_clip)
        structures = {name: _resize_mask(mask, height, width) for name, mask in structures.items()}
        right, left = structures[Location.RIGHT_LUNG.value], structures[Location.LEFT_LUNG.value]
        masks = lung_regions(right, left, self.options.zone_bounds)
        for name in (Location.HEART.value, "mediastinum", "diaphragm", RETROCARDIAC_LUNG):
            masks[name] = structures[name]

        side_confidence = {"right": _lung_confidence(right, left), "left": _lung_confidence(left, right)}
        lung_confidence = min(side_confidence.values())
        confidence = {}
        for name in masks:
            if name.startswith("right"):
                confidence[name] = side_confidence["right"]
            elif name.startswith("left"):
                confidence[name] = side_confidence["left"]
            else:
                confidence[name] = lung_confidence
        confidence[Location.HEART.value] = _heart_confidence(masks[Location.HEART.value], masks[Location.LUNG.value], lung_confidence)
        confidence = {name: (value if masks[name].any() else 0.0) for name, value in confidence.items()}
        return AnatomyResult(masks=masks, confidence=confidence, backend=self.name, version=self.version)
