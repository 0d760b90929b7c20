"""Lung zones derived from lung masks by one geometric rule, shared by the backends that lack zones.

The rule: each lung is split into four horizontal bands by its own vertical extent, from its apex
(top row) to its lowest row (the costophrenic angle or the diaphragm dome, whichever is lower), at
the fractions `ZONE_BOUNDS` of that height:

    apical zone  [0.00, 0.15)   the apex above the clavicle
    upper zone   [0.15, 0.40)   down to about the top of the hilum (2nd anterior rib)
    mid zone     [0.40, 0.70)   the hilar level (to the 4th anterior rib)
    lung base    [0.70, 1.00]   the lower lung, including the costophrenic angle and the
                                retrocardiac / infrahilar lung

The zones of a lung partition it exactly (every lung pixel is in one zone). Each lung is measured
separately, so a raised hemidiaphragm shifts that side's zones, as a reader's zones would.
All functions are pure and take/return boolean masks of one image size.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import AfterValidator

from schemas.vocab import LUNG_BY_SIDE, ZONES_BY_SIDE, Location
from transforms.masks import lowest_rows

# Boundaries between apical|upper, upper|mid and mid|base, as fractions of a lung's height from its apex.
ZONE_BOUNDS: tuple[float, float, float] = (0.15, 0.40, 0.70)


def check_zone_bounds(bounds: Sequence[float]) -> tuple[float, float, float]:
    if len(bounds) != 3 or not 0.0 < bounds[0] < bounds[1] < bounds[2] < 1.0:
        raise ValueError(f"zone bounds must be three increasing fractions in (0, 1), got {tuple(bounds)}")
    return tuple(bounds)


# A backend option holding zone bounds, validated like the rule itself.
ZoneBoundsOption = Annotated[tuple[float, float, float], AfterValidator(check_zone_bounds)]


def lung_zones(lung: np.ndarray, side: str, bounds: Sequence[float] = ZONE_BOUNDS) -> dict[str, np.ndarray]:
    """The four zone masks of one lung (`side` is the patient's 'right' or 'left'), keyed by Location value."""
    if side not in ZONES_BY_SIDE:
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    check_zone_bounds(bounds)
    lung = np.asarray(lung, dtype=bool)
    zones = {zone.value: np.zeros_like(lung) for zone in ZONES_BY_SIDE[side]}
    rows = np.flatnonzero(lung.any(axis=1))
    if rows.size == 0:
        return zones
    top, bottom = int(rows[0]), int(rows[-1])
    height = bottom - top + 1
    # Row indices where each zone starts; the last zone runs to the bottom row inclusive.
    starts = [top] + [top + int(round(fraction * height)) for fraction in bounds] + [bottom + 1]
    for zone, start, stop in zip(ZONES_BY_SIDE[side], starts[:-1], starts[1:]):
        zones[zone.value][start:stop] = lung[start:stop]
    return zones


def lung_union(right_lung: np.ndarray, left_lung: np.ndarray) -> np.ndarray:
    """The 'lung' region: both lung fields."""
    return np.asarray(right_lung, dtype=bool) | np.asarray(left_lung, dtype=bool)


def lung_regions(right_lung: np.ndarray, left_lung: np.ndarray, bounds: Sequence[float] = ZONE_BOUNDS) -> dict[str, np.ndarray]:
    """Both lungs, their union and the eight zones, keyed by Location value."""
    right_lung = np.asarray(right_lung, dtype=bool)
    left_lung = np.asarray(left_lung, dtype=bool)
    regions = {
        LUNG_BY_SIDE["right"].value: right_lung,
        LUNG_BY_SIDE["left"].value: left_lung,
        Location.LUNG.value: lung_union(right_lung, left_lung),
    }
    regions.update(lung_zones(right_lung, "right", bounds))
    regions.update(lung_zones(left_lung, "left", bounds))
    return regions


def lower_border_band(region: np.ndarray, thickness: int) -> np.ndarray:
    """The band of `thickness` rows directly below a region's lowest pixel in each column.

    Under a lung this is the upper surface of the hemidiaphragm (the costophrenic angle at its
    lateral end), which is what grounding needs for 'diaphragm'.
    """
    region = np.asarray(region, dtype=bool)
    band = np.zeros_like(region)
    if thickness <= 0:
        return band
    height = region.shape[0]
    lowest = lowest_rows(region)
    for column in np.flatnonzero(lowest >= 0):
        row = lowest[column]
        band[row + 1 : min(row + 1 + thickness, height), column] = True
    return band
