"""Weight-free anatomy backend: lung fields and heart from a radiograph with OpenCV/numpy.

Method (at a fixed working size, 256 px on the long side by default):
1. Intensity normalisation: 1st-99th percentile stretch (burnt-in text and black borders do not set
   the range), CLAHE, Gaussian blur.
2. Midline: the brightest column band (spine + mediastinum) in the central third; it separates the
   two lungs even when they touch through a thin or rotated mediastinum.
3. Dark field: pixels below the Otsu threshold and below their broad neighbourhood mean (the lung is
   darker than the chest wall around it, which keeps dark lateral soft tissue out); air outside the
   body (very dark, touching the image border) is removed.
4. Aerated lungs: a wide opening leaves only the lungs' bodies (it cuts bridges to the neck, the
   shoulders, the air beside the body, tubes); on each side of the midline the largest body centred in
   the upper 80 % of the image is kept with its finer edge (a narrower opening) close around it, and
   the thin lower parts the opening cut off (the strip beside a large heart, the costophrenic angle).
5. Lung field: the convex hull of the aerated lung, so opacities, devices and markers inside it are
   kept (an opacified lung is still lung), without the concavity under the diaphragm's dome. The dome
   is the aerated lung's lower border, lowered to a parabola fitted through it where a basal opacity
   notches the aerated lung from below.
6. Lung the film does not show as air (lung by the anatomical convention of CXAS's projected masks):
   a base that ends far above the other side's, by more than hemidiaphragms differ, gets the other
   side's base mirrored about the spine; a lower border that rises toward the chest wall (a meniscus:
   fluid in the costophrenic angle) is carried down to the usual lung height for the thorax's width,
   lowest at the costophrenic angle; and both lower lobes lie behind the heart, so each lung's medial
   border runs from the upper zone to the paraspinal line (a share of the hemithorax's width from the
   spine) and down it to the diaphragm under the heart. A dilation undoes the shrinkage of blur,
   threshold and opening at the lung edge.
7. Heart: from a little above the hilum level to a little below the cardiophrenic angles (its outline
   continues behind the great vessels and below the angles), between the aerated lungs' medial borders
   (the right one carried straight down below the right cardiophrenic angle, where the dome or a basal
   opacity would pull it outward), its corners rounded by the ellipse inscribed in its bounding box and
   its extent right of the spine capped against its extent left of it. Mediastinum: the gap between
   the lungs from the apices down to the heart's bottom, heart included. Diaphragm: a band under each
   lung field. Retrocardiac lung (an extra structure): the lung fields carried behind the heart, which
   the film shows as heart. Zones come from `zones.py`.

Constants are fractions of the working image or of a lung's own size. The lung-field geometry is set on
whole-set behaviour of the dev radiographs (../shared/data/cxr-lungs-dev), the heart's hidden extents
(above the hilum, below the angles) on the synthetic corpus's true hearts, since the dev set has no heart
annotation; see bench/eval_anatomy.py.

Confidence is a plausibility score in [0, 1] (size, height and left/right balance of the lung fields),
not a calibrated probability; a blank or non-chest image gets empty masks and confidence 0.
Image convention: the patient's left lung is on the image right (larger x).
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy import ndimage
from pydantic import BaseModel, ConfigDict, Field

from anatomy_models.base import AnatomyBackend, register, validated_options
from anatomy_models.zones import ZONE_BOUNDS, ZoneBoundsOption, lower_border_band, lung_regions
from schemas.vocab import Location
from transforms.masks import disk, gap_between, lowest_rows, mirrored_columns, row_borders
from transforms.records import AnatomyResult

RETROCARDIAC_LUNG = "retrocardiac lung"  # extra structure: the lung fields carried behind the heart, not seen aerated

# Geometry, as fractions of the working image's long side unless said otherwise.
# Aerated lungs
_BLUR_SIGMA = 3.0 / 256
_NEIGHBOURHOOD = 0.4  # of the image width: box size of the local mean a lung pixel must be darker than
_MIDLINE_BAND = 2.0 / 256  # half-width of the cut made along the midline
_CORE_OPENING = 12.0 / 256  # opening diameter that leaves only the lungs' bodies (cuts bridges to neck, shoulders, outside air)
_OPENING = 8.0 / 256  # opening diameter of the lungs' finer edge
_CORE_REACH = 10.0 / 256  # how far past a lung's body its finer edge is followed
_MIN_LUNG_AREA = 0.005  # of the image area: smaller dark blobs are not a lung
_LUNG_CENTROID_MAX_Y = 0.8  # of the image height: a lung's centroid is above the abdomen
# Lung fields (fractions of a lung's own height or width where said)
_EDGE_DILATION = 6.0 / 256  # diameter of the dilation that restores the lung edge lost to blur + threshold + opening
_DOME_MARGIN = 0.15  # share of a lung's columns at each end (the angles) left out of the dome fit
_LATERAL_SHARE = 0.6  # share of the right lung's width, from the chest wall, where a notched base is filled down to the dome
_DOME_TOLERANCE = 0.03  # of a lung's width: lower-border points this far above the fitted dome are notches
_HEMIDIAPHRAGM_DIFFERENCE = 0.2  # of a lung's height: the most the two lung bases plausibly differ in height
_MENISCUS_RISE = 0.06  # of a lung's height: how much higher its lower border is at the wall than further in, for fluid
_LUNG_HEIGHT_TO_WIDTH = 0.8  # a lung's usual height (apex to costophrenic angle) over the thorax's width
_DOME_RISE = 0.15  # of a lung's height: how much higher the diaphragm is medially than at the costophrenic angle
_UPPER_ZONE_LEVEL = 0.25  # of a lung's height from its apex: where its medial border starts toward the paraspinal line
_HILUM_LEVEL = 0.45  # of a lung's height from its apex: the hilum, where the heart and the paraspinal border start
_PARASPINAL = 0.15  # of a hemithorax's width from the spine: the lower lobes' medial border behind the heart
_DIAPHRAGM_THICKNESS = 0.03  # of the image height
# Heart (its hidden extents set on the synthetic corpus's true hearts)
_HEART_EDGE_DILATION = 4.0 / 256  # diameter of the dilation that restores the lungs' edges along the heart
_HEART_BOTTOM_LEVEL = 0.88  # of the lungs' height from the apices: the heart reaches at least the diaphragm's dome
_HEART_ABOVE_HILUM = 0.07  # of the heart's visible height: how far its outline rises above the hilum level
_HEART_BELOW_ANGLES = 0.13  # of the heart's visible height: how far its lower border bows below the cardiophrenic angles
_RIGHT_BULGE_ROWS = (0.3, 0.6)  # shares of the heart's height between which its right border bulges furthest out
_HEART_ROUNDING = 1.1  # semi-axes of the ellipse that rounds the heart's corners, as shares of its half-width and half-height
_RIGHT_HEART_SHARE = 0.6  # the heart's extent right of the spine is at most this share of its extent left of it


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
    """Per side ('right' = image left of the midline), the largest dark component after the wide `opening`
    centred there (the lung's body), with the candidates of a narrower opening within a short reach of it (its
    edge, but not what thin bridges lead to)."""
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
    cores = {side: labels == label if label else np.zeros_like(candidates, dtype=bool) for side, (label, _) in best.items()}
    fine = cv2.morphologyEx(candidates.astype(np.uint8), cv2.MORPH_OPEN, disk(_OPENING * max(height, width)))
    reach = disk(_CORE_REACH * max(height, width))
    return {side: (cv2.dilate(core.astype(np.uint8), reach).astype(bool) & fine.astype(bool)) if core.any() else core
            for side, core in cores.items()}


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


def _spine_axis(midline: int, right: np.ndarray, left: np.ndarray) -> float:
    """Column of the spine behind the heart: the median of three estimates that fail differently (the brightest
    column band, which the heart pulls toward the patient's left; the centre between the lungs' lateral edges,
    which rotation moves; the centre of the upper mediastinum between the lungs' medial borders)."""
    right_cols, left_cols = np.flatnonzero(right.any(axis=0)), np.flatnonzero(left.any(axis=0))
    thorax_centre = (right_cols[0] + left_cols[-1]) / 2
    top, bottom = min(_extent(right)[0], _extent(left)[0]), max(_extent(right)[1], _extent(left)[1])
    rows = slice(top + int(0.15 * (bottom - top)), top + int(0.4 * (bottom - top)) + 1)
    (right_has, _, right_last), (left_has, left_first, _) = row_borders(right[rows]), row_borders(left[rows])
    both = right_has & left_has
    mediastinal_centre = float(np.median((right_last[both] + left_first[both]) / 2)) if both.any() else thorax_centre
    return float(np.median([midline, thorax_centre, mediastinal_centre]))


def _field_above_dome(hull: np.ndarray, component: np.ndarray, side: str) -> np.ndarray:
    """The lung field down to the diaphragm in each column the aerated lung reaches: the hull without the concavity
    under the dome, and, in the right lung's lateral part, filled down to the dome where a basal opacity notches the
    aerated lung from below (an opacified base is still lung). The left lung is not filled: the heart's apex rests
    on its dome, and a lower border made by the heart cannot be told from an opacity's by its shape. The diaphragm
    is the aerated lung's lowest pixel per column, lowered to a smooth dome fitted through it (never below the
    lung's lowest point, the costophrenic angle)."""
    columns, lowest = _lower_border(component)
    if columns.size == 0:
        return hull
    lowest = lowest.astype(np.float32)
    dome = np.maximum(ndimage.median_filter(lowest, size=max(3, (columns.size // 8) | 1), mode="nearest"),
                      np.minimum(_dome_fit(columns, lowest), lowest.max()))
    rows = np.arange(hull.shape[0])[:, None]
    field = hull.copy()
    field[:, columns] &= rows <= dome[None, :]
    if side == "right":
        lateral = columns <= columns[0] + _LATERAL_SHARE * (columns[-1] - columns[0])
        top = np.argmax(hull[:, columns[lateral]], axis=0)
        field[:, columns[lateral]] |= (rows >= top[None, :]) & (rows <= dome[lateral][None, :])
    return field


def _dome_fit(columns: np.ndarray, lowest: np.ndarray) -> np.ndarray:
    """A parabola through the lower border over the lung's inner columns (the angles left out), fitted again
    without the points that lie well above it (notches of basal opacities), evaluated at every column; -inf (no
    constraint) when too few points remain."""
    n = columns.size
    inner = slice(int(_DOME_MARGIN * n), int((1 - _DOME_MARGIN) * n))
    x, y = columns[inner].astype(np.float64), lowest[inner].astype(np.float64)
    if x.size < 5:
        return np.full(n, -np.inf, np.float32)
    keep = np.ones(x.size, bool)
    tolerance = _DOME_TOLERANCE * n
    for _ in range(3):
        coefficients = np.polyfit(x[keep], y[keep], 2)
        keep = y > np.polyval(coefficients, x) - tolerance
        if keep.sum() < 5:
            return np.full(n, -np.inf, np.float32)
    return np.polyval(coefficients, columns.astype(np.float64)).astype(np.float32)


def _medial_base_row(field: np.ndarray, side: str) -> int:
    """Row of the cardiophrenic angle: the lowest point of the lung's lower border over the medial half of its
    columns (the lower border rises from there along the heart border medially and onto the dome laterally)."""
    columns = np.flatnonzero(field.any(axis=0))
    half = columns[columns >= (columns[0] + columns[-1]) / 2] if side == "right" else columns[columns <= (columns[0] + columns[-1]) / 2]
    return int(lowest_rows(field)[half].max())


def _extend_behind_heart(field: np.ndarray, side: str, paraspinal: float, floor: int, heart: np.ndarray) -> np.ndarray:
    """Carry a lung field's medial border from the upper zone to the paraspinal line at the hilum and down that line
    to `floor`, the diaphragm under the heart: the lower lobe lies behind the heart, though the film shows soft
    tissue there. In the heart's rows the fill stays within the heart (below the dome is abdomen, not lung)."""
    if not field.any():
        return field
    top, bottom = _extent(field)
    floor = min(floor, bottom)
    start, hilum = top + int(_UPPER_ZONE_LEVEL * (bottom - top)), top + int(_HILUM_LEVEL * (bottom - top))
    medial = max if side == "right" else min
    start_cols = np.flatnonzero(field[start])
    heart_rows = np.flatnonzero(heart.any(axis=1))
    if start_cols.size == 0 or floor <= hilum or heart_rows.size == 0:
        return field
    start_x = float(medial(start_cols))
    rows = np.arange(start, floor + 1)
    has, first, last = row_borders(field[start : floor + 1])
    border, known = _carried_down(has, last if side == "right" else first)
    target = np.round(start_x + np.clip((rows - start) / max(1, hilum - start), 0.0, 1.0) * (paraspinal - start_x))
    # In the heart's rows the fill reaches no further out than the heart's edge on this side.
    heart_has, heart_first, heart_last = row_borders(heart[start : floor + 1])
    in_heart_rows = rows >= heart_rows[0]
    if side == "right":
        near = np.where(in_heart_rows, np.maximum(border, heart_first - 1), border)
    else:
        near = np.where(in_heart_rows, np.minimum(border, heart_last + 1), border)
    valid = known & (~in_heart_rows | heart_has)
    columns = np.arange(field.shape[1])[None, :]
    if side == "right":
        fill = (columns > near[:, None]) & (columns <= target[:, None])
    else:
        fill = (columns >= target[:, None]) & (columns < near[:, None])
    extended = field.copy()
    extended[start : floor + 1] |= fill & valid[:, None]
    return extended


def _complete_short_base(lungs: dict[str, np.ndarray], axis: float) -> dict[str, np.ndarray]:
    """A lung whose base ends far above the other's (a basal opacity or effusion hides it) gets the other lung's
    lower part, mirrored about the spine and raised by the largest plausible difference between the hemidiaphragms;
    within its own lateral wall, below its hilum."""
    if not all(lung.any() for lung in lungs.values()):
        return lungs
    extents = {side: _extent(lung) for side, lung in lungs.items()}
    height = max(bottom - top for top, bottom in extents.values())
    short = min(lungs, key=lambda side: extents[side][1])
    other = "left" if short == "right" else "right"
    gap = extents[other][1] - extents[short][1]
    raise_by = int(round(_HEMIDIAPHRAGM_DIFFERENCE * height))
    if gap <= raise_by:
        return lungs
    mirrored = mirrored_columns(lungs[other], 2 * axis)
    mirrored = np.roll(mirrored, -raise_by, axis=0)
    mirrored[-raise_by:] = False
    top, bottom = extents[short]
    cols = np.flatnonzero(lungs[short].any(axis=0))
    keep = np.zeros_like(mirrored)
    keep[top + int(_HILUM_LEVEL * (bottom - top)) :, cols[0] : cols[-1] + 1] = True
    completed = dict(lungs)
    completed[short] = lungs[short] | (mirrored & keep)
    return completed


def _lower_border(lung: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns of a lung and its lowest row in each."""
    columns = np.flatnonzero(lung.any(axis=0))
    return columns, lowest_rows(lung)[columns]


def _has_meniscus(lung: np.ndarray, side: str) -> bool:
    """Whether the lung's lower border is highest at the chest wall (fluid filling the costophrenic angle and
    rising along the wall) rather than lowest there, as a diaphragm's dome and its angle are."""
    columns, lowest = _lower_border(lung)
    if columns.size < 10:
        return False
    order = lowest if side == "left" else lowest[::-1]  # from medial to lateral
    n = order.size
    lateral = np.median(order[int(0.85 * n) :])
    middle = np.median(order[int(0.5 * n) : int(0.7 * n)])
    top, bottom = _extent(lung)
    return bool(lateral < middle - _MENISCUS_RISE * (bottom - top))


def _extend_under_fluid(lung: np.ndarray, side: str, thorax_width: int, aerated: np.ndarray) -> np.ndarray:
    """A lung whose base shows a meniscus reaches down behind the fluid to the height lungs usually have for the
    thorax's width, between its lateral wall and its medial border carried straight down."""
    if not lung.any() or not _has_meniscus(aerated, side):
        return lung
    top, bottom = _extent(lung)
    expected = min(lung.shape[0] - 1, top + int(round(_LUNG_HEIGHT_TO_WIDTH * thorax_width)))
    if expected <= bottom:
        return lung
    lower = lung[(top + bottom) // 2 : bottom + 1]
    cols = np.flatnonzero(lower.any(axis=0))
    bottom_cols = np.flatnonzero(lung[bottom])
    lateral, medial = (cols[0], bottom_cols[-1]) if side == "right" else (cols[-1], bottom_cols[0])
    # The base: lowest at the costophrenic angle, rising medially onto the dome.
    rise = _DOME_RISE * (expected - top)
    columns = np.arange(min(lateral, medial), max(lateral, medial) + 1)
    share = np.abs(columns - lateral) / max(1, abs(medial - lateral))
    base = np.round(expected - rise * share).astype(int)
    rows = np.arange(lung.shape[0])[:, None]
    extended = lung.copy()
    extended[:, columns] |= (rows >= bottom) & (rows <= base[None, :])
    return extended


def _cardiophrenic_row(lung: np.ndarray, side: str, top: int) -> int:
    """Row of the cardiophrenic angle: the lowest lung pixel between the lung's medial border at the heart's
    top and the lung's middle column (the lung's lower border next to the heart)."""
    cols = np.flatnonzero(lung.any(axis=0))
    middle = (cols[0] + cols[-1]) // 2
    at_top = np.flatnonzero(lung[top]) if lung[top].any() else cols
    adjacent = lung[:, middle : at_top[-1] + 1] if side == "right" else lung[:, at_top[0] : middle + 1]
    rows = np.flatnonzero(adjacent.any(axis=1))
    return int(rows[-1]) if rows.size else top


def _heart_rows(aerated: dict[str, np.ndarray], components: dict[str, np.ndarray], fields: dict[str, np.ndarray]) -> tuple[int, int]:
    """First and last row of the heart: its visible borders run from the hilum level to the lower cardiophrenic
    angle (at least the diaphragm's dome level); its outline continues past both ends, up behind the great vessels
    and down below the angles."""
    (right_top, right_bottom), (left_top, left_bottom) = _extent(aerated["right"]), _extent(aerated["left"])
    top = int(round(np.mean([t + _HILUM_LEVEL * (b - t) for t, b in ((right_top, right_bottom), (left_top, left_bottom))])))
    lungs_top, lungs_bottom = min(right_top, left_top), max(_extent(field)[1] for field in fields.values())
    bottom = max(*(_cardiophrenic_row(components[side], side, top) for side in ("right", "left")),
                 int(round(lungs_top + _HEART_BOTTOM_LEVEL * (lungs_bottom - lungs_top))))
    span = bottom - top
    height = aerated["right"].shape[0]
    return max(0, top - int(round(_HEART_ABOVE_HILUM * span))), min(height - 1, bottom + int(round(_HEART_BELOW_ANGLES * span)))


def _heart_outline(right: np.ndarray, left: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """The cardiac silhouette: rows `top`..`bottom` between the lungs' medial borders (carried straight down below a
    lung's cardiophrenic angle, where a basal opacity or the dome would pull them outward), with its corners
    rounded off by the ellipse inscribed in its bounding box (the heart's outline is round)."""
    heart = np.zeros(right.shape, bool)
    # Below the right cardiophrenic angle the right lung's medial border is the dome's (or a basal opacity's); the
    # left lung's medial border is the heart's down to the apex, which a large heart hides.
    right_has, _, right_last = row_borders(right[top : bottom + 1])
    right_has &= np.arange(top, bottom + 1) <= _medial_base_row(right, "right")
    left_has, left_first, _ = row_borders(left[top : bottom + 1])
    (right_x, right_known), (left_x, left_known) = _carried_down(right_has, right_last), _carried_down(left_has, left_first)
    # The right border (the right atrium) bulges furthest out about halfway down and curves back in below; a lung
    # border further out lower down is the cardiophrenic recess narrowing onto the dome, not the heart.
    middle = slice(int(_RIGHT_BULGE_ROWS[0] * right_x.size), int(_RIGHT_BULGE_ROWS[1] * right_x.size) + 1)
    if right_known[middle].any():
        lower = np.arange(right_x.size) >= middle.stop
        right_x = np.where(lower, np.maximum(right_x, right_x[middle][right_known[middle]].min()), right_x)
    columns = np.arange(right.shape[1])[None, :]
    heart[top : bottom + 1] = ((columns > right_x[:, None]) & (columns < left_x[:, None])
                               & (right_known & left_known)[:, None])
    if not heart.any():
        return heart
    rows, cols = np.flatnonzero(heart.any(axis=1)), np.flatnonzero(heart.any(axis=0))
    centre = ((cols[0] + cols[-1]) / 2, (rows[0] + rows[-1]) / 2)
    axes = (_HEART_ROUNDING * (cols[-1] - cols[0] + 1) / 2, _HEART_ROUNDING * (rows[-1] - rows[0] + 1) / 2)
    rounded = np.zeros(right.shape, np.uint8)
    cv2.ellipse(rounded, (centre, (2 * axes[0], 2 * axes[1]), 0.0), 1, -1)
    return heart & rounded.astype(bool)


def _cap_right_border(heart: np.ndarray, axis: int) -> np.ndarray:
    """The heart reaches less far right of the spine than left of it (about a third of its width lies right of
    it); where the right lung's lower medial border is not aerated enough to be found, the gap would run out
    toward the chest wall."""
    cols = np.flatnonzero(heart.any(axis=0))
    if cols.size == 0 or cols[-1] <= axis:
        return heart
    capped = heart.copy()
    capped[:, : max(0, axis - int(round(_RIGHT_HEART_SHARE * (cols[-1] - axis))))] = False
    return capped


def _carried_down(has: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the value of the last row at or above it that has one (carried straight down), and whether any has."""
    source = np.maximum.accumulate(np.where(has, np.arange(has.size), -1))
    return values[np.maximum(source, 0)], source >= 0


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


def _working_image(image: np.ndarray, work_size: int, clahe_clip: float) -> np.ndarray:
    """The image at the working size, normalised, equalised and smoothed."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    height, width = image.shape
    scale = work_size / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    values = image if image.dtype == np.uint8 else np.nan_to_num(image.astype(np.float32))
    small = to_uint8(cv2.resize(values, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR))
    equalised = cv2.createCLAHE(clipLimit=clahe_clip, tileGridSize=(8, 8)).apply(small)
    return cv2.GaussianBlur(equalised, (0, 0), _BLUR_SIGMA * max(small.shape))


def _dilated(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def segment_lungs_and_heart(image: np.ndarray, work_size: int = 256, clahe_clip: float = 2.0) -> dict[str, np.ndarray]:
    """Both lung fields, heart, mediastinum, diaphragm and retrocardiac lung at the working size.

    Keys: 'right lung', 'left lung', 'heart', 'mediastinum', 'diaphragm', 'retrocardiac lung' (bool masks at
    the working size, whose long side is `work_size`).
    """
    smoothed = _working_image(image, work_size, clahe_clip)
    shape, unit = smoothed.shape, max(smoothed.shape)
    midline = find_midline(smoothed)
    candidates = dark_field(smoothed)
    band = max(1, int(round(_MIDLINE_BAND * unit)))
    candidates[:, max(midline - band, 0) : midline + band + 1] = False
    components = {side: _regrow_base(component, candidates)
                  for side, component in _largest_lung_components(candidates, disk(_CORE_OPENING * unit), midline).items()}
    aerated = {side: _convex_fill(component) for side, component in components.items()}
    lungs = {side: _field_above_dome(aerated[side], components[side], side) for side in aerated}

    axis = float(midline)
    heart, mediastinum, behind_heart = (np.zeros(shape, bool) for _ in range(3))
    if aerated["right"].any() and aerated["left"].any():
        axis = _spine_axis(midline, aerated["right"], aerated["left"])
        lungs = _complete_short_base(lungs, axis)
        thorax_width = int(np.flatnonzero(lungs["left"].any(axis=0))[-1] - np.flatnonzero(lungs["right"].any(axis=0))[0])
        lungs = {side: _extend_under_fluid(lung, side, thorax_width, components[side]) for side, lung in lungs.items()}

        heart_top, heart_bottom = _heart_rows(aerated, components, lungs)
        # The heart's borders are the aerated lungs' edges, restored by less than the lung fields' (the heart's
        # edge is sharp, the lungs' lateral edges fade).
        edges = {side: _dilated(components[side], disk(_HEART_EDGE_DILATION * unit)) for side in components}
        heart = _cap_right_border(_heart_outline(edges["right"], edges["left"], heart_top, heart_bottom), int(round(axis)))
        apices = min(_extent(aerated[side])[0] for side in aerated)
        mediastinum = gap_between(aerated["right"], aerated["left"], apices, heart_bottom) | heart

        # Behind the heart the right lower lobe reaches the diaphragm at the right cardiophrenic angle, the left
        # one the diaphragm under the heart, between that level and the heart's lowest point.
        floors = {"right": _medial_base_row(lungs["right"], "right")}
        floors["left"] = max(floors["right"], (floors["right"] + heart_bottom) // 2)
        for side, sign in (("right", -1.0), ("left", 1.0)):
            cols = np.flatnonzero(aerated[side].any(axis=0))
            paraspinal = axis + sign * _PARASPINAL * abs((cols[0] if side == "right" else cols[-1]) - axis)
            extended = _extend_behind_heart(lungs[side], side, paraspinal, floors[side], heart)
            behind_heart |= extended & ~lungs[side]
            lungs[side] = extended

    dilation = disk(_EDGE_DILATION * unit)
    lungs = {side: _dilated(lung, dilation) for side, lung in lungs.items()}
    split = int(round(axis))
    lungs["right"][:, split:] = False
    lungs["left"][:, :split] = False
    both = lungs["right"] | lungs["left"]
    retrocardiac = both & _dilated(behind_heart, dilation) & ~_dilated(aerated["right"] | aerated["left"], dilation)
    diaphragm = lower_border_band(both, max(1, int(round(_DIAPHRAGM_THICKNESS * shape[0])))) & ~both
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

    version = "2"

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
