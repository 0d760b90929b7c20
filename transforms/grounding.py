"""Grounding one reported finding on one image: candidates, the c1–c4 filter, fusion and verification.

The refiner (a model) runs between `select_candidates` and `fuse_and_verify`; both sides are pure.
All maps and masks here are at the models' working resolution.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from schemas.config import FusionRule, GroundingConfig
from schemas.vocab import (
    LUNG_BY_SIDE,
    SIDED_LOCATIONS,
    ZONES_BY_SIDE,
    DiscardReason,
    LesionType,
    Location,
    Stage,
)
from transforms.masks import dilate, lowest_rows, ramp
from transforms.records import AnatomyResult, Box, Candidate, Finding, LesionPrior, RefinedMask

_DEFAULT_RULE = FusionRule()


@dataclass
class Selection:
    """Result of the c1–c4 filter for one finding on one image."""

    finding: Finding
    region: np.ndarray | None  # the reported region (c1), None when anatomy lacks it
    clip_region: np.ndarray | None  # where the fused mask may lie
    kept: list[Candidate] = field(default_factory=list)
    rejected: list[Candidate] = field(default_factory=list)
    discard: DiscardReason | None = None
    details: dict = field(default_factory=dict)
    direct_mask: np.ndarray | None = None  # a mask that needs no refinement (cardiomegaly: the heart)


@dataclass
class Grounding:
    """What became of one finding on one image."""

    finding: Finding
    mask: np.ndarray | None  # bool, working resolution; None when discarded
    grounded_locations: tuple[str, ...] = ()
    unreached_locations: tuple[str, ...] = ()  # sided locations the mask does not touch at all
    discard: DiscardReason | None = None
    stage: Stage = Stage.VERIFY
    details: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)  # prior_probability, region_overlap, prior_mass, refine_score
    source: str = ""


def _rule(config: GroundingConfig, target: str) -> FusionRule:
    return config.fusion.get(LesionType(target), _DEFAULT_RULE)


def _dilation_px(rule: FusionRule, shape: tuple[int, int]) -> int:
    return int(round(rule.region_dilation * max(shape)))


def _sides_of(locations: tuple[str, ...]) -> list[str]:
    sides = [side for side in ("right", "left") if any(loc.startswith(side) for loc in locations)]
    return sides or ["right", "left"]


def _union(anatomy: AnatomyResult, names: list[str], shape: tuple[int, int]) -> np.ndarray | None:
    masks = [anatomy.masks.get(name) for name in names]
    if any(m is None or not m.any() for m in masks):
        return None
    out = np.zeros(shape, bool)
    for mask in masks:
        out |= mask
    return out


def _with_space_below(region: np.ndarray, anatomy: AnatomyResult, depth: float) -> np.ndarray:
    """`region` plus, in each of its columns, the pixels below it down to `depth` × the lung's height."""
    lungs = anatomy.masks.get(Location.LUNG.value)
    if depth <= 0 or lungs is None or not lungs.any() or not region.any():
        return region
    rows = np.flatnonzero(lungs.any(axis=1))
    reach = int(round(depth * (rows[-1] - rows[0] + 1)))
    height = region.shape[0]
    lowest = lowest_rows(region)
    below = np.arange(height)[:, None]
    extended = (below > lowest[None, :]) & (below <= lowest[None, :] + reach) & (lowest[None, :] >= 0)
    return region | extended


def _base_zones(sides, rule: FusionRule) -> list[str]:
    """The zones of each side that make its base: `rule.base_zones` of them, counted up from the lowest."""
    return [zone.value for side in sides for zone in ZONES_BY_SIDE[side][-rule.base_zones:]]


def _base_region(finding: Finding, anatomy: AnatomyResult, shape: tuple[int, int], rule: FusionRule) -> np.ndarray | None:
    region = _union(anatomy, _base_zones(_sides_of(finding.reported_locations), rule), shape)
    if region is None:
        return None
    return _with_space_below(dilate(region, _dilation_px(rule, shape)), anatomy, rule.below_depth)


def reported_region(finding: Finding, anatomy: AnatomyResult, shape: tuple[int, int], rule: FusionRule) -> np.ndarray | None:
    """Union of the reported locations; no stated location means the whole lungs (bases for effusion)."""
    if rule.region == "lung_base" and rule.below_depth > 0:
        return _base_region(finding, anatomy, shape, rule)  # fluid lies at the base of whichever zone is named
    names = list(finding.reported_locations)
    if not names:
        if rule.region == "lung_base":
            names = _base_zones(("right", "left"), rule)
        elif rule.region == "heart":
            names = [Location.HEART.value]
        else:
            names = [Location.LUNG.value]
    region = _union(anatomy, names, shape)
    return None if region is None else dilate(region, _dilation_px(rule, shape))


def clip_region(finding: Finding, anatomy: AnatomyResult, shape: tuple[int, int], rule: FusionRule) -> np.ndarray | None:
    """Where the fused mask of this lesion type may lie."""
    if rule.region == "heart":
        return _union(anatomy, [Location.HEART.value], shape)
    if rule.region == "lung_base":
        return _base_region(finding, anatomy, shape, rule)
    if rule.region == "lungs":
        names = [Location.LUNG.value]
    else:
        return reported_region(finding, anatomy, shape, rule)
    region = _union(anatomy, names, shape)
    return None if region is None else dilate(region, _dilation_px(rule, shape))


def cardiothoracic_ratio(anatomy: AnatomyResult) -> float | None:
    """Widest heart extent over widest lung-field extent (a PA-view proxy of the clinical ratio)."""
    heart, lungs = anatomy.masks.get(Location.HEART.value), anatomy.masks.get(Location.LUNG.value)
    if heart is None or lungs is None or not heart.any() or not lungs.any():
        return None
    heart_cols = np.flatnonzero(heart.any(axis=0))
    lung_cols = np.flatnonzero(lungs.any(axis=0))
    thorax = lung_cols[-1] - lung_cols[0] + 1
    return float((heart_cols[-1] - heart_cols[0] + 1) / thorax)


def propose_candidates(prior_map: np.ndarray, probability: float, threshold: float) -> list[Candidate]:
    """Connected components of the prior above `threshold`; confidence = sqrt(peak × image probability)."""
    above = (prior_map >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    candidates = []
    for label in range(1, count):
        x, y, w, h, _area = stats[label]
        component = labels == label
        peak = float(prior_map[component].max())
        candidates.append(
            Candidate(box=Box(int(x), int(y), int(x + w), int(y + h)), component=component,
                      confidence=float(np.sqrt(peak * max(probability, 0.0))))
        )
    return candidates


def score_and_filter(candidates: list[Candidate], prior_map: np.ndarray, region: np.ndarray, lungs: np.ndarray,
                     config: GroundingConfig) -> tuple[list[Candidate], list[Candidate]]:
    """Apply c1 (overlap with the reported region), c2 (confidence), c3 (prior mass in the box), c4 (size)."""
    search = lungs | region
    total_mass = float(prior_map[search].sum()) or 1.0
    lung_area = float(lungs.sum()) or 1.0
    kept, rejected = [], []
    for cand in candidates:
        area = float(cand.component.sum())
        cand.region_overlap = float((cand.component & region).sum()) / area
        box = cand.box
        in_box = np.zeros_like(search)
        in_box[box.y0:box.y1, box.x0:box.x1] = True
        cand.prior_mass = float(prior_map[in_box & search].sum()) / total_mass
        cand.area_fraction = area / lung_area
        cand.scores = {"region_overlap": round(cand.region_overlap, 4), "confidence": round(cand.confidence, 4),
                       "prior_mass": round(cand.prior_mass, 4), "area_fraction": round(cand.area_fraction, 5),
                       "box": box.as_xywh()}
        checks = (
            (cand.region_overlap >= config.min_region_overlap, DiscardReason.OUTSIDE_REPORTED_REGION),
            (cand.confidence >= config.min_confidence, DiscardReason.LOW_CONFIDENCE),
            (cand.prior_mass >= config.min_prior_mass, DiscardReason.LOW_PRIOR_MASS),
            (cand.area_fraction >= config.min_area_fraction, DiscardReason.BELOW_MIN_AREA),
        )
        failed = next((reason for ok, reason in checks if not ok), None)
        cand.rejected_by = failed.value if failed else None
        (rejected if failed else kept).append(cand)
    return kept, rejected


def _furthest_rejection(rejected: list[Candidate]) -> DiscardReason:
    """The reason of the candidate that passed most checks (ties: the most confident one)."""
    order = [DiscardReason.OUTSIDE_REPORTED_REGION, DiscardReason.LOW_CONFIDENCE,
             DiscardReason.LOW_PRIOR_MASS, DiscardReason.BELOW_MIN_AREA]
    best = max(rejected, key=lambda c: (order.index(DiscardReason(c.rejected_by)), c.confidence))
    return DiscardReason(best.rejected_by)


def select_candidates(finding: Finding, anatomy: AnatomyResult, prior: LesionPrior,
                      config: GroundingConfig, view: str = "") -> Selection:
    """`view`: the image's view position ('PA', 'AP', '' when unknown), for view-dependent thresholds."""
    target = finding.entity
    prior_map = prior.maps[target]
    shape = prior_map.shape
    rule = _rule(config, target)
    region = reported_region(finding, anatomy, shape, rule)
    clip = clip_region(finding, anatomy, shape, rule)
    lungs = anatomy.masks.get(Location.LUNG.value)
    selection = Selection(finding=finding, region=region, clip_region=clip)
    if region is None or clip is None or lungs is None or not lungs.any():
        missing = [n for n in (*finding.reported_locations, Location.LUNG.value)
                   if anatomy.masks.get(n) is None or not anatomy.masks[n].any()]
        selection.discard = DiscardReason.ANATOMY_MISSING
        selection.details = {"missing_regions": missing or [Location.HEART.value]}
        return selection
    probability = float(prior.probabilities.get(target, 0.0))
    if not rule.trusted:
        selection.discard = DiscardReason.PRIOR_NOT_TRUSTED
        selection.details = {"lesion_prior": prior.backend, "probability": round(probability, 4)}
        return selection
    if rule.region == "heart":
        ratio = cardiothoracic_ratio(anatomy)
        threshold = rule.cardiothoracic_threshold(view)
        selection.details = {"cardiothoracic_ratio": ratio, "probability": probability,
                             "min_cardiothoracic_ratio": threshold, "view": view}
        if ratio is None or (threshold is not None and ratio < threshold):
            selection.discard = DiscardReason.NOT_VERIFIED
        else:
            selection.direct_mask = clip
        return selection
    candidates = propose_candidates(prior_map, probability, config.prior_threshold)
    selection.details = {"probability": round(probability, 4), "n_candidates": len(candidates)}
    if not candidates:
        selection.discard = DiscardReason.NO_PRIOR_SIGNAL
        selection.details["prior_peak_in_region"] = round(float(prior_map[region].max()), 4) if region.any() else 0.0
        return selection
    selection.kept, selection.rejected = score_and_filter(candidates, prior_map, region, lungs, config)
    selection.details["candidates"] = [c.scores | {"rejected_by": c.rejected_by} for c in candidates]
    if not selection.kept:
        selection.discard = _furthest_rejection(selection.rejected)
    return selection


def _coverage(mask: np.ndarray, region: np.ndarray | None) -> float:
    if region is None:
        return 0.0
    return float((mask & region).sum()) / float(mask.sum())


def _location_region(anatomy: AnatomyResult, location: str, rule: FusionRule) -> np.ndarray | None:
    """A location's mask, with the pleural space below it for types that fill it (effusion)."""
    region = anatomy.masks.get(location)
    if region is None or rule.region != "lung_base":
        return region
    return _with_space_below(region, anatomy, rule.below_depth)


def verify_locations(mask: np.ndarray, finding: Finding, anatomy: AnatomyResult,
                     config: GroundingConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(grounded, unreached): reported locations holding enough of the mask, and sided locations it misses."""
    if finding.entity == LesionType.CARDIOMEGALY.value:
        return (Location.HEART.value,), ()
    asked = finding.reported_locations or tuple(
        LUNG_BY_SIDE[side].value for side in ("right", "left")
    )
    rule = _rule(config, finding.entity)
    grounded = tuple(loc for loc in asked
                     if _coverage(mask, _location_region(anatomy, loc, rule)) >= config.min_location_coverage)
    unreached = tuple(loc.value for loc in SIDED_LOCATIONS
                      if loc.value in anatomy.masks and anatomy.masks[loc.value].any()
                      and not (mask & anatomy.masks[loc.value]).any())
    return grounded, unreached


def fuse_and_verify(selection: Selection, refined: list[RefinedMask], anatomy: AnatomyResult,
                    prior: LesionPrior, config: GroundingConfig, refiner_name: str) -> Grounding:
    finding = selection.finding
    probability = float(prior.probabilities.get(finding.entity, 0.0))
    if selection.discard is not None:
        stage = {DiscardReason.ANATOMY_MISSING: Stage.ANATOMY, DiscardReason.PRIOR_NOT_TRUSTED: Stage.LESION_PRIOR,
                 DiscardReason.NOT_VERIFIED: Stage.VERIFY}.get(selection.discard, Stage.CANDIDATES)
        return Grounding(finding, None, discard=selection.discard, stage=stage, details=selection.details)
    if selection.direct_mask is not None:
        mask, source, refine_score = selection.direct_mask, f"anatomy:{anatomy.backend}", 1.0
        kept_overlap, kept_mass = 1.0, 1.0
    else:
        mask = np.zeros_like(selection.clip_region)
        rule = _rule(config, finding.entity)
        if not rule.refine:
            refined = []
        for index, cand in enumerate(selection.kept):
            result = refined[index] if refined else None
            # a refiner that finds nothing, or drifts away from the candidate, keeps the prior's own component
            use_refined = result is not None and result.mask.any() and result.score >= rule.min_refine_score
            mask |= result.mask if use_refined else cand.component
        mask &= selection.clip_region
        source = f"{prior.backend}+{refiner_name}" if refined else prior.backend
        refine_score = float(np.mean([r.score for r in refined])) if refined else 0.0
        kept_overlap = max(c.region_overlap for c in selection.kept)
        kept_mass = float(sum(c.prior_mass for c in selection.kept))
    details = dict(selection.details)
    if not mask.any():
        return Grounding(finding, None, discard=DiscardReason.REFINEMENT_EMPTY, stage=Stage.REFINE, details=details)
    if selection.direct_mask is None:
        # c4 holds for the mask the dataset keeps, not only for the candidates: refinement and clipping can shrink it
        lungs = anatomy.masks.get(Location.LUNG.value)
        details["mask_area_fraction"] = round(float(mask.sum()) / max(float(lungs.sum()), 1.0), 5)
        if details["mask_area_fraction"] < config.min_area_fraction:
            return Grounding(finding, None, discard=DiscardReason.BELOW_MIN_AREA, stage=Stage.REFINE, details=details)
    grounded, unreached = verify_locations(mask, finding, anatomy, config)
    details["location_coverage"] = {loc: round(_coverage(mask, _location_region(anatomy, loc, _rule(config, finding.entity))), 4)
                                    for loc in (finding.reported_locations or ())}
    if not grounded:
        return Grounding(finding, None, discard=DiscardReason.NOT_VERIFIED, stage=Stage.VERIFY, details=details)
    scores = {"prior_probability": probability, "region_overlap": kept_overlap, "prior_mass": min(kept_mass, 1.0),
              "refine_score": refine_score}
    return Grounding(finding, mask, grounded_locations=grounded, unreached_locations=unreached,
                     details=details, scores=scores, source=source)


def empty_locations(prior: LesionPrior, anatomy: AnatomyResult, config: GroundingConfig) -> dict[str, list[str]]:
    """Per lesion type, the sided locations whose mean prior is below the empty level (verified empty).
    A type whose prior is not trusted verifies nothing."""
    out: dict[str, list[str]] = {}
    for target, prior_map in prior.maps.items():
        if target == LesionType.CARDIOMEGALY.value or not _rule(config, target).trusted:
            continue
        names = []
        for loc in SIDED_LOCATIONS:
            region = anatomy.masks.get(loc.value)
            if region is not None and region.any() and float(prior_map[region].mean()) < config.max_empty_location_prior:
                names.append(loc.value)
        out[target] = names
    return out


def behind_reported_fluid(findings: list[Finding], anatomy: AnatomyResult, prior: LesionPrior,
                          config: GroundingConfig) -> LesionPrior:
    """The prior with `behind_fluid` maps faded where the effusion map is strong, in the lungs of the sides where the
    report names effusion (definite or suspected: either way the reader saw fluid-like density there): lung behind
    fluid is not seen, and the density there is the fluid's. Where the report names no fluid, a dense base is as
    likely the reported lesion itself, so nothing fades."""
    effusion = prior.maps.get(LesionType.EFFUSION.value)
    sides = {side for f in findings if f.entity == LesionType.EFFUSION.value for side in _sides_of(f.reported_locations)}
    lungs = [anatomy.masks.get(LUNG_BY_SIDE[side].value) for side in sides]
    lungs = [lung for lung in lungs if lung is not None]
    if effusion is None or not lungs:
        return prior
    low, high = config.fluid_hides
    fluid = ramp(effusion, low, high) * np.logical_or.reduce(lungs)
    seen = (1.0 - fluid).astype(np.float32)
    maps = {target: prior_map * seen if _rule(config, target).behind_fluid else prior_map
            for target, prior_map in prior.maps.items()}
    return replace(prior, maps=maps)


def _record_fading(selection: Selection, before: LesionPrior, after: LesionPrior) -> None:
    """The share of the finding's prior mass in its reported region that reported fluid hid, in its details: an
    auditor sees why a dense region the image shows gave no candidate."""
    target, region = selection.finding.entity, selection.region
    if after is before or region is None or not region.any():
        return
    shown = float(before.maps[target][region].sum())
    if shown > 0:
        hidden = 1.0 - float(after.maps[target][region].sum()) / shown
        if hidden > 0:
            selection.details["prior_hidden_by_fluid"] = round(hidden, 4)


@dataclass(frozen=True)
class ImageToGround:
    """One image's groundable findings with what grounding needs of it."""

    findings: list[Finding]
    anatomy: AnatomyResult
    prior: LesionPrior
    image: np.ndarray
    view: str = ""  # 'PA', 'AP', '' when unknown
    suspected: list[Finding] = field(default_factory=list)  # present but hedged: not grounded, but context


def ground_images(images: list[ImageToGround], refiner, config: GroundingConfig) -> list[list[Grounding]]:
    """Ground every finding on several images; the refiner sees the kept boxes of all of them in one call (SAM
    encodes the images in batches, each once).

    Mentions of one lesion type at the same locations (findings and impression often repeat each other)
    ground to the same mask: each distinct one is grounded once and its result shared. An image's findings are
    all its groundable findings: reported fluid, with suspected fluid, hides the lung behind it from the others."""
    plans = []
    for item in images:
        prior = behind_reported_fluid(item.findings + item.suspected, item.anatomy, item.prior, config)
        distinct = {}
        for finding in item.findings:
            distinct.setdefault((finding.entity, finding.reported_locations), finding)
        selections = [select_candidates(f, item.anatomy, prior, config, item.view) for f in distinct.values()]
        for selection in selections:
            _record_fading(selection, item.prior, prior)
        # only types whose rule refines send their candidates to the refiner (the others keep the prior's components)
        to_refine = [s.kept if _rule(config, s.finding.entity).refine else [] for s in selections]
        plans.append((prior, distinct, selections, to_refine))
    requests = [(item.image, [c.box for kept in to_refine for c in kept], [c.component for kept in to_refine for c in kept])
                for item, (_, _, _, to_refine) in zip(images, plans)]
    results = []
    for item, (prior, distinct, selections, to_refine), refined in zip(images, plans, refiner.refine_images(requests)):
        masks = iter(refined)
        grounded = {key: fuse_and_verify(s, [next(masks) for _ in kept], item.anatomy, prior, config, refiner.name)
                    for key, s, kept in zip(distinct, selections, to_refine)}
        results.append([replace(grounded[(f.entity, f.reported_locations)], finding=f) for f in item.findings])
    return results


def ground_findings(findings: list[Finding], anatomy: AnatomyResult, prior: LesionPrior, image: np.ndarray,
                    refiner, config: GroundingConfig, view: str = "") -> list[Grounding]:
    """`ground_images` for one image."""
    return ground_images([ImageToGround(findings, anatomy, prior, image, view)], refiner, config)[0]
