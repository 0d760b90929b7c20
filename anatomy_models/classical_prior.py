"""Weight-free lesion prior: density anomalies inside the lung fields, shaped per lesion type.

An opacity is lung that has lost its air: locally as dense as soft tissue instead of as dark as
aerated lung. So every map starts from one density scale per image: 0 at the expected aerated lung
(a low quantile of the lung's own intensity at the same relative position, both lungs pooled), 1 at
the heart's intensity (soft tissue). Local intensity is a masked Gaussian mean over the lung fields
(wide enough to average ribs and intercostal spaces away), compared both with that expectation and
with the mirrored point of the other lung at the same relative height (a unilateral lesion stands
out against its healthy twin even when pooled statistics are raised). Normal structure — hila,
vessels, apices under the clavicles — is denser than the darkest lung but similar on both sides and
bounded, which is what the pooled position-wise baseline and its cap absorb.

Per type: opacity / pneumonia / consolidation are focal dense regions (consolidation needs more
density), judged at a finer scale (lesions are often small) on the image with its bright structure up
to a rib's width (ribs, vessels, lines) flattened first by a grey opening, so that the finer scale
follows lesions rather than that structure; they are judged only where lung is seen directly (lung that
the anatomy marks as seen through soft tissue, retrocardiac, is left out; lung behind reported pleural fluid is left out by grounding, which reads the
report); atelectasis favours the bases and horizontal bands; edema is haze
present on both sides at mirrored positions against the lung's darkest part (not the position-wise
baseline, which a haze over most of the lung would raise), only when most of the perihilar field is
hazy, and is then drawn over its perihilar distribution (a bat's wing about each hilum, sparing apex,
periphery and base), including lung seen through the heart; effusion is dense fluid layering up from the
lung base (filled from the bottom, strongest laterally, spilling just below the lung outline at the
costophrenic angle), and in a hemithorax that holds enough of it, all of the base below the aerated lung,
down to the other lung's mirrored outline when that side is clear (a segmenter stops the lung at the fluid's
surface), and, where it layers up from the base along the heart's border, the lung carried behind the heart
from that level down; cardiomegaly is the heart mask scaled by the cardiothoracic-ratio evidence.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage, stats

from anatomy_models.base import LesionPriorBackend, register
from anatomy_models.classical_anatomy import RETROCARDIAC_LUNG
from schemas.vocab import LesionType, Location
from transforms.grounding import cardiothoracic_ratio
from transforms.masks import below_lowest, disk, lowest_rows, masked_gaussian, mirrored_columns, ramp, resize_mask
from transforms.records import AnatomyResult, LesionPrior


def masked_opening(image: np.ndarray, mask: np.ndarray, diameter: int) -> np.ndarray:
    """Grey opening of `image` over `mask` only, with a disc `diameter` pixels across (`disk`: odd-sized): bright
    structures narrower than the disc are flattened to their surroundings, broader ones kept. Pixels outside the mask
    neither take part nor change (the soft tissue around the lungs would otherwise spread into their rim)."""
    if diameter < 2:
        return image
    disc = disk(diameter)
    far = np.finfo(np.float32).max
    eroded = cv2.erode(np.where(mask, image, far).astype(np.float32), disc)
    opened = cv2.dilate(np.where(mask, eroded, -far).astype(np.float32), disc)
    return np.where(mask, opened, image).astype(np.float32)


@dataclass
class LungFrame:
    """Relative lung coordinates of one image: v from apex (0) to base (1), u from medial (0) to lateral (1)."""

    lungs: np.ndarray  # bool, both lungs
    field: np.ndarray  # bool, lungs minus overlying soft tissue: where lung density is judged
    u: np.ndarray  # float32 map, valid inside `lungs`
    v: np.ndarray
    depth: np.ndarray  # distance below the lung-field outline, relative to that lung's deepest point
    mirror_x: np.ndarray  # float32 map: the point at the same (u, v) in the other lung (-1 where none)
    mirror_y: np.ndarray


def _row_extents(lung: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    rows = np.nonzero(lung.any(axis=1))[0]
    top, bottom = int(rows[0]), int(rows[-1])
    x_min = np.full(lung.shape[0], np.nan, np.float32)
    x_max = np.full(lung.shape[0], np.nan, np.float32)
    for y in rows:
        xs = np.nonzero(lung[y])[0]
        x_min[y], x_max[y] = xs[0], xs[-1]
    return x_min, x_max, top, bottom


def lung_frame(right: np.ndarray, left: np.ndarray, overlying: np.ndarray) -> LungFrame:
    """Coordinates of both lungs (the patient's right lung is on the image left, smaller x).

    `overlying` is soft tissue projected over the lung masks (heart, mediastinum), left out of the field.
    """
    height, width = right.shape
    u = np.zeros((height, width), np.float32)
    v = np.zeros((height, width), np.float32)
    mirror_x = np.full((height, width), -1.0, np.float32)
    mirror_y = np.full((height, width), -1.0, np.float32)
    extents = {side: _row_extents(mask) for side, mask in (("right", right), ("left", left))}
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for side, mask, other in (("right", right, "left"), ("left", left, "right")):
        x_min, x_max, top, bottom = extents[side]
        row_min, row_max = x_min[ys.astype(int)], x_max[ys.astype(int)]
        row_width = np.maximum(row_max - row_min, 1.0)
        # Medial edge is the row's larger x for the image-left (right) lung, its smaller x for the other.
        side_u = (row_max - xs) / row_width if side == "right" else (xs - row_min) / row_width
        side_v = (ys - top) / max(bottom - top, 1)
        u[mask] = np.clip(side_u[mask], 0, 1)
        v[mask] = np.clip(side_v[mask], 0, 1)
        # The mirrored point: same relative height and same medial-to-lateral position in the other lung.
        o_min, o_max, o_top, o_bottom = extents[other]
        target_y = np.rint(o_top + v[mask] * (o_bottom - o_top)).astype(int)
        t_min, t_max = o_min[target_y], o_max[target_y]
        if other == "right":
            target_x = t_max - u[mask] * (t_max - t_min)
        else:
            target_x = t_min + u[mask] * (t_max - t_min)
        valid = ~np.isnan(target_x)  # the other lung may have no pixels on that row
        mirror_x[mask] = np.where(valid, target_x, -1.0)
        mirror_y[mask] = np.where(valid, target_y, -1.0)
    lungs = right | left
    field = lungs & ~overlying
    distance = cv2.distanceTransform(np.pad(field, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    depth = np.zeros((height, width), np.float32)
    for mask in (right, left):
        inside = mask & field
        if inside.any():
            depth[inside] = distance[inside] / max(float(distance[inside].max()), 1.0)
    return LungFrame(lungs=lungs, field=field, u=u, v=v, depth=depth, mirror_x=mirror_x, mirror_y=mirror_y)


def sample_at(values: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    return cv2.remap(values, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@register("lesion_prior", "classical")
class ClassicalLesionPrior(LesionPriorBackend):
    """Density-anomaly lesion prior; every threshold is an option (lengths are fractions of the long side)."""

    version = "3"

    def __init__(
        self,
        work_size: int = 256,  # long side the maps are computed at
        smoothing: float = 0.025,
        # Focal types use a finer density, on the image opened with a disc this wide (fractions of the long side).
        # On five synthetic corpora (vision only) this grounded 0.73 of the visible focal lesions instead of 0.67, at
        # IoU 0.37 instead of 0.35, and discarded more invisible findings (0.91, was 0.89). The finer scale without
        # the opening follows vessels and rib edges: 0.85 discarded. Real ribs are 3-5 % of the film's height.
        focal_smoothing: float = 0.01,
        focal_opening: float = 0.05,
        baseline_quantile: float = 0.3,
        baseline_height_bins: int = 5,
        baseline_across_bins: int = 2,  # medial / lateral halves
        baseline_depth_edges: tuple[float, ...] = (0.03, 0.08, 0.16, 0.3, 0.5),  # relative depth below the lung outline
        # How much denser than the lung's own quantile normal structure may be: much at the outline (chest wall
        # and mediastinal borders overlap it), little deep inside, so diffuse disease is not absorbed there.
        baseline_cap: tuple[float, float] = (1.0, 0.2),  # at the outline, from `baseline_cap_depth` inwards
        baseline_cap_depth: float = 0.3,
        min_contrast: float = 0.05,  # floor of the soft-tissue − lung intensity difference (of the 0–1 range)
        contralateral_weight: float = 0.8,
        # Density levels (0 = aerated, 1 = soft tissue) where a map starts and saturates. Each is raised to
        # `noise_levels` × the lung's own spread of density, so busy real lungs (ribs, vessels) need more
        # contrast than clean ones.
        opacity_density: tuple[float, float] = (0.08, 0.22),
        consolidation_density: tuple[float, float] = (0.2, 0.4),
        effusion_density: tuple[float, float] = (0.2, 0.4),
        noise_levels: tuple[float, float] = (1.5, 3.0),
        atelectasis_band_ratio: float = 3.0,  # horizontal / vertical smoothing for band shapes
        atelectasis_apex_weight: float = 0.5,  # weight at the apex, rising to 1 at the base
        # Edema is haze over most of both lungs, which the position-wise baseline absorbs: it is judged against
        # the lung's darkest part (this quantile of the smoothed lung), away from the outline (where chest wall and
        # mediastinum overlap the lung; ramped in over these relative depths), and only where the perihilar
        # field as a whole is hazy on both sides (median bilateral density there, ramped between these levels).
        edema_reference_quantile: float = 0.05,
        edema_smoothing: float = 0.04,
        # Where edema lies once present: perihilar (a bat's wing), an ellipse about each lung's medial edge at mid
        # height that spares the apex, the lateral periphery and the base; its semi-axes in relative lung coordinates
        # (medial to lateral, height), faded over this share of them.
        edema_extent: tuple[float, float] = (0.75, 0.4),
        edema_edge: float = 0.15,
        edema_presence: tuple[float, float] = (0.1, 0.18),
        edema_presence_core: float = 0.7,  # presence is judged inside this share of the bat's wing's semi-axes
        effusion_base_start: float = 0.5,  # relative height where effusion evidence starts to count
        effusion_base_full: float = 0.8,
        effusion_fill_level: float = 0.2,  # evidence that counts as fluid when filling up from the base
        pleural_margin: float = 0.03,  # how far the effusion map reaches outside the lung outline
        effusion_lateral_share: float = 0.15,  # of a lung's width: the lateral part whose bottom is the costophrenic angle
        effusion_min_blunting: float = 0.015,  # of the lung's height: lateral bottom above the lowest point = blunted angle
        effusion_expected_height: float = 2.0,  # a clear lung's height over its width (when neither side is clear)
        effusion_side_fill: tuple[float, float] = (0.02, 0.06),  # strong share of a hemithorax: its unaerated base is fluid
        effusion_dome_depth: float = 0.18,  # of the lung's height: how much higher the lung ends medially than laterally
        effusion_mirror: bool = True,  # a hemithorax with fluid beside a clear one takes the clear lung's outline, mirrored
        ctr_midpoint: float = 0.5,  # cardiothoracic ratio at which cardiomegaly probability is 0.5
        ctr_scale: float = 0.03,
        strong_level: float = 0.5,  # map level counted as lesion for the probabilities
        probability_area: float = 0.02,  # lung fraction of strong map at which probability is 63 % of its peak
    ) -> None:
        self.work_size = work_size
        self.smoothing = smoothing
        self.focal_smoothing = focal_smoothing
        self.focal_opening = focal_opening
        self.baseline_quantile = baseline_quantile
        self.baseline_height_bins = baseline_height_bins
        self.baseline_across_bins = baseline_across_bins
        self.baseline_depth_edges = tuple(baseline_depth_edges)
        self.baseline_cap = tuple(baseline_cap)
        self.baseline_cap_depth = baseline_cap_depth
        self.min_contrast = min_contrast
        self.contralateral_weight = contralateral_weight
        self.opacity_density = tuple(opacity_density)
        self.consolidation_density = tuple(consolidation_density)
        self.effusion_density = tuple(effusion_density)
        self.noise_levels = tuple(noise_levels)
        self.atelectasis_band_ratio = atelectasis_band_ratio
        self.atelectasis_apex_weight = atelectasis_apex_weight
        self.edema_reference_quantile = edema_reference_quantile
        self.edema_smoothing = edema_smoothing
        self.edema_extent = tuple(edema_extent)
        self.edema_edge = edema_edge
        self.edema_presence = tuple(edema_presence)
        self.edema_presence_core = edema_presence_core
        self.effusion_base_start = effusion_base_start
        self.effusion_base_full = effusion_base_full
        self.effusion_fill_level = effusion_fill_level
        self.pleural_margin = pleural_margin
        self.effusion_lateral_share = effusion_lateral_share
        self.effusion_min_blunting = effusion_min_blunting
        self.effusion_expected_height = effusion_expected_height
        self.effusion_side_fill = tuple(effusion_side_fill)
        self.effusion_dome_depth = effusion_dome_depth
        self.effusion_mirror = effusion_mirror
        self.ctr_midpoint = ctr_midpoint
        self.ctr_scale = ctr_scale
        self.strong_level = strong_level
        self.probability_area = probability_area

    def predict(self, images: Sequence[np.ndarray], anatomies: Sequence[AnatomyResult]) -> list[LesionPrior]:
        return [self.predict_one(image, anatomy) for image, anatomy in zip(images, anatomies, strict=True)]

    def predict_one(self, image: np.ndarray, anatomy: AnatomyResult) -> LesionPrior:
        shape = image.shape[:2]
        right = _mask(anatomy, Location.RIGHT_LUNG, shape)
        left = _mask(anatomy, Location.LEFT_LUNG, shape)
        heart = _mask(anatomy, Location.HEART, shape)
        mediastinum = _mask(anatomy, "mediastinum", shape)
        # Lung field that the film shows as soft tissue (carried behind the heart and under the dome, when the
        # anatomy backend marks it) is left out of the field where density is judged, with the heart and mediastinum.
        hidden_lung = _mask(anatomy, RETROCARDIAC_LUNG, shape)
        maps = {lesion.value: np.zeros(shape, np.float32) for lesion in LesionType}
        probabilities = {lesion.value: 0.0 for lesion in LesionType}
        if right.any() and left.any():
            # The maps are smooth by construction: compute them at a reduced size, then upsample.
            scale = min(1.0, self.work_size / max(shape))
            work_shape = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
            work_image = cv2.resize(image, work_shape[::-1], interpolation=cv2.INTER_AREA) if scale < 1 else image
            at_work = [resize_mask(mask, *work_shape) for mask in (right, left, heart, mediastinum, hidden_lung)]
            work_maps = {}
            self._lung_maps(work_image.astype(np.float32) / 255.0, *at_work, work_maps, probabilities)
            # focal types are judged where lung is seen directly; edema covers the whole lung; effusion may reach
            # past the lung outline
            confined_to = {LesionType.EDEMA.value: right | left, LesionType.EFFUSION.value: None}
            field = (right | left) & ~heart & ~mediastinum & ~hidden_lung
            for lesion, work_map in work_maps.items():
                full = cv2.resize(work_map, shape[::-1], interpolation=cv2.INTER_LINEAR) if scale < 1 else work_map
                region = confined_to.get(lesion, field)
                if region is not None:
                    full = full * region
                maps[lesion] = np.clip(full, 0, 1).astype(np.float32)
        ctr = cardiothoracic_ratio(anatomy)
        if ctr is not None:
            p_cardiomegaly = float(1.0 / (1.0 + np.exp(-(ctr - self.ctr_midpoint) / self.ctr_scale)))
            maps[LesionType.CARDIOMEGALY.value] = heart.astype(np.float32) * p_cardiomegaly
            probabilities[LesionType.CARDIOMEGALY.value] = p_cardiomegaly
        return LesionPrior(maps=maps, probabilities=probabilities, backend=self.name, version=self.version)

    def density(self, image: np.ndarray, frame: LungFrame, heart: np.ndarray,
                smoothing: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(local density vs the expected lung, vs the mirrored point, mirrored-point validity), 0 = aerated, 1 = soft tissue.

        `smoothing` (default: the prior's) sets the scale of "local", as a fraction of the long side."""
        sigma = (self.smoothing if smoothing is None else smoothing) * max(image.shape)
        local = masked_gaussian(image, frame.field, sigma)
        values = local[frame.field]
        lung_level = float(np.quantile(values, self.baseline_quantile))
        tissue = float(np.median(image[heart])) if heart.any() else float(np.quantile(image[frame.lungs | heart], 0.95))
        contrast = max(tissue - lung_level, self.min_contrast)

        # Expected aerated lung per (depth below the lung outline, height): both lungs pooled, so a bin is only
        # raised when most of that ring is dense; the cap bounds how much normal structure it may absorb.
        n_height, n_across = self.baseline_height_bins, self.baseline_across_bins
        n_depth = len(self.baseline_depth_edges) + 1
        height_bin = np.minimum((frame.v[frame.field] * n_height).astype(int), n_height - 1)
        across_bin = np.minimum((frame.u[frame.field] * n_across).astype(int), n_across - 1)
        depth_bin = np.digitize(frame.depth[frame.field], self.baseline_depth_edges)
        grid = np.full((n_height, n_depth, n_across), lung_level, np.float32)
        depth_edges = np.array([0.0, *self.baseline_depth_edges, 1.0])
        depth_centres = (depth_edges[:-1] + depth_edges[1:]) / 2
        cap = np.interp(depth_centres, [0.0, self.baseline_cap_depth], self.baseline_cap)
        flat_bin = (height_bin * n_depth + depth_bin) * n_across + across_bin
        for index in np.unique(flat_bin):
            in_bin = values[flat_bin == index]
            if in_bin.size >= 20:
                ceiling = lung_level + cap[(index // n_across) % n_depth] * contrast
                grid.flat[index] = min(np.quantile(in_bin, self.baseline_quantile), ceiling)
        depth_coord = np.interp(frame.depth, depth_centres, np.arange(n_depth))
        coords = np.stack([frame.v[frame.field] * n_height - 0.5, depth_coord[frame.field], frame.u[frame.field] * n_across - 0.5])
        baseline = np.zeros(image.shape, np.float32)
        baseline[frame.field] = ndimage.map_coordinates(grid, coords, order=1, mode="nearest")
        vs_expected = (local - baseline) / contrast

        mirrored = sample_at(local, frame.mirror_x, frame.mirror_y)
        mirror_valid = sample_at(frame.field.astype(np.float32), frame.mirror_x, frame.mirror_y) > 0.5
        vs_mirror = np.where(mirror_valid, (local - mirrored) / contrast, 0.0)
        return vs_expected * frame.field, vs_mirror * frame.field, mirror_valid & frame.field

    def _lung_maps(self, image, right, left, heart, mediastinum, hidden_lung, maps, probabilities) -> None:
        frame = lung_frame(right, left, heart | mediastinum | hidden_lung)
        if frame.field.sum() < 100:
            return
        vs_expected, vs_mirror, mirror_valid = self.density(image, frame, heart)
        focal = np.maximum(vs_expected, self.contralateral_weight * vs_mirror) * frame.field
        opened = masked_opening(image, frame.field, int(round(self.focal_opening * max(image.shape))))
        fine_expected, fine_mirror, _ = self.density(opened, frame, heart, self.focal_smoothing)
        fine_focal = np.maximum(fine_expected, self.contralateral_weight * fine_mirror) * frame.field

        spread = float(stats.median_abs_deviation(vs_expected[frame.field], scale="normal"))
        effusion_levels = self._levels(self.effusion_density, spread)
        # the lungs as seen (without the extensions behind the heart) show where each base ends and how blunted it is
        seen = (right & frame.field, left & frame.field)
        effusion = self._effusion(vs_expected, effusion_levels, frame, heart | mediastinum, max(image.shape), seen, (right, left))
        maps[LesionType.EFFUSION.value] = effusion

        fine_spread = float(stats.median_abs_deviation(fine_expected[frame.field], scale="normal"))
        opacity = ramp(fine_focal, *self._levels(self.opacity_density, fine_spread)) * frame.field
        maps[LesionType.OPACITY.value] = opacity
        maps[LesionType.PNEUMONIA.value] = opacity
        maps[LesionType.CONSOLIDATION.value] = ramp(fine_focal, *self._levels(self.consolidation_density, fine_spread)) * frame.field

        # atelectasis bands are as thin as what the opening flattens: they are judged on the coarse density
        sigma = self.smoothing * max(image.shape)
        band = masked_gaussian(focal, frame.field, sigma, sigma_x=sigma * self.atelectasis_band_ratio)
        base_weight = self.atelectasis_apex_weight + (1 - self.atelectasis_apex_weight) * frame.v
        maps[LesionType.ATELECTASIS.value] = ramp(band, *self._levels(self.opacity_density, spread)) * base_weight * frame.field

        maps[LesionType.EDEMA.value] = self._edema(image, frame, heart, mirror_valid)

        lung_area = float(frame.field.sum())
        for lesion in (LesionType.OPACITY, LesionType.PNEUMONIA, LesionType.CONSOLIDATION, LesionType.ATELECTASIS,
                       LesionType.EDEMA, LesionType.EFFUSION):
            probabilities[lesion.value] = self._probability(maps[lesion.value], lung_area)

    def _edema(self, image: np.ndarray, frame: LungFrame, heart: np.ndarray, mirror_valid: np.ndarray) -> np.ndarray:
        """Whether edema is there is judged by haze; where it lies follows its distribution.

        Haze is measured on both sides at mirrored points (the lower of the two) against the lung's darkest part,
        over the inner part of the bat's wing as a whole: normal hila and vessels are dense in small parts of it,
        edema in most of it. Its extent is not the haze outline (haze fades smoothly into aerated lung, and ribs
        and vessels make any density contour ragged) but edema's distribution: perihilar, sparing the apex, the
        periphery and the base, including lung seen through the heart."""
        local = masked_gaussian(image, frame.field, self.edema_smoothing * max(image.shape))
        reference = float(np.quantile(local[frame.field], self.edema_reference_quantile))
        tissue = float(np.median(image[heart])) if heart.any() else float(np.quantile(image[frame.lungs], 0.95))
        density = (local - reference) / max(tissue - reference, self.min_contrast)
        mirrored = sample_at(density.astype(np.float32), frame.mirror_x, frame.mirror_y)
        bilateral = np.where(mirror_valid, np.minimum(density, mirrored), 0.0)
        across, height = self.edema_extent
        distance = np.hypot(frame.u / across, (frame.v - 0.5) / height)
        perihilar_field = mirror_valid & (distance < self.edema_presence_core)
        if perihilar_field.sum() < 20:
            return np.zeros(image.shape, np.float32)
        presence = float(ramp(np.float32(np.median(bilateral[perihilar_field])), *self.edema_presence))
        perihilar = 1.0 - ramp(distance, 1.0 - self.edema_edge, 1.0 + self.edema_edge)
        return (perihilar * presence * frame.lungs).astype(np.float32)

    def _levels(self, density: tuple[float, float], spread: float) -> tuple[float, float]:
        return max(density[0], self.noise_levels[0] * spread), max(density[1], self.noise_levels[1] * spread)

    def _effusion(self, vs_expected: np.ndarray, levels: tuple[float, float], frame: LungFrame, soft_tissue: np.ndarray,
                  long_side: int, seen: tuple[np.ndarray, np.ndarray], lungs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Dense evidence at the base that layers up from the lung's lower border, plus the pleural rim outside it.
        Heart and mediastinum (`soft_tissue`) are never fluid."""
        hemithorax = frame.lungs & ~soft_tissue
        dense = ramp(vs_expected, *levels) * frame.field
        base = ramp(frame.v, self.effusion_base_start, self.effusion_base_full)
        evidence = dense * base * (0.5 + 0.5 * frame.u)  # meniscus: fluid climbs highest laterally
        # Fill from the bottom: in each column, fluid is the run of evidence directly above the lung's lower border
        # (the lung's outermost rim, where chest wall and diaphragm overlap it, may read as anything).
        fluid = evidence >= self.effusion_fill_level
        margin = max(1, int(round(self.pleural_margin * long_side)))
        lowest = lowest_rows(hemithorax)
        bottom_rim = hemithorax & (np.arange(hemithorax.shape[0])[:, None] > lowest[None, :] - 2 * margin)
        below_is_fluid_or_outside = np.ones(fluid.shape[1], bool)
        filled = np.zeros_like(fluid)
        for y in range(fluid.shape[0] - 1, -1, -1):
            filled[y] = fluid[y] & below_is_fluid_or_outside
            passable = filled[y] | (bottom_rim[y] & below_is_fluid_or_outside)
            below_is_fluid_or_outside = np.where(hemithorax[y], passable, below_is_fluid_or_outside)
            # lung resting on the heart or mediastinum is not at its lower border: fluid does not layer there
            below_is_fluid_or_outside &= ~soft_tissue[y]
        effusion = evidence * filled
        kernel = disk(2 * margin + 1)
        # The rim the map spills into lies below the lung outline: beside it is chest wall, which the fluid
        # does not cross (where a segmenter cut the lung at the fluid, the cut is its lower border).
        rim = cv2.dilate(frame.lungs.astype(np.uint8), kernel).astype(bool) & ~frame.lungs & ~soft_tissue
        rim &= below_lowest(frame.lungs)
        spill = cv2.dilate(effusion, kernel)
        effusion = np.where(rim, spill, effusion)
        # fluid under the lung lies beside the heart and mediastinum, never over them
        subpulmonic = self._subpulmonic_fluid(*seen) * ~soft_tissue
        effusion = np.maximum(effusion, subpulmonic)
        clear = vs_expected < levels[0]
        for lung in lungs:
            effusion = np.maximum(effusion, self._unaerated_base(effusion, lung & ~soft_tissue, clear, frame))
        if self.effusion_mirror:
            effusion = np.maximum(effusion, self._mirrored_base(effusion, lungs, clear & frame.field) * ~soft_tissue)
        effusion = np.maximum(effusion, self._behind_heart(effusion, lungs, soft_tissue, margin))
        return effusion.astype(np.float32)

    def _behind_heart(self, effusion: np.ndarray, lungs: tuple[np.ndarray, np.ndarray], soft_tissue: np.ndarray,
                      margin: int) -> np.ndarray:
        """Fluid lies at one level across its hemithorax: where it layers up from the base along the heart's border, the
        lung that the anatomy carries behind the heart (which the film shows as heart) holds it as well, from the level
        the fluid reaches at that border down. Dense rows at the border that are not part of that layer (the heart's own
        edge, a lesion against it) are not fluid."""
        fluid = np.zeros(effusion.shape, np.float32)
        columns = np.arange(effusion.shape[1])[None, :]
        for index, lung in enumerate(lungs):
            hidden, seen = lung & soft_tissue, lung & ~soft_tissue
            if not hidden.any() or not seen.any():
                continue
            has = seen.any(axis=1)
            # the patient's right lung (image left) meets the heart at its largest column, the left lung at its smallest
            medial = seen.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1) if index == 0 else np.argmax(seen, axis=1)
            near_border = seen & (np.abs(columns - medial[:, None]) <= margin) & has[:, None]
            at_border = np.where(near_border, effusion, 0.0).max(axis=1)
            # the run of fluid rows at the border that reaches the lung's lowest rows there
            layer = at_border >= self.strong_level
            lowest = int(np.flatnonzero(has)[-1])
            bottom = next((row for row in range(lowest, max(lowest - margin, -1), -1) if layer[row]), None)
            if bottom is None:
                continue
            top = bottom
            while top > 0 and layer[top - 1]:
                top -= 1
            level = float(at_border[top : bottom + 1].mean())
            fluid[top:] = np.maximum(fluid[top:], level * hidden[top:])
        return fluid

    def _mirrored_base(self, effusion: np.ndarray, lungs: tuple[np.ndarray, np.ndarray], aerated: np.ndarray) -> np.ndarray:
        """A hemithorax holding fluid beside a clear one: the clear lung, mirrored about the thorax's midline, is the
        outline this lung has behind the fluid (the lung's lower border there is not seen, and a segmenter stops the lung
        at the fluid's surface). Below the aerated lung, down to that outline, is fluid."""
        fluid = np.zeros(effusion.shape, np.float32)
        strong = effusion >= self.strong_level
        shares = [float(strong[lung].sum() / max(int(lung.sum()), 1)) for lung in lungs]
        midline_twice = self._midline_twice(lungs)
        if midline_twice is None:
            return fluid
        rows = np.arange(effusion.shape[0])[:, None]
        for index, other in ((0, 1), (1, 0)):
            presence = float(ramp(np.float32(shares[index]), *self.effusion_side_fill))
            if presence <= 0 or shares[other] >= self.effusion_side_fill[0]:  # the other side must be clear
                continue
            # closed: the outline stands for a lung that is not seen, so its 1-pixel notches carry no information
            outline = cv2.morphologyEx(mirrored_columns(lungs[other], midline_twice).astype(np.uint8), cv2.MORPH_CLOSE,
                                       np.ones((3, 3), np.uint8)).astype(bool)
            if not outline.any():
                continue
            top, bottom = np.flatnonzero(outline.any(axis=1))[[0, -1]]
            base = rows >= top + self.effusion_base_start * (bottom - top)
            fluid = np.maximum(fluid, presence * (outline & base & below_lowest(aerated & lungs[index])))
        return fluid

    def _midline_twice(self, lungs: tuple[np.ndarray, np.ndarray]) -> int | None:
        """Twice the column of the thorax's midline: the lungs' outer edges over their upper halves, above any fluid."""
        both = lungs[0] | lungs[1]
        rows = np.flatnonzero(both.any(axis=1))
        if rows.size == 0:
            return None
        upper = both[rows[0] : rows[0] + (rows[-1] - rows[0]) // 2 + 1]
        cols = np.flatnonzero(upper.any(axis=0))
        return int(cols[0] + cols[-1])

    def _unaerated_base(self, effusion: np.ndarray, side: np.ndarray, clear: np.ndarray, frame: LungFrame) -> np.ndarray:
        """Once a hemithorax holds fluid (this share of it strong on the map, ramped), all of its lower part below its
        aerated lung is fluid: fluid layers from the base, and lung behind it is not seen, so what is not aerated
        there is the effusion's even where the film shows no density step (lung the anatomy carries, the rim)."""
        if not side.any():
            return np.zeros(side.shape, np.float32)
        presence = float(ramp(np.float32((effusion[side] >= self.strong_level).sum() / side.sum()), *self.effusion_side_fill))
        aerated = clear & frame.field & side
        air_bottom = lowest_rows(aerated)
        below_air = np.arange(side.shape[0])[:, None] > air_bottom[None, :]
        return (presence * (side & (frame.v >= self.effusion_base_start) & below_air)).astype(np.float32)

    def _blunting(self, lung: np.ndarray) -> float:
        """How far the lung's lateral bottom sits above its lowest point, over the lung's height.

        An aerated lung reaches lowest at its costophrenic angle (lateral); fluid fills that angle first,
        so the lowest point moves medially and the lateral edge ends higher (a blunted angle, a meniscus)."""
        rows, cols = np.flatnonzero(lung.any(axis=1)), np.flatnonzero(lung.any(axis=0))
        lateral_cols = max(1, int(round(self.effusion_lateral_share * (cols[-1] - cols[0] + 1))))
        lateral = lung[:, cols[0] : cols[0] + lateral_cols] if self._is_image_left(lung) else lung[:, cols[-1] - lateral_cols + 1 : cols[-1] + 1]
        lateral_bottom = np.flatnonzero(lateral.any(axis=1))[-1]
        return float(rows[-1] - lateral_bottom) / max(rows[-1] - rows[0], 1)

    @staticmethod
    def _is_image_left(lung: np.ndarray) -> bool:
        cols = np.flatnonzero(lung.any(axis=0))
        return float(cols[0] + cols[-1]) / 2 < lung.shape[1] / 2

    def _subpulmonic_fluid(self, right: np.ndarray, left: np.ndarray) -> np.ndarray:
        """Fluid below a lung with a blunted costophrenic angle: from the aerated lung's lower border down to
        where the lung should end (the other lung's height when that one is clear, else the expected height
        over width), following a dome that is deepest laterally. Fluid is as dense as the diaphragm under it,
        so this lower limit is geometric, not seen."""
        height, width = right.shape
        fluid = np.zeros((height, width), np.float32)
        sides = [right, left]
        if not right.any() or not left.any():
            return fluid
        blunting = [self._blunting(lung) for lung in sides]
        extents = [np.flatnonzero(lung.any(axis=1))[[0, -1]] for lung in sides]
        for index, lung in enumerate(sides):
            if blunting[index] < self.effusion_min_blunting:
                continue
            top, bottom = extents[index]
            cols = np.flatnonzero(lung.any(axis=0))
            other = 1 - index
            if blunting[other] < self.effusion_min_blunting:
                expected = top + (extents[other][1] - extents[other][0])
            else:
                expected = top + self.effusion_expected_height * (cols[-1] - cols[0] + 1)
            if expected <= bottom:
                continue
            lung_height = expected - top
            lowest = lowest_rows(lung)
            image_left = self._is_image_left(lung)
            for col in cols:
                lateral = (cols[-1] - col if image_left else col - cols[0]) / max(cols[-1] - cols[0], 1)
                floor = int(round(expected - self.effusion_dome_depth * (1.0 - lateral) * lung_height))
                if lowest[col] >= 0 and floor > lowest[col]:
                    fluid[lowest[col] + 1 : min(floor, height - 1) + 1, col] = 1.0
        return fluid

    def _probability(self, lesion_map: np.ndarray, lung_area: float) -> float:
        strong = lesion_map >= self.strong_level
        if not strong.any():
            return 0.0
        fraction = strong.sum() / lung_area
        return float(np.mean(lesion_map[strong]) * (1.0 - np.exp(-fraction / self.probability_area)))


def _mask(anatomy: AnatomyResult, name: str, shape: tuple[int, int]) -> np.ndarray:
    mask = anatomy.masks.get(str(name))
    if mask is None:
        return np.zeros(shape, bool)
    if mask.shape != shape:
        raise ValueError(f"anatomy mask '{name}' is {mask.shape}, the image is {shape}")
    return mask.astype(bool)
