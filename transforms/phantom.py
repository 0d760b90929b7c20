"""Procedural chest radiograph phantoms: the pictures of the synthetic corpus and their true masks.

A frontal phantom is drawn from outlines in a *thorax frame*: X runs across the chest from the
patient's right inner rib margin (-1, image left) to the left one (+1, image right); Y runs down
from the lung apices (0) to the lowest point of the costophrenic angles (1). One affine map (scale,
shift, small rotation) takes the frame to pixels, so the picture and every mask come from the same
outlines. The picture is composed as an attenuation map at a reduced working size (soft tissue adds,
lung air subtracts, bone and fluid add), turned into gray levels with a random exposure, enlarged to
the full size, and given noise and devices there; masks are rasterised at the full size.

The lateral phantom uses the same approach with an anterior (-1, image left) to posterior (+1)
frame; it carries no masks. `draw_into_radiograph` draws the same lesions into a real frontal
radiograph whose lung masks are known, in the frame those masks give (bench/eval_insertion.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from anatomy_models.zones import ZONE_BOUNDS
from schemas.vocab import LUNG_BY_SIDE, ZONES_BY_SIDE, LesionType, Location
from transforms.masks import gap_between, lowest_rows, masked_gaussian

# Long side, in pixels, of the canvas the attenuation map is composed on before enlarging (the
# lateral, which no mask is taken from, is composed smaller).
WORK_LONG_SIDE = 768
LATERAL_WORK_LONG_SIDE = 512

# Cardiothoracic ratios (heart width / widest inner thoracic width). An AP projection magnifies
# the heart, so its normal range is higher; an enlarged heart is drawn above both normal ranges.
NORMAL_CTR = {"PA": (0.40, 0.49), "AP": (0.45, 0.52)}
ENLARGED_CTR = (0.57, 0.70)

# Soft lesion coverage at or above this level is inside the lesion's true mask.
MASK_LEVEL = 0.5

# How much of the local lung air each lesion type replaces at full coverage (low, high severity).
LESION_DENSITY = {
    LesionType.EFFUSION: (0.9, 1.0),
    LesionType.CONSOLIDATION: (0.75, 0.92),
    LesionType.PNEUMONIA: (0.55, 0.8),
    LesionType.ATELECTASIS: (0.5, 0.78),
    LesionType.OPACITY: (0.38, 0.6),
    LesionType.EDEMA: (0.35, 0.6),
}

DEVICES = ("ecg_leads", "central_line", "endotracheal_tube", "enteric_tube", "sternotomy_wires", "pacemaker")


@dataclass(frozen=True)
class LesionSpec:
    """One abnormality to draw.

    `targets` are the lesion types whose true mask this drawing is (a report can name one opacity
    twice, e.g. "opacity concerning for pneumonia"); `style` is the type that decides its look;
    `locations` are Location values (empty: the type's usual place); `severity` in [0, 1] sets
    size and density.
    """

    targets: tuple[str, ...]
    style: str
    locations: tuple[str, ...] = ()
    severity: float = 0.5


# ---------------------------------------------------------------------------------------------
# geometry helpers


@dataclass(frozen=True)
class _Frame:
    """Affine map from a body frame (X, Y) to full-resolution pixel coordinates (x, y)."""

    matrix: np.ndarray  # 2x3
    unit_y: float  # full-resolution pixels per Y unit (frame scale, used for sizes)

    def to_pixels(self, points: np.ndarray, scale: float = 1.0) -> np.ndarray:
        xy = np.asarray(points, dtype=np.float64) @ self.matrix[:, :2].T + self.matrix[:, 2]
        return (xy + 0.5) * scale - 0.5

    def grid(self, shape: tuple[int, int], scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Frame coordinates (X, Y) of every pixel centre of a canvas `scale` times the full size."""
        h, w = shape
        inv = np.linalg.inv(self.matrix[:, :2])
        xs = ((np.arange(w, dtype=np.float64) + 0.5) / scale - 0.5 - self.matrix[0, 2])[None, :]
        ys = ((np.arange(h, dtype=np.float64) + 0.5) / scale - 0.5 - self.matrix[1, 2])[:, None]
        big_x = (inv[0, 0] * xs + inv[0, 1] * ys).astype(np.float32)
        big_y = (inv[1, 0] * xs + inv[1, 1] * ys).astype(np.float32)
        return big_x, big_y


def _make_frame(scale_x: float, scale_y: float, origin: tuple[float, float], angle_deg: float,
                centre: tuple[float, float]) -> _Frame:
    """Frame point (X, Y) -> origin + (X*scale_x, Y*scale_y), rotated by angle about `centre`."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    lin = rot @ np.diag([scale_x, scale_y])
    c = np.asarray(centre, dtype=np.float64)
    shift = c + rot @ (np.asarray(origin, dtype=np.float64) - c)
    return _Frame(np.hstack([lin, shift[:, None]]), scale_y)


def _catmull_rom(chain: np.ndarray, samples: int) -> np.ndarray:
    """Open Catmull-Rom curve through the points of `chain` (ends included)."""
    ext = np.vstack([2 * chain[0] - chain[1], chain, 2 * chain[-1] - chain[-2]])
    p0, p1, p2, p3 = (ext[k : len(ext) - 3 + k, None, :] for k in range(4))  # one row per segment
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[None, :, None]
    pts = 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3)
    return np.vstack([pts.reshape(-1, 2), chain[-1:]])


def _outline(points: np.ndarray, corners: Sequence[int] = (), samples: int = 12) -> np.ndarray:
    """Closed smooth curve through `points`, sharp at the `corners` indices."""
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    if not corners:
        ext = np.vstack([points[-1:], points, points[:2]])
        return np.vstack([_catmull_rom(ext[i - 1 : i + 3], samples)[samples : 2 * samples] for i in range(1, n + 1)])
    start = corners[0]
    ring = np.vstack([np.roll(points, -start, axis=0), points[start : start + 1]])
    cuts = sorted((c - start) % n for c in corners) + [n]
    return np.vstack([_catmull_rom(ring[a : b + 1], samples)[:-1] for a, b in zip(cuts[:-1], cuts[1:])])


def _fill(outlines: Sequence[np.ndarray], shape: tuple[int, int], frame: _Frame, scale: float) -> np.ndarray:
    """Boolean mask of the union of closed frame-space outlines on a canvas `scale` times full size."""
    mask = np.zeros(shape, np.uint8)
    pts = [np.round(frame.to_pixels(o, scale) * 16).astype(np.int32) for o in outlines]
    cv2.fillPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=4)
    return mask.view(bool)  # 0/1 bytes are valid booleans: no copy


def _stroke(layer: np.ndarray, curve: np.ndarray, frame: _Frame, scale: float, thickness_units: float,
            value: float = 1.0) -> None:
    """Draw an open frame-space curve of the given thickness (in Y units) onto a layer."""
    _strokes(layer, [curve], frame, scale, thickness_units, value)


def _strokes(layer: np.ndarray, curves: Sequence[np.ndarray], frame: _Frame, scale: float, thickness_units: float,
             value: float = 1.0) -> None:
    """Draw several open curves of one thickness and value in one call (much cheaper than one by one)."""
    px = max(1, int(round(thickness_units * frame.unit_y * scale)))
    flat = np.vstack(curves)
    pts = np.round(frame.to_pixels(flat, scale) * 16).astype(np.int32)
    bounds = np.cumsum([len(c) for c in curves])[:-1]
    cv2.polylines(layer, np.split(pts, bounds), False, float(value), px, lineType=cv2.LINE_AA, shift=4)


def _ellipse(layer: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], angle_deg: float,
             frame: _Frame, scale: float, value: float = 1.0, thickness: int = -1) -> None:
    """Filled (or outlined) ellipse given in frame units (axes in X units, Y units)."""
    cx, cy = frame.to_pixels(np.array([centre]), scale)[0]
    lin = frame.matrix[:, :2] * scale
    ax = (max(1, int(round(axes[0] * np.hypot(*lin[:, 0])))), max(1, int(round(axes[1] * np.hypot(*lin[:, 1])))))
    rot = np.degrees(np.arctan2(lin[1, 0], lin[0, 0]))
    cv2.ellipse(layer, (int(round(cx)), int(round(cy))), ax, angle_deg + rot, 0, 360, float(value), thickness,
                lineType=cv2.LINE_AA)


def _blur(layer: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur; wide ones are done on a reduced copy (same look, a fraction of the cost)."""
    if sigma_px < 0.3:
        return layer
    if sigma_px <= 4.0:
        return cv2.GaussianBlur(layer, (0, 0), sigma_px)
    factor = sigma_px / 2.5
    h, w = layer.shape
    small = cv2.resize(layer, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 2.5)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _soft(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    return _blur(mask.astype(np.float32), sigma_px)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _enlarge(rng: np.random.Generator, gray: np.ndarray, height: int, width: int, sharpen: float) -> np.ndarray:
    """The working-size gray image as the full-size uint8 radiograph: edge-enhanced (as detector
    processing does), enlarged, with fine grain added at full size."""
    detail = gray - cv2.GaussianBlur(gray, (0, 0), 2.0)
    small = np.clip(gray + sharpen * 2.0 * detail, 0.0, 255.0).astype(np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    # fine grain from one small random tile repeated over the image: cheap, and without visible period
    tile = np.round(rng.normal(0.0, rng.uniform(1.5, 3.0), (256, 256))).astype(np.int16)
    reps = (-(-height // 256), -(-width // 256))
    up = np.tile(np.clip(tile, 0, 255).astype(np.uint8), reps)[:height, :width]
    down = np.tile(np.clip(-tile, 0, 255).astype(np.uint8), reps)[:height, :width]
    cv2.add(image, up, dst=image)
    cv2.subtract(image, down, dst=image)
    return image


def _tone(x: np.ndarray, shoulder: float) -> np.ndarray:
    """Film-like tone curve from [0, 1] to gray levels: highlights are compressed, shadows kept."""
    return (np.tanh(shoulder * x) * (255.0 / np.tanh(shoulder))).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """Smooth random field in [0, 1] with about `cells` bumps across the longer side."""
    h, w = shape
    gh = max(2, int(round(cells * h / max(h, w))) + 2)
    gw = max(2, int(round(cells * w / max(h, w))) + 2)
    field = cv2.resize(rng.random((gh, gw), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def _random_point(rng: np.random.Generator, mask: np.ndarray, weight: np.ndarray | None = None) -> tuple[int, int]:
    """A random (row, col) inside `mask`, optionally weighted."""
    idx = np.flatnonzero(mask)
    if weight is None:
        pick = idx[rng.integers(len(idx))]
    else:
        p = weight.ravel()[idx].astype(np.float64)
        p /= p.sum()
        pick = idx[rng.choice(len(idx), p=p)]
    return divmod(int(pick), mask.shape[1])


def _add_blob(field: np.ndarray, row: float, col: float, sigma_r: float, sigma_c: float, amp: float = 1.0) -> None:
    """Add a Gaussian bump in place, evaluated only within 3 sigma."""
    h, w = field.shape
    r0, r1 = max(0, int(row - 3 * sigma_r)), min(h, int(row + 3 * sigma_r) + 1)
    c0, c1 = max(0, int(col - 3 * sigma_c)), min(w, int(col + 3 * sigma_c) + 1)
    if r0 >= r1 or c0 >= c1:
        return
    rr = ((np.arange(r0, r1, dtype=np.float32) - row) / sigma_r)[:, None] ** 2
    cc = ((np.arange(c0, c1, dtype=np.float32) - col) / sigma_c)[None, :] ** 2
    field[r0:r1, c0:c1] += amp * np.exp(-0.5 * (rr + cc))


# ---------------------------------------------------------------------------------------------
# anatomy masks


def zone_masks(lung_masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The 8 CXAS lung zones from the two lung masks ({'right': m, 'left': m}).

    The project's zone rule (anatomy_models.zones): each lung's own vertical extent, top row to
    bottom row, cut at the fractions ZONE_BOUNDS into apical / upper / mid zone / base. Same result
    as anatomy_models.zones.lung_zones, computed without scanning the full mask.
    """
    zones: dict[str, np.ndarray] = {}
    for side, lung in lung_masks.items():
        _, top, _, extent = cv2.boundingRect(lung.view(np.uint8))  # rows of the lung: top, top + extent
        names = ZONES_BY_SIDE[side]
        if extent == 0:
            zones.update({str(name): np.zeros(lung.shape, bool) for name in names})
            continue
        cuts = [top] + [top + int(round(f * extent)) for f in ZONE_BOUNDS] + [top + extent]
        for name, a, b in zip(names, cuts[:-1], cuts[1:]):
            zone = np.zeros(lung.shape, bool)  # calloc'd: only the copied band is touched
            zone[a:b] = lung[a:b]
            zones[str(name)] = zone
    return zones


def _region_masks(lungs: dict[str, np.ndarray], heart: np.ndarray) -> dict[str, np.ndarray]:
    """Every CXAS location as a mask, from the two lungs and the heart."""
    regions = zone_masks(lungs)
    for side, lung in lungs.items():
        regions[str(LUNG_BY_SIDE[side])] = lung
    regions[str(Location.LUNG)] = lungs["right"] | lungs["left"]
    regions[str(Location.HEART)] = heart
    return regions


def _sides_of(locations: Sequence[str]) -> set[str]:
    sides = set()
    for loc in locations:
        if loc.startswith("right"):
            sides.add("right")
        elif loc.startswith("left"):
            sides.add("left")
        elif loc == Location.LUNG:
            sides.update(("right", "left"))
    return sides


# ---------------------------------------------------------------------------------------------
# frontal geometry

# Right lung control points as (u, Y), u = distance from the midline in X units; clockwise from
# the apex down the lateral wall, along the diaphragm, up the mediastinal border.
_RIGHT_LUNG = np.array(
    [
        (0.50, 0.00), (0.64, 0.015), (0.76, 0.07), (0.86, 0.19), (0.93, 0.38), (0.965, 0.62), (0.975, 0.85),
        (0.955, 1.00),  # costophrenic angle
        (0.80, 0.90), (0.62, 0.81), (0.44, 0.775), (0.26, 0.80),
        (0.12, 0.86),  # cardiophrenic end of the dome
        (0.10, 0.70), (0.11, 0.50), (0.15, 0.30), (0.20, 0.13), (0.27, 0.05), (0.37, 0.01),
    ]
)
_LEFT_LUNG = np.array(
    [
        (0.50, 0.00), (0.64, 0.015), (0.76, 0.07), (0.86, 0.19), (0.935, 0.38), (0.97, 0.62), (0.975, 0.86),
        (0.955, 1.00),
        (0.80, 0.92), (0.62, 0.85), (0.45, 0.83), (0.28, 0.85),
        (0.12, 0.90),
        (0.10, 0.72), (0.12, 0.50), (0.18, 0.30), (0.21, 0.13), (0.27, 0.05), (0.37, 0.01),
    ]
)
_LUNG_CORNERS = (7, 12)
_DOME_POINTS = (8, 9, 10, 11)
_DOME_WEIGHTS = np.array([0.55, 0.9, 1.0, 0.9])
_LATERAL_POINTS = (1, 2, 3, 4, 5, 6, 7, 8)


def _lung_outline(rng: np.random.Generator, side: str, dome_shift: float, width_scale: float) -> np.ndarray:
    pts = (_RIGHT_LUNG if side == "right" else _LEFT_LUNG).copy()
    pts += rng.normal(0.0, 0.008, pts.shape)
    pts[list(_DOME_POINTS), 1] += dome_shift * _DOME_WEIGHTS
    pts[list(_LATERAL_POINTS), 0] *= width_scale
    pts[0] = (pts[0, 0], 0.0)
    pts[7] = (pts[7, 0], 1.0 + rng.normal(0.0, 0.01))
    sign = -1.0 if side == "right" else 1.0
    outline = _outline(pts, _LUNG_CORNERS)
    return np.column_stack([sign * outline[:, 0], outline[:, 1]])


def _heart_outline(rng: np.random.Generator, width: float, top: float, bottom: float, right_share: float,
                   enlarged: bool) -> np.ndarray:
    """Heart silhouette of the given maximal width (X units), right border at -right_share*width."""
    r, l_ = -right_share * width, (1.0 - right_share) * width
    h = bottom - top
    apex_drop = 0.06 if enlarged else 0.12  # an enlarged heart is rounder, its apex lower and more lateral
    # the top stays as narrow as the mediastinum it hangs from; the borders bulge with the heart's size
    pts = np.array(
        [
            (-0.16, top + 0.01), (r * 0.9, top + 0.2 * h), (r, top + 0.55 * h), (r * 0.9, top + 0.85 * h),
            (r * 0.55, bottom), (l_ * 0.30, bottom + 0.02), (l_ * 0.75, bottom - 0.01),
            (l_ * 0.97, bottom - apex_drop * h), (l_, top + 0.55 * h), (l_ * 0.86, top + 0.28 * h),
            (max(0.3, l_ * 0.6), top + 0.08 * h), (0.2, top - 0.03), (0.02, top - 0.05),
        ]
    )
    pts += rng.normal(0.0, 0.006, pts.shape)
    outline = _outline(pts)
    # exact width: stretch about the midline, each side by its own factor
    left, right = outline[:, 0] > 0, outline[:, 0] < 0
    outline[left, 0] *= l_ / outline[left, 0].max()
    outline[right, 0] *= r / outline[right, 0].min()
    return outline


@dataclass
class _FrontalGeometry:
    frame: _Frame
    lungs: dict[str, np.ndarray]
    heart: np.ndarray
    mediastinum: np.ndarray
    body: np.ndarray
    dome_top: dict[str, float]
    lung_width: dict[str, float]
    heart_top: float
    view: str


def _frontal_geometry(rng: np.random.Generator, height: int, width: int, view: str, ctr: float) -> _FrontalGeometry:
    ap = view == "AP"
    px_per_cm = min(width / rng.uniform(33.0, 39.0), height / rng.uniform(37.0, 44.0))
    half_width = px_per_cm * rng.uniform(12.5, 14.5)
    lung_height = px_per_cm * (rng.uniform(18.5, 22.0) if ap else rng.uniform(20.5, 24.5))
    top = height * rng.uniform(0.09, 0.19)
    top = float(np.clip(top, 0.05 * height, 0.9 * height - lung_height))
    cx = width / 2 + rng.normal(0.0, 0.015) * width
    angle = float(np.clip(rng.normal(0.0, 2.0 if ap else 1.0), -4.0, 4.0)) if rng.random() < 0.6 else 0.0
    frame = _make_frame(half_width, lung_height, (cx, top), angle, (width / 2, height / 2))

    dome_right = rng.normal(0.0, 0.025) - (0.04 if ap else 0.0)
    dome_left = dome_right + rng.uniform(0.0, 0.04)
    width_scale = rng.uniform(0.95, 1.03)
    lungs = {
        "right": _lung_outline(rng, "right", dome_right, width_scale),
        "left": _lung_outline(rng, "left", dome_left, width_scale * rng.uniform(0.98, 1.02)),
    }
    lung_width = {side: float(np.abs(o[:, 0]).max()) for side, o in lungs.items()}
    thorax_width = lung_width["right"] + lung_width["left"]

    heart_top = rng.uniform(0.40, 0.47)
    heart_bottom = 0.85 + dome_left * 0.9 + rng.uniform(0.0, 0.03)
    enlarged = ctr > ENLARGED_CTR[0]
    heart = _heart_outline(rng, ctr * thorax_width, heart_top, heart_bottom, rng.uniform(0.30, 0.36), enlarged)

    med = 1.15 if ap else 1.0
    knob_y = heart_top - rng.uniform(0.09, 0.13)
    mediastinum = _outline(
        np.array(
            [
                (-0.15 * med, -0.6), (-0.16 * med, 0.05), (-0.19 * med, 0.28), (-0.21 * med, heart_top + 0.08),
                (0.05, heart_top + 0.15), (0.20 * med, heart_top + 0.06), (0.19 * med, knob_y + 0.07),
                (0.27 * med, knob_y + 0.02), (0.25 * med, knob_y - 0.05), (0.15 * med, knob_y - 0.10),
                (0.14 * med, 0.05), (0.13 * med, -0.6),
            ]
        ),
        corners=(0, 11),
    )
    shoulder = rng.uniform(1.25, 1.45)
    wall = rng.uniform(1.08, 1.16)
    body_right = np.array(
        [
            (0.30, -1.2), (0.32, -0.45), (0.50, -0.33), (0.85, -0.27), (shoulder - 0.1, -0.21), (shoulder + 0.1, -0.1),
            (shoulder + 0.2, 0.1), (shoulder + 0.15, 0.3), (wall + 0.12, 0.45), (wall, 0.7), (wall + 0.02, 1.20),
            (wall + 0.06, 2.0),
        ]
    )
    body = np.vstack([body_right * [-1.0, 1.0], body_right[::-1]])
    body = _outline(body, corners=(0, len(body_right) - 1, len(body_right), len(body) - 1))
    dome_top = {"right": 0.775 + dome_right, "left": 0.83 + dome_left}
    return _FrontalGeometry(frame, lungs, heart, mediastinum, body, dome_top, lung_width, heart_top, view)


# ---------------------------------------------------------------------------------------------
# frontal layers


def _bone_layer(rng: np.random.Generator, g: _FrontalGeometry, shape: tuple[int, int], scale: float,
                big_x: np.ndarray, big_y: np.ndarray) -> np.ndarray:
    """Ribs, clavicles, spine, scapulae and humeral heads, as added attenuation (about 0..1)."""
    frame, ap = g.frame, g.view == "AP"
    unit = frame.unit_y * scale
    ribs = np.zeros(shape, np.float32)
    marrow = np.zeros(shape, np.float32)
    front = np.zeros(shape, np.float32)
    spacing = rng.uniform(0.095, 0.11)
    start = rng.uniform(-0.13, -0.08)
    # posterior rib as (share of the lateral reach, drop below its vertebral end)
    rib_shape = np.array(
        [(0.10, 0.0), (0.28, -0.035), (0.50, -0.04), (0.70, -0.01), (0.85, 0.05), (0.96, 0.14), (1.02, 0.26)]
    )
    thick = rng.uniform(0.04, 0.05)
    posterior, anterior = [], []
    for side, sign in (("right", -1.0), ("left", 1.0)):
        for k in range(11):
            y0 = start + k * spacing + rng.normal(0.0, 0.005)
            reach = (g.lung_width[side] + 0.06) * (0.72 + 0.07 * k if k < 4 else 1.0)  # upper ribs are short arcs
            posterior.append(_catmull_rom(rib_shape * [reach, 1.0 + 0.3 * (k < 3)] + [0.0, y0], 8) * [sign, 1.0])
            if k < 8:  # anterior ribs run down and medially from the lateral wall
                arc = np.array(
                    [(reach, y0 + 0.26), (0.85 * reach, y0 + 0.33), (0.62 * reach, y0 + 0.42), (0.42, y0 + 0.49)]
                )
                anterior.append(_catmull_rom(arc, 8) * [sign, 1.0])
    _strokes(ribs, posterior, frame, scale, thick)
    _strokes(marrow, posterior, frame, scale, thick * 0.5)
    _strokes(front, anterior, frame, scale, thick * 1.2)
    # a rib is brighter at its cortical edges than in its middle
    bones = 0.4 * ribs - 0.15 * marrow + 0.12 * front

    clav = np.zeros(shape, np.float32)
    lift = 0.07 if ap else 0.0
    for sign in (-1.0, 1.0):
        pts = np.array([(0.09, 0.04), (0.30, 0.025), (0.55, -0.025), (0.80, -0.045), (1.02, -0.10), (1.18, -0.11)])
        pts[:, 1] += rng.normal(0.0, 0.01) - lift
        if ap:
            pts[:, 1] = pts[0, 1] + (pts[:, 1] - pts[0, 1]) * 0.4  # AP: clavicles flatter and higher
        _stroke(clav, _catmull_rom(pts, 10) * [sign, 1.0], frame, scale, rng.uniform(0.04, 0.048))
        # scapula: lateral to the lungs on PA, over the upper lateral lungs on AP
        inset = 0.16 if ap else 0.0
        blade = np.array([(1.00 - inset, -0.08), (1.22, -0.10), (1.16, 0.45), (1.02 - inset, 0.30)]) * [sign, 1.0]
        bones += 0.12 * _fill([_outline(blade)], shape, frame, scale)
        head = np.zeros(shape, np.float32)
        aspect = np.hypot(*frame.matrix[:, 0]) / frame.unit_y
        _ellipse(head, (sign * 1.34, -0.15), (0.16, 0.16 * aspect), 0, frame, scale)
        bones += 0.45 * head
    bones += 0.55 * clav

    # spine: vertebral bodies with darker disc spaces, pedicles as faint rings
    sway = rng.normal(0.0, 0.02)
    period = rng.uniform(0.085, 0.1)
    offset = rng.uniform(0, period)
    # X is affine in the pixel position, so the columns near the midline in the first and last rows
    # bound the spine's columns in every row
    near = np.flatnonzero((np.abs(big_x[0]) < 0.2) | (np.abs(big_x[-1]) < 0.2))
    if near.size:
        c0, c1 = near[0], near[-1] + 1
        bx, by = big_x[:, c0:c1], big_y[:, c0:c1]
        column = _smoothstep((0.12 - np.abs(bx - sway * np.sin(np.pi * by))) / 0.03)
        phase = np.mod((by - offset) / period, 1.0)
        disc = 1.0 - 0.45 * np.exp(-((np.minimum(phase, 1.0 - phase) / 0.09) ** 2))
        bones[:, c0:c1] += 0.22 * column * disc
    pedicles = np.zeros(shape, np.float32)
    for k in range(-6, 14):
        y = k * period + rng.normal(0.0, 0.004)
        for sign in (-1.0, 1.0):
            centre = (sign * 0.085 + sway * np.sin(np.pi * y), y + period * 0.35)
            _ellipse(pedicles, centre, (0.025, 0.02), 0, frame, scale, 1.0, max(1, int(0.006 * unit)))
    return _blur(bones + 0.05 * pedicles, 0.004 * unit)


def _vessel_layer(rng: np.random.Generator, g: _FrontalGeometry, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Branching, tapering pulmonary vessels from the hila, and the hilar shadows."""
    frame = g.frame
    layer = np.zeros(shape, np.float32)
    aspect = np.hypot(*frame.matrix[:, 0]) / frame.unit_y  # an X unit is this many Y units long
    generations: dict[int, list[np.ndarray]] = {}
    for side, sign in (("right", -1.0), ("left", 1.0)):
        hilum = np.array([sign * 0.24, 0.44 + (0.03 if side == "left" else 0.0)])
        _ellipse(layer, tuple(hilum), (0.06, 0.08), 0, frame, scale, 0.8)
        stack = [(hilum, np.deg2rad(a) + rng.normal(0, 0.12), 0.17, 0) for a in (-80, -50, -20, 10, 40, 70, 100)]
        while stack:
            start, angle, length, level = stack.pop()
            pts = [start]
            for _ in range(3):  # a vessel wanders a little
                angle += rng.normal(0.0, 0.12)
                pts.append(pts[-1] + np.array([sign * np.cos(angle) / aspect, np.sin(angle)]) * length / 3)
            generations.setdefault(level, []).append(np.array(pts))
            if level < 3:
                for turn in (-0.42, 0.38):
                    child = angle + turn + rng.normal(0, 0.15)
                    stack.append((pts[-1], child, length * rng.uniform(0.55, 0.75), level + 1))
    for level, curves in generations.items():
        # each generation is thinner and fainter than its parent
        _strokes(layer, curves, frame, scale, 0.028 * 0.6**level, 0.7**level)
    return _blur(layer, 0.005 * frame.unit_y * scale)


def _lesion_coverage(rng: np.random.Generator, spec: LesionSpec, regions: dict[str, np.ndarray], frame: _Frame,
                     lung_width: dict[str, float], big_x: np.ndarray, big_y: np.ndarray, scale: float) -> np.ndarray:
    """Soft coverage (0..1) of one lesion on the working canvas, confined to its lung region.

    `lung_width`: each lung's lateral extent from the midline, in frame X units."""
    shape = big_x.shape
    unit = frame.unit_y * scale
    s = float(np.clip(spec.severity, 0.0, 1.0))
    style = spec.style
    located = [loc for loc in spec.locations if loc in regions and loc != Location.HEART]
    sides = _sides_of(located)

    if style == LesionType.EFFUSION:
        if not sides:
            sides = {"right", "left"} if rng.random() < 0.4 else {str(rng.choice(["right", "left"]))}
        cov = np.zeros(shape, np.float32)
        for side in sorted(sides):  # a fixed order keeps the random draws (and the output) reproducible
            sign = -1.0 if side == "right" else 1.0
            level = 1.0 - (0.12 + 0.5 * s) + rng.normal(0.0, 0.02)
            u = np.clip(sign * big_x / lung_width[side], 0.0, 1.0)
            # the meniscus: highest against the lateral chest wall, falling toward the hilum
            meniscus = level + (0.12 + 0.12 * s) * (1.0 - u) ** 1.6 - 0.06 * np.exp(-(1.0 - u) / 0.1)
            fluid = _smoothstep((big_y - meniscus) / 0.05) * _soft(regions[str(LUNG_BY_SIDE[side])], 0.004 * unit)
            cov = np.maximum(cov, fluid)
        return cov

    if style == LesionType.EDEMA:
        cov = np.zeros(shape, np.float32)
        reach = 0.25 + 0.2 * s
        for sign in (-1.0, 1.0):
            d2 = ((big_x - sign * 0.25) / 1.3) ** 2 + ((big_y - 0.5) / 1.0) ** 2
            cov = np.maximum(cov, np.exp(-d2 / (2 * reach**2)))
        texture = 0.7 + 0.3 * _smooth_noise(rng, shape, 40)
        cov = _smoothstep((cov * texture - 0.3) / 0.45)
        region = regions[str(Location.LUNG)]
        zones = [loc for loc in located if loc not in (Location.LUNG, Location.RIGHT_LUNG, Location.LEFT_LUNG)]
        if zones:
            region = np.logical_or.reduce([regions[z] for z in zones])
            return cov * _soft(region, 0.06 * unit) * _soft(regions[str(Location.LUNG)], 0.004 * unit)
        return cov * _soft(region, 0.004 * unit)

    if located:
        region = np.logical_or.reduce([regions[loc] for loc in located])
    else:
        region = regions[str(rng.choice([Location.RIGHT_BASE, Location.LEFT_BASE]))]
    lung_of_region = np.logical_or.reduce([regions[str(LUNG_BY_SIDE[side])] for side in (sides or {"right", "left"})])
    # the zone fades out over a ragged edge, so a lesion filling its zone has no ruler-straight border
    region_soft = np.clip(_soft(region, 0.05 * unit) + 0.4 * (_smooth_noise(rng, shape, 16) - 0.5), 0.0, 1.0)
    # lesions sit well inside their zone and mostly off the heart, where they would barely show
    centre_weight = region_soft**2 * (1.0 - 0.8 * _soft(regions[str(Location.HEART)], 0.02 * unit)) + 1e-6
    # a bilateral finding is drawn on each side it names
    parts = [region & regions[str(LUNG_BY_SIDE[side])] for side in ("right", "left")]
    parts = [p for p in parts if p.any()]
    field = np.zeros(shape, np.float32)
    if not parts:
        return field

    if style == LesionType.ATELECTASIS and rng.random() < 0.55:
        # plate-like: thin, nearly horizontal, slightly curved bands
        for part in parts:
            row, col = _random_point(rng, part, centre_weight)
            angle = np.deg2rad(rng.normal(0.0, 10.0))
            length = (0.14 + 0.16 * s) * unit
            thick = (0.01 + 0.012 * s) * unit
            bend = rng.normal(0.0, 0.4) / length
            r0, r1 = max(0, int(row - length)), min(shape[0], int(row + length) + 1)
            c0, c1 = max(0, int(col - length)), min(shape[1], int(col + length) + 1)
            rr = np.arange(r0, r1, dtype=np.float32)[:, None] - row
            cc = np.arange(c0, c1, dtype=np.float32)[None, :] - col
            along = cc * np.cos(angle) + rr * np.sin(angle)
            across = -cc * np.sin(angle) + rr * np.cos(angle) - bend * along**2
            band = np.exp(-0.5 * (across / thick) ** 2) * _smoothstep((1.0 - np.abs(along) / length) / 0.3)
            field[r0:r1, c0:c1] = np.maximum(field[r0:r1, c0:c1], band)
        cov = _smoothstep((field - 0.2) / 0.6)
    elif style == LesionType.ATELECTASIS:
        # basal: streaky opacity along the diaphragm, tapering upward
        lowest = lowest_rows(region)
        rows = np.arange(shape[0], dtype=np.float32)[:, None]
        height_px = (0.06 + 0.08 * s) * unit
        above = (lowest[None, :] - rows) / height_px
        streaks = 0.6 + 0.4 * _smooth_noise(rng, shape, 30)
        cov = _smoothstep(1.2 - above) * streaks * (lowest[None, :] >= 0)
        cov = _smoothstep((cov - 0.2) / 0.6)
    else:
        # clusters of small overlapping puffs: confluent in the middle, ragged at the edges
        radius = unit * (0.08 + 0.08 * s if style == LesionType.OPACITY else 0.06 + 0.08 * s)
        for part in parts:
            for _ in range(1 + int(style != LesionType.CONSOLIDATION and rng.random() < 0.35)):
                row, col = _random_point(rng, part, centre_weight)
                for _ in range(int(rng.integers(10, 18))):
                    dr, dc = rng.normal(0.0, radius / 1.6, 2)
                    sig = radius * rng.uniform(0.22, 0.45)
                    _add_blob(field, row + dr, col + dc, sig, sig * rng.uniform(0.8, 1.3))
        field /= max(float(field.max()), 1e-6)
        ragged = {LesionType.OPACITY: 0.3, LesionType.PNEUMONIA: 0.5}.get(style, 0.35)
        field *= (1.0 - ragged) + ragged * _smooth_noise(rng, shape, 45)
        lo, width = {LesionType.OPACITY: (0.08, 0.45), LesionType.PNEUMONIA: (0.1, 0.35)}.get(style, (0.12, 0.3))
        cov = _smoothstep((field - lo) / width)
    return cov * region_soft * _soft(lung_of_region, 0.004 * unit)


def _air_bronchograms(rng: np.random.Generator, cov: np.ndarray, frame: _Frame, scale: float) -> np.ndarray:
    """Thin dark branching lines inside a dense lesion (air left in the bronchi)."""
    lines = np.zeros(cov.shape, np.float32)
    dense = cov > 0.8
    if dense.sum() < 50:
        return lines
    inv = np.linalg.inv(frame.matrix[:, :2] * scale)
    for _ in range(3):
        row, col = _random_point(rng, dense)
        start = inv @ (np.array([col, row], dtype=np.float64) - frame.matrix[:, 2] * scale)
        angle = rng.uniform(0, 2 * np.pi)
        pts = [start]
        for _ in range(4):
            angle += rng.normal(0, 0.35)
            pts.append(pts[-1] + 0.025 * np.array([np.cos(angle), np.sin(angle)]))
        _stroke(lines, np.array(pts), frame, scale, 0.006)
    return _blur(lines, 0.002 * frame.unit_y * scale) * cov


def _draw_devices(rng: np.random.Generator, image: np.ndarray, g: _FrontalGeometry, devices: Sequence[str]) -> None:
    """Radiopaque devices, drawn bright and sharp on the full-size gray image in place."""
    frame = g.frame
    bright = float(rng.uniform(225, 250))

    def line(points: np.ndarray, thickness_units: float, value: float = bright) -> None:
        _stroke(image, _catmull_rom(points, 10), frame, 1.0, thickness_units, value)

    for device in devices:
        if device == "ecg_leads":
            spots = [(-0.75, -0.05), (0.75, -0.05), (-0.85, 0.95), (0.85, 0.95), (0.55, 0.75)]
            for x, y in spots:
                x, y = x + rng.normal(0, 0.05), y + rng.normal(0, 0.04)
                _ellipse(image, (x, y), (0.035, 0.04), 0, frame, 1.0, bright * 0.9, max(2, int(0.006 * frame.unit_y)))
                _ellipse(image, (x, y), (0.01, 0.012), 0, frame, 1.0, bright)
                tail = np.array(
                    [(x, y), (x + rng.normal(0, 0.2), y - 0.3), (x + rng.normal(0, 0.3), y - 0.8), (x * 1.6, -1.2)]
                )
                line(tail, 0.004, bright * 0.85)
        elif device == "central_line":
            line(np.array([(-0.45, -0.55), (-0.28, -0.25), (-0.16, 0.05), (-0.10, rng.uniform(0.22, 0.36))]), 0.006)
        elif device == "endotracheal_tube":
            tip = rng.uniform(0.12, 0.24)
            for dx in (-0.018, 0.018):
                line(np.array([(dx, -1.0), (dx - 0.01, -0.4), (dx - 0.02, tip)]), 0.005, bright * 0.8)
        elif device == "enteric_tube":
            line(np.array([(0.02, -1.0), (0.0, -0.3), (0.03, 0.4), (0.08, 0.95), (0.35, 1.15), (0.45, 1.25)]), 0.007)
        elif device == "sternotomy_wires":
            for k in range(6):
                y = 0.22 + 0.09 * k + rng.normal(0, 0.01)
                _ellipse(image, (0.02 + rng.normal(0, 0.01), y), (0.03, 0.015), rng.normal(0, 10), frame, 1.0, 255.0,
                         max(2, int(0.007 * frame.unit_y)))
        elif device == "pacemaker":
            _ellipse(image, (0.62, 0.02), (0.09, 0.06), 10, frame, 1.0, 250.0)
            lead = np.array([(0.55, 0.04), (0.25, 0.0), (0.0, 0.2), (-0.12, 0.42), (-0.02, 0.62), (0.15, 0.72)])
            line(lead, 0.006, 250.0)


def draw_frontal(
    rng: np.random.Generator,
    height: int,
    width: int,
    lesions: Sequence[LesionSpec] = (),
    *,
    view: str = "PA",
    devices: Sequence[str] = (),
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A frontal (PA or AP) chest radiograph phantom with the given lesions drawn in.

    Returns the uint8 grayscale image (height x width), the true lesion masks (bool, keyed by
    LesionType value, one per target of the drawn lesions, union over its drawings) and the
    anatomy masks (bool, keyed by Location value: both lungs, 'lung', heart and the 8 zones).
    """
    ap = view == "AP"
    cardiomegaly = [spec for spec in lesions if spec.style == LesionType.CARDIOMEGALY]
    if cardiomegaly:
        lo, hi = ENLARGED_CTR
        ctr = lo + (hi - lo) * float(np.clip(cardiomegaly[0].severity, 0.0, 1.0)) + rng.normal(0.0, 0.01)
    else:
        ctr = rng.uniform(*NORMAL_CTR[view])
    g = _frontal_geometry(rng, height, width, view, ctr)
    frame = g.frame

    scale = WORK_LONG_SIDE / max(height, width)
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    unit = frame.unit_y * scale
    big_x, big_y = frame.grid(shape, scale)

    lungs = {side: _fill([o], shape, frame, scale) for side, o in g.lungs.items()}
    heart = _fill([g.heart], shape, frame, scale)
    regions = _region_masks(lungs, heart)
    lung_any = regions[str(Location.LUNG)]

    # soft tissue: thicker in the middle of the body
    body = _soft(_fill([g.body], shape, frame, scale), 0.012 * unit)
    thickness = 0.55 + 0.45 * np.sqrt(np.clip(1.0 - (big_x / 1.4) ** 2, 0.0, 1.0))
    atten = body * thickness
    if rng.random() < 0.4:  # breast shadows over the lower lungs
        breasts = np.zeros(shape, np.float32)
        for sign in (-1.0, 1.0):
            _ellipse(breasts, (sign * 0.55, 0.78), (0.42, 0.32), 0, frame, scale)
        atten += rng.uniform(0.04, 0.09) * _blur(breasts, 0.08 * unit)

    # lung air: deepest away from the lung edges, thinner at the apices
    lung_soft = _soft(lung_any, 0.005 * unit)
    lung_wide = _soft(lung_any, 0.02 * unit)
    depth = cv2.distanceTransform(lung_any.astype(np.uint8), cv2.DIST_L2, 3) / (0.15 * unit)
    air = rng.uniform(0.64, 0.76) * lung_soft * (0.5 + 0.5 * np.sqrt(np.clip(depth, 0.0, 1.0)))
    air *= 1.0 - 0.3 * _smoothstep((0.22 - big_y) / 0.25)
    air *= 0.9 + 0.1 * _smooth_noise(rng, shape, 12)
    mediastinum = _soft(_fill([g.mediastinum], shape, frame, scale), 0.006 * unit)
    heart_soft = _soft(heart, 0.005 * unit)
    air *= (1.0 - 0.93 * mediastinum) * (1.0 - 0.9 * heart_soft)
    atten += 0.04 * heart_soft

    # trachea and main bronchi
    airway = np.zeros(shape, np.float32)
    carina = np.array([-0.02, g.heart_top - 0.14])
    _stroke(airway, np.array([(-0.01, -1.0), (-0.015, -0.3), carina]), frame, scale, 0.075)
    _stroke(airway, np.vstack([carina, (-0.17, carina[1] + 0.09)]), frame, scale, 0.045)
    _stroke(airway, np.vstack([carina, (0.19, carina[1] + 0.13)]), frame, scale, 0.04)
    atten -= 0.16 * _blur(airway, 0.01 * unit) * body

    if rng.random() < 0.6:  # gas in the stomach under the left dome
        bubble = np.zeros(shape, np.float32)
        _ellipse(bubble, (0.45 + rng.normal(0, 0.05), g.dome_top["left"] + 0.13), (0.14, 0.07), 0, frame, scale)
        atten -= 0.3 * _blur(bubble, 0.015 * unit) * (1.0 - lung_soft)

    vessels = _vessel_layer(rng, g, shape, scale) * lung_soft * (1.0 - 0.7 * heart_soft)
    atten += rng.uniform(0.09, 0.14) * vessels

    # lesions replace part of the local lung air with fluid or tissue
    coverage: list[tuple[LesionSpec, np.ndarray]] = []
    kept_air = np.ones(shape, np.float32)
    for spec in lesions:
        if spec.style == LesionType.CARDIOMEGALY:
            continue
        cov = _lesion_coverage(rng, spec, regions, frame, g.lung_width, big_x, big_y, scale)
        coverage.append((spec, cov))
        lo, hi = LESION_DENSITY[LesionType(spec.style)]
        density = lo + (hi - lo) * float(np.clip(spec.severity, 0.0, 1.0))
        filled = cov * density
        if spec.style in (LesionType.PNEUMONIA, LesionType.OPACITY, LesionType.EDEMA):  # mottled, not uniform
            filled *= 0.7 + 0.3 * _smooth_noise(rng, shape, 50)
        if spec.style == LesionType.CONSOLIDATION and rng.random() < 0.6:
            filled = filled * (1.0 - 0.45 * _air_bronchograms(rng, cov, frame, scale))
        kept_air *= 1.0 - filled
        atten += 0.05 * cov * heart_soft  # keeps a retrocardiac lesion faintly visible
    atten -= air * kept_air

    # bone shows best against aerated lung (the processing flattens the dense middle of the chest)
    bone_show = np.maximum(body, 0.3) * (0.4 + 0.6 * lung_wide) * (1.0 - 0.7 * heart_soft)
    atten += rng.uniform(0.28, 0.36) * _bone_layer(rng, g, shape, scale, big_x, big_y) * bone_show

    # exposure, processing curve and blur
    lo = rng.uniform(0.0, 0.08)
    hi = rng.uniform(1.2, 1.4) + (0.08 if ap else 0.0)
    gamma = rng.uniform(1.0, 1.4)
    gray = _tone(np.clip((atten - lo) / (hi - lo), 0.0, 1.0) ** gamma, rng.uniform(0.8, 1.4))
    gray = _blur(gray, rng.uniform(0.5, 0.9) + (0.5 if ap else 0.0))
    gray += rng.normal(0.0, 1.0) * (_smooth_noise(rng, shape, 60) - 0.5) * 4.0
    # quantum mottle, drawn on the working canvas so that enlarging gives it a film-grain size
    gray += (rng.uniform(1.5, 3.0) + (1.5 if ap else 0.0)) * rng.standard_normal(shape, dtype=np.float32)
    image = _enlarge(rng, gray, height, width, sharpen=rng.uniform(0.3, 0.8) * (0.6 if ap else 1.0))
    _draw_devices(rng, image, g, devices)
    if rng.random() < 0.6:
        _draw_marker(rng, image, ap)

    # masks at full size
    full = (height, width)
    lungs_full = {side: _fill([o], full, frame, 1.0) for side, o in g.lungs.items()}
    heart_full = _fill([g.heart], full, frame, 1.0)
    anatomy = _region_masks(lungs_full, heart_full)

    def full_mask(cov: np.ndarray) -> np.ndarray:
        big = cv2.resize(np.round(cov * 255.0).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
        return cv2.threshold(big, round(MASK_LEVEL * 255) - 1, 1, cv2.THRESH_BINARY)[1]

    # pleural fluid hides what lies in the lung behind it: those parts of other lesions are not shown
    fluid = [full_mask(cov) for spec, cov in coverage if spec.style == LesionType.EFFUSION]
    hidden = np.logical_or.reduce(fluid).view(np.uint8) if fluid else None
    lesion_masks: dict[str, np.ndarray] = {}
    for spec in lesions:
        if spec.style == LesionType.CARDIOMEGALY:
            mask = heart_full.view(np.uint8)
        else:
            mask = full_mask(next(c for s, c in coverage if s is spec))
            sides = _sides_of(spec.locations) or {"right", "left"}
            home = anatomy[str(Location.LUNG)] if len(sides) == 2 else lungs_full[sides.pop()]
            mask = cv2.bitwise_and(mask, home.view(np.uint8))  # clipped to the lung(s) it lives in
            if hidden is not None and spec.style != LesionType.EFFUSION:
                mask = cv2.bitwise_and(mask, 1 - hidden)
        for target in spec.targets:
            old = lesion_masks.get(target)
            lesion_masks[target] = mask.copy() if old is None else cv2.bitwise_or(old, mask)
    return image, {t: m.view(bool) for t, m in lesion_masks.items()}, anatomy


_LATERAL_WALL_X = 0.97  # frame X of a lung's lateral edge (the outlines' lateral wall points)


def _frame_of_lungs(right: np.ndarray, left: np.ndarray) -> tuple[_Frame, dict[str, float]]:
    """The thorax frame of a radiograph from its two lung masks (apices at Y 0, lowest lung row at Y 1, lateral
    edges at X -+0.97), and each lung's lateral extent in X."""
    rows = np.flatnonzero((right | left).any(axis=1))
    outer_right, outer_left = np.flatnonzero(right.any(axis=0))[0], np.flatnonzero(left.any(axis=0))[-1]
    centre = (outer_right + outer_left) / 2
    half_width = (outer_left - outer_right) / 2 / _LATERAL_WALL_X
    frame = _make_frame(half_width, max(float(rows[-1] - rows[0]), 1.0), (centre, float(rows[0])), 0.0, (0.0, 0.0))
    return frame, {"right": (centre - outer_right) / half_width, "left": (outer_left - centre) / half_width}


def _soft_tissue_level(image: np.ndarray, right: np.ndarray, left: np.ndarray) -> float:
    """Median intensity between the lungs over their lower half (heart and mediastinum): lung without its air."""
    rows = np.flatnonzero((right | left).any(axis=1))
    values = image[gap_between(right, left, int((rows[0] + rows[-1]) / 2), int(rows[-1]))]
    return float(np.median(values)) if values.size else float(np.quantile(image[right | left], 0.99))


def draw_into_radiograph(rng: np.random.Generator, image: np.ndarray, right: np.ndarray, left: np.ndarray,
                         spec: LesionSpec) -> tuple[np.ndarray, np.ndarray]:
    """One of the phantom's lesions (not cardiomegaly) drawn into a real frontal radiograph whose lung masks are known
    (`right`: the patient's right lung, image left), with the image's own anatomy, texture and exposure around it.

    The lesion's shape is the phantom's, in the thorax frame the lung masks give. It replaces its share of the local
    lung air as in the phantom: each pixel moves from the lung's local level (a broad mean over the lungs, so ribs and
    vessels stay drawn over it) toward the soft-tissue level between the lungs by coverage x density. Returns the
    uint8 image with the lesion and its true mask (coverage at least `MASK_LEVEL`, clipped to the lung it lives in,
    or both lungs for a bilateral finding). The true lung masks carry no heart, so no lesion is drawn behind it."""
    if spec.style == LesionType.CARDIOMEGALY:
        raise ValueError("cardiomegaly is the heart's size, not a lesion drawn into the lungs")
    frame, lung_width = _frame_of_lungs(right, left)
    big_x, big_y = frame.grid(image.shape, 1.0)
    regions = _region_masks({"right": right, "left": left}, np.zeros(image.shape, bool))
    cov = _lesion_coverage(rng, spec, regions, frame, lung_width, big_x, big_y, 1.0)
    lo, hi = LESION_DENSITY[LesionType(spec.style)]
    filled = cov * (lo + (hi - lo) * float(np.clip(spec.severity, 0.0, 1.0)))
    if spec.style in (LesionType.PNEUMONIA, LesionType.OPACITY, LesionType.EDEMA):  # mottled, not uniform
        filled *= 0.7 + 0.3 * _smooth_noise(rng, image.shape, 50)
    if spec.style == LesionType.CONSOLIDATION and rng.random() < 0.6:
        filled = filled * (1.0 - 0.45 * _air_bronchograms(rng, cov, frame, 1.0))

    pixels = image.astype(np.float32)
    local = masked_gaussian(pixels, right | left, 0.03 * max(image.shape))
    gain = np.maximum(_soft_tissue_level(image, right, left) - local, 0.0)
    drawn = np.clip(np.rint(pixels + filled * gain), 0, 255).astype(np.uint8)

    sides = _sides_of(spec.locations) or {"right", "left"}
    home = right | left if len(sides) == 2 else (right if sides == {"right"} else left)
    return drawn, (cov >= MASK_LEVEL) & home


def _draw_marker(rng: np.random.Generator, image: np.ndarray, ap: bool) -> None:
    """A burnt-in side marker (and 'PORTABLE' on some AP films) near a top corner."""
    h, w = image.shape
    size = min(h, w) / 700.0
    text = "L" if rng.random() < 0.8 else "R"
    x = int(w * (rng.uniform(0.82, 0.92) if text == "L" else rng.uniform(0.04, 0.12)))
    y = int(h * rng.uniform(0.06, 0.12))
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, size * 2.2, 240.0, max(2, int(size * 4)), cv2.LINE_AA)
    if ap and rng.random() < 0.5:
        cv2.putText(image, "PORTABLE", (int(w * 0.06), int(h * 0.05)), cv2.FONT_HERSHEY_SIMPLEX, size, 235.0,
                    max(2, int(size * 2)), cv2.LINE_AA)


# ---------------------------------------------------------------------------------------------
# lateral view


def draw_lateral(
    rng: np.random.Generator,
    height: int,
    width: int,
    lesions: Sequence[LesionSpec] = (),
    *,
    devices: Sequence[str] = (),
) -> np.ndarray:
    """A lateral chest radiograph phantom (patient facing image left), uint8 height x width.

    Frame: X from the inner anterior chest wall (-1, image left) to the inner posterior wall (+1);
    Y from the lung apex (0) to the posterior costophrenic sulcus (1). Effusions fill the posterior
    sulcus, an enlarged heart fills the retrocardiac space, and other lung lesions show as a faint
    opacity at the height of the zone they are reported in.
    """
    px_per_cm = min(width / rng.uniform(33.0, 40.0), height / rng.uniform(37.0, 44.0))
    half_depth = px_per_cm * rng.uniform(12.5, 14.5)
    lung_height = px_per_cm * rng.uniform(21.0, 25.0)
    top = float(np.clip(height * rng.uniform(0.1, 0.18), 0.05 * height, 0.9 * height - lung_height))
    cx = width / 2 + rng.normal(0.0, 0.02) * width
    frame = _make_frame(half_depth, lung_height, (cx, top), float(rng.normal(0.0, 1.5)), (width / 2, height / 2))
    scale = LATERAL_WORK_LONG_SIDE / max(height, width)
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    unit = frame.unit_y * scale
    big_x, big_y = frame.grid(shape, scale)

    body_pts = np.array(
        [
            (-0.2, -1.4), (-0.3, -0.5), (-0.75, -0.2), (-1.1, 0.15), (-1.2, 0.6), (-1.15, 1.1), (-1.12, 2.2),
            (1.3, 2.2), (1.28, 1.2), (1.3, 0.5), (1.22, 0.0), (1.0, -0.5), (0.9, -1.4),
        ]
    )
    body = _soft(_fill([_outline(body_pts, corners=(0, 6, 7, 12))], shape, frame, scale), 0.015 * unit)
    atten = body * (0.85 + 0.2 * _smoothstep((big_x + 1.2) / 1.5))
    # the raised arms cross the upper chest and the neck
    arms = np.zeros(shape, np.float32)
    for shift in (0.0, rng.uniform(0.08, 0.18)):
        _stroke(arms, np.array([(0.45 + shift, 0.05), (0.0 + shift, -0.45), (-0.5 + shift, -1.3)]), frame, scale, 0.3)
    atten += 0.1 * _blur(arms, 0.04 * unit)

    dome = rng.uniform(-0.03, 0.03)
    lung_pts = np.array(
        [
            (0.05, 0.0), (0.38, 0.04), (0.7, 0.2), (0.88, 0.5), (0.95, 0.8),
            (0.93, 1.0),  # posterior costophrenic sulcus
            (0.6, 0.86 + dome), (0.2, 0.74 + dome), (-0.3, 0.68 + dome), (-0.65, 0.7 + dome),
            (-0.86, 0.76 + dome),  # anterior costophrenic angle
            (-0.93, 0.5), (-0.86, 0.25), (-0.58, 0.08), (-0.25, 0.01),
        ]
    )
    lung_pts += rng.normal(0.0, 0.008, lung_pts.shape)
    lung = _fill([_outline(lung_pts, corners=(5, 10))], shape, frame, scale)
    enlarged = any(spec.style == LesionType.CARDIOMEGALY for spec in lesions)
    back = 0.3 if enlarged else rng.uniform(0.05, 0.15)  # an enlarged heart fills the retrocardiac space
    heart_pts = np.array(
        [
            (-0.92, 0.64), (-0.82, 0.5), (-0.58, 0.42), (-0.3, 0.43), (-0.06, 0.5), (back, 0.61), (back - 0.03, 0.73),
            (-0.15, 0.79 + dome), (-0.55, 0.81 + dome), (-0.88, 0.79 + dome),
        ]
    )
    heart_pts += rng.normal(0.0, 0.01, heart_pts.shape)
    heart = _soft(_fill([_outline(heart_pts)], shape, frame, scale), 0.012 * unit)
    depth = cv2.distanceTransform(lung.astype(np.uint8), cv2.DIST_L2, 3) / (0.2 * unit)
    air = rng.uniform(0.55, 0.68) * _soft(lung, 0.006 * unit) * (0.45 + 0.55 * np.sqrt(np.clip(depth, 0.0, 1.0)))
    air *= 1.0 - 0.35 * _smoothstep((0.3 - big_y) / 0.35)  # shoulders and arms cover the apices
    air *= (1.0 - 0.4 * heart) * (0.9 + 0.1 * _smooth_noise(rng, shape, 12))

    kept_air = np.ones(shape, np.float32)
    zone_height = {"apical": 0.1, "upper": 0.3, "mid": 0.5, "base": 0.75}
    for spec in lesions:
        sev = float(np.clip(spec.severity, 0.0, 1.0))
        if spec.style == LesionType.EFFUSION:
            level = 1.0 - (0.1 + 0.45 * sev)
            meniscus = level + 0.25 * np.clip(0.9 - big_x, 0.0, 2.0) ** 1.3
            kept_air *= 1.0 - 0.9 * _smoothstep((big_y - meniscus) / 0.05)
        elif spec.style != LesionType.CARDIOMEGALY:
            heights = [v for loc in spec.locations for k, v in zone_height.items() if k in loc] or [0.5, 0.75]
            blob = np.zeros(shape, np.float32)
            for y in heights:
                col, row = frame.to_pixels(np.array([(rng.uniform(-0.2, 0.6), y)]), scale)[0]
                _add_blob(blob, row, col, 0.08 * unit, 0.08 * unit)
            kept_air *= 1.0 - 0.45 * np.clip(blob, 0.0, 1.0)
    atten -= air * kept_air

    vertebrae, plates, ribs, long_bones = (np.zeros(shape, np.float32) for _ in range(4))
    period = rng.uniform(0.085, 0.1)
    blocks = []
    for k in range(-5, 14):  # vertebral bodies, gently kyphotic, with bright end plates
        y = k * period
        x = 0.66 + 0.08 * np.sin(np.pi * (y + 0.4) / 1.8)
        corners = [(x - 0.13, y), (x + 0.13, y - 0.01), (x + 0.14, y + period * 0.8), (x - 0.12, y + period * 0.82)]
        blocks.append(np.array(corners))
    _strokes(plates, [np.vstack([b, b[:1]]) for b in blocks], frame, scale, 0.008)
    vertebrae += _fill(blocks, shape, frame, scale)
    for k in range(9):  # posterior ribs of both sides, slightly out of register
        y0 = 0.0 + k * 0.105
        for shift in (0.0, 0.035):
            arc = np.array([(1.0, y0 + shift), (0.75, y0 + 0.1 + shift), (0.45, y0 + 0.24 + shift)])
            _stroke(ribs, _catmull_rom(arc, 8), frame, scale, 0.03)
    _stroke(long_bones, np.array([(-1.0, 0.02), (-1.04, 0.3), (-1.05, 0.62)]), frame, scale, 0.03)  # sternum
    for shift in (0.0, 0.1):  # humeri
        humerus = np.array([(0.3 + shift, -0.05), (-0.1 + shift, -0.55), (-0.45 + shift, -1.3)])
        _stroke(long_bones, humerus, frame, scale, 0.07)
    bones = 0.3 * vertebrae + 0.2 * plates + 0.15 * ribs + 0.35 * long_bones
    atten += rng.uniform(0.25, 0.32) * _blur(bones, 0.004 * unit) * np.maximum(body, 0.3)

    airway = np.zeros(shape, np.float32)
    _stroke(airway, np.array([(-0.4, -1.2), (-0.2, -0.4), (0.0, 0.38)]), frame, scale, 0.06)
    atten -= 0.08 * _blur(airway, 0.01 * unit) * body
    hila = np.zeros(shape, np.float32)
    _ellipse(hila, (0.05, 0.42), (0.14, 0.08), 0, frame, scale, 1.0)
    aorta = _catmull_rom(np.array([(-0.3, 0.42), (-0.15, 0.2), (0.15, 0.17), (0.42, 0.32), (0.55, 0.9)]), 10)
    _stroke(hila, aorta, frame, scale, 0.09, 0.6)
    atten += 0.1 * _blur(hila, 0.02 * unit) * _soft(lung, 0.01 * unit)

    lo, hi, gamma = rng.uniform(0.0, 0.08), rng.uniform(1.25, 1.45), rng.uniform(1.0, 1.3)
    gray = _tone(np.clip((atten - lo) / (hi - lo), 0.0, 1.0) ** gamma, rng.uniform(0.8, 1.4))
    gray = _blur(gray, rng.uniform(0.6, 1.2))
    gray += rng.uniform(2.0, 3.5) * rng.standard_normal(shape, dtype=np.float32)
    image = _enlarge(rng, gray, height, width, sharpen=rng.uniform(0.3, 0.8))
    if "ecg_leads" in devices:
        for _ in range(3):
            _ellipse(image, (rng.uniform(-1.15, -0.9), rng.uniform(0.0, 0.9)), (0.04, 0.02), 0, frame, 1.0, 235.0,
                     max(2, int(0.006 * frame.unit_y)))
    return image
