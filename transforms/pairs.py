"""A study's rows of the dataset: positive pairs, sampled negatives, masks, discarded findings, its studies row."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from schemas.config import PairsConfig
from schemas.vocab import (
    OPACITY_LIKE,
    SIDED_LOCATIONS,
    Certainty,
    DiscardReason,
    InstructionType,
    LesionType,
    Location,
    NegativeKind,
    Presence,
    Stage,
    StudyStatus,
    locations_related,
)
from transforms.image_results import FULL_MASK, FindingOnImage, ImageResult
from transforms.masks import mask_id as make_mask_id
from transforms.records import ErrorRecord, Finding, Study


@dataclass
class StudyOutputs:
    pairs: list[dict] = field(default_factory=list)
    masks: list[dict] = field(default_factory=list)
    discarded: list[dict] = field(default_factory=list)
    study_row: dict = field(default_factory=dict)


def stable_seed(*parts: object) -> int:
    """A seed from values, identical on every worker and run (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def _pair_id(dicom_id: str, itype: str, target: str, locations: tuple[str, ...], negative_kind: str | None) -> str:
    return hashlib.sha256(f"{dicom_id}|{itype}|{target}|{','.join(locations)}|{negative_kind}".encode()).hexdigest()[:24]


def _phrase(options: list[str], seed: int, key: str, **values: str) -> str:
    choice = options[stable_seed(seed, key) % len(options)]
    return choice.format(**values)


def _location_text(locations: tuple[str, ...]) -> str:
    return " and ".join(locations)


@dataclass
class _Context:
    study: Study
    image: ImageResult
    config: PairsConfig
    split: str

    def pair(self, itype: InstructionType, target: str, locations: tuple[str, ...], *, negative_kind: str | None,
             finding: Finding | None, mask_id: str | None, grounded: tuple[str, ...] = ()) -> dict:
        cfg, key = self.config, _pair_id(self.image.dicom_id, itype.value, target, locations, negative_kind)
        location = _location_text(locations)
        if negative_kind is None:
            instruction = _phrase(cfg.templates[itype], cfg.seed, key + "i", target=target, location=location)
            answer_kind = "lesion_inference" if itype == InstructionType.LESION_INFERENCE else "positive"
            answer = _phrase(cfg.answers[answer_kind], cfg.seed, key + "a", target=target, location=location)
        else:
            instruction = _phrase(cfg.negative_templates[itype], cfg.seed, key + "i", target=target, location=location)
            answer_kind = "negative_basic" if locations else "negative_global"
            answer = _phrase(cfg.answers[answer_kind], cfg.seed, key + "a", target=target, location=location)
        return {
            "pair_id": key, "split": self.split, "subject_id": self.study.subject_id, "study_id": self.study.study_id,
            "dicom_id": self.image.dicom_id, "image_path": self.image.image_path, "instruction_type": itype.value,
            "target": target, "locations": list(locations), "is_positive": negative_kind is None,
            "negative_kind": negative_kind, "instruction": instruction, "answer": answer, "mask_id": mask_id,
            "finding_id": finding.finding_id if finding else None, "sent_idx": finding.sent_idx if finding else None,
            "reported_locations": list(finding.reported_locations) if finding else [],
            "grounded_locations": list(grounded),
        }


def _discard_row(finding: Finding, dicom_id: str | None, reason: DiscardReason | str, stage: Stage | str,
                 details: str = "{}") -> dict:
    return {"finding_id": finding.finding_id, "study_id": finding.study_id, "dicom_id": dicom_id,
            "target": finding.entity, "reported_locations": list(finding.reported_locations),
            "reason": str(reason), "stage": str(stage), "details": details}


def _mask_row(study_id: str, dicom_id: str, target: str, locations: tuple[str, ...], encoded, outcome: FindingOnImage) -> dict:
    mid = make_mask_id(dicom_id, target, encoded.height, encoded.width, encoded.rle)
    return {"mask_id": mid, "study_id": study_id, "dicom_id": dicom_id, "target": target,
            "locations": list(locations), "height": encoded.height, "width": encoded.width, "rle": encoded.rle,
            "area": encoded.area, "bbox": encoded.bbox, "source": outcome.source,
            "prior_probability": outcome.scores.get("prior_probability"),
            "region_overlap": outcome.scores.get("region_overlap"), "prior_mass": outcome.scores.get("prior_mass"),
            "refine_score": outcome.scores.get("refine_score")}


def _positives(ctx: _Context, findings: dict[str, Finding], outcomes: list[FindingOnImage],
               masks: dict[str, dict], discarded: list[dict]) -> list[dict]:
    cfg, dicom = ctx.config, ctx.image.dicom_id
    located = {t.value for t in cfg.located_types}
    grounded = [o for o in outcomes if o.discard is None and FULL_MASK in o.masks]
    # a location part asked as lesion inference must hold one opacity-like type only
    opacity_parts: dict[tuple[str, ...], set[str]] = {}
    for o in grounded:
        if LesionType(o.target) in OPACITY_LIKE:
            for part in o.masks:
                opacity_parts.setdefault(part, set()).add(o.target)
    pairs: dict[str, dict] = {}
    for o in sorted(grounded, key=lambda o: (findings[o.finding_id].sent_idx, o.finding_id)):
        finding = findings[o.finding_id]
        requests = []
        if set(finding.reported_locations) <= set(o.grounded_locations):
            requests.append((InstructionType.GLOBAL, o.grounded_locations, FULL_MASK))
        if o.target in located:
            requests += [(InstructionType.BASIC, part, part) for part in o.masks if part != FULL_MASK]
        if LesionType(o.target) in OPACITY_LIKE:
            requests += [(InstructionType.LESION_INFERENCE, part, part) for part in o.masks
                         if len(part) == 1 and opacity_parts.get(part) == {o.target}]
        if not requests:
            discarded.append(_discard_row(finding, dicom, DiscardReason.NOT_VERIFIED, Stage.PAIRS,
                                          '{"no_askable_location": true}'))
            continue
        added = 0
        for itype, locations, mask_key in requests:
            encoded = o.masks[mask_key]
            row = _mask_row(ctx.study.study_id, dicom, o.target, locations, encoded, o)
            pair = ctx.pair(itype, o.target, () if itype == InstructionType.GLOBAL else locations,
                            negative_kind=None, finding=finding, mask_id=row["mask_id"], grounded=o.grounded_locations)
            if pair["pair_id"] in pairs:
                continue
            pairs[pair["pair_id"]] = pair
            masks.setdefault(row["mask_id"], row)
            added += 1
        if not added:
            first = next(p for p in pairs.values() if p["target"] == o.target)
            discarded.append(_discard_row(finding, dicom, DiscardReason.DUPLICATE_MENTION, Stage.PAIRS,
                                          f'{{"same_as_finding": "{first["finding_id"]}"}}'))
    return list(pairs.values())


def _negative_candidates(ctx: _Context, findings: list[Finding], outcomes: list[FindingOnImage]) -> dict[str, list]:
    located = {t.value for t in ctx.config.located_types}
    present = [f for f in findings if f.presence == Presence.PRESENT.value]
    mentioned = {f.entity for f in findings}
    grounded = [o for o in outcomes if o.discard is None and FULL_MASK in o.masks]

    def blocked(target: str, location: str | None) -> bool:
        """Would saying 'no target (in location)' contradict the report or a grounded mask?"""
        for f in present:
            if f.entity != target:
                continue
            if location is None or not f.reported_locations:
                return True
            if any(locations_related(Location(location), Location(loc)) for loc in f.reported_locations):
                return True
        return any(o.target == target and (location is None or any(
            locations_related(Location(location), Location(loc)) for loc in o.grounded_locations)) for o in grounded)

    sided = {loc.value for loc in SIDED_LOCATIONS}
    out: dict[str, list] = {kind.value: [] for kind in NegativeKind}
    for f in findings:
        if f.presence != Presence.ABSENT.value:
            continue
        locations = [loc for loc in f.reported_locations if loc in sided]
        if locations and f.entity in located:
            out[NegativeKind.NEGATIVE_REPORTED_LESION.value] += [
                (f.entity, (loc,), f) for loc in locations if not blocked(f.entity, loc)]
        elif not f.reported_locations or f.entity == LesionType.CARDIOMEGALY.value:
            if not blocked(f.entity, None):
                out[NegativeKind.NEGATIVE_REPORTED_LESION.value].append((f.entity, (), f))
    out[NegativeKind.NOT_REPORTED_LESION.value] = [(t.value, (), None) for t in LesionType if t.value not in mentioned]
    for o in grounded:
        if o.target not in located:
            continue
        empty = [loc for loc in ctx.image.empty_locations.get(o.target, []) if not blocked(o.target, loc)]
        out[NegativeKind.LOCATION_WITHOUT_LESION.value] += [(o.target, (loc,), None) for loc in empty]
        out[NegativeKind.GROUNDING_NO_LOCATION_EXTENSION.value] += [
            (o.target, (loc,), None) for loc in o.unreached_locations if loc not in empty and not blocked(o.target, loc)]
    for kind, items in out.items():
        unique = {(t, locs): (t, locs, f) for t, locs, f in items}
        out[kind] = [unique[k] for k in sorted(unique)]
    return out


def _sample_negatives(ctx: _Context, candidates: dict[str, list], n_positive: int) -> list[dict]:
    cfg = ctx.config
    ratio = cfg.negative_ratio.get(ctx.split, 1.0)
    budget = max(math.ceil(ratio * n_positive), cfg.min_negatives_per_image)
    rng = np.random.default_rng(stable_seed(cfg.seed, ctx.study.study_id, ctx.image.dicom_id))
    pools = {kind: list(items) for kind, items in candidates.items() if items}
    weights = {kind.value: w for kind, w in cfg.negative_kind_weights.items()}
    chosen: list[dict] = []
    while len(chosen) < budget:
        kinds = [k for k in sorted(pools) if pools[k] and weights.get(k, 0) > 0]
        if not kinds:
            break
        p = np.array([weights[k] for k in kinds], float)
        kind = kinds[rng.choice(len(kinds), p=p / p.sum())]
        target, locations, finding = pools[kind].pop(int(rng.integers(len(pools[kind]))))
        itype = InstructionType.BASIC if locations else InstructionType.GLOBAL
        chosen.append(ctx.pair(itype, target, locations, negative_kind=kind, finding=finding, mask_id=None))
    return chosen


def build_study_outputs(study: Study, findings: list[Finding], images: list[ImageResult], errors: list[ErrorRecord],
                        n_frontal: int, config: PairsConfig) -> StudyOutputs:
    out = StudyOutputs()
    by_id = {f.finding_id: f for f in findings}
    split = study.split or "train"
    groundable = []
    for f in findings:
        if f.presence != Presence.PRESENT.value:
            continue
        if f.certainty == Certainty.UNCERTAIN.value:
            out.discarded.append(_discard_row(f, None, DiscardReason.UNCERTAIN_FINDING, Stage.STRUCTURE))
        elif n_frontal == 0:
            out.discarded.append(_discard_row(f, None, DiscardReason.NO_FRONTAL_IMAGE, Stage.READ))
        else:
            groundable.append(f)
    masks: dict[str, dict] = {}
    n_positive = n_negative = 0
    for image in sorted(images, key=lambda i: i.dicom_id):
        if image.error is not None:
            out.discarded += [_discard_row(f, image.dicom_id, DiscardReason.IMAGE_ERROR, image.error.stage,
                                           f'{{"error_type": "{image.error.error_type}"}}') for f in groundable]
            continue
        ctx = _Context(study, image, config, split)
        for o in image.findings:
            if o.discard is not None:
                out.discarded.append(_discard_row(by_id[o.finding_id], image.dicom_id, o.discard, o.stage, o.details))
            elif FULL_MASK not in o.masks:
                out.discarded.append(_discard_row(by_id[o.finding_id], image.dicom_id, DiscardReason.REFINEMENT_EMPTY,
                                                  Stage.REFINE, o.details))
        positives = _positives(ctx, by_id, image.findings, masks, out.discarded)
        negatives = _sample_negatives(ctx, _negative_candidates(ctx, findings, image.findings), len(positives))
        out.pairs += positives + negatives
        n_positive += len(positives)
        n_negative += len(negatives)
    out.masks = [masks[k] for k in sorted(masks)]
    if n_positive:
        status = StudyStatus.USED
    elif n_negative:
        status = StudyStatus.NEGATIVES_ONLY
    elif errors:
        status = StudyStatus.ERROR
    else:
        status = StudyStatus.DISCARDED
    out.study_row = {
        "study_id": study.study_id, "subject_id": study.subject_id, "split": study.split,
        "report_path": study.report_path, "n_images": len(study.images), "n_frontal": n_frontal,
        "n_findings": len(findings), "n_positive_pairs": n_positive, "n_negative_pairs": n_negative,
        "n_discarded": len(out.discarded), "n_errors": len(errors), "status": status.value,
    }
    return out
