"""`mimic-ils synth`: a synthetic corpus in the exact PhysioNet MIMIC-CXR-JPG layout, with ground truth.

What it writes under ROOT (DESIGN.md §4, §6):
  files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg        frontal (PA/AP) and lateral phantoms
  files/pXX/pSUBJECT/sSTUDY.txt                 the report, shaped like a MIMIC-CXR report
  mimic-cxr-2.0.0-metadata.csv.gz               one row per image, the real columns in order
  mimic-cxr-2.0.0-split.csv.gz                  dicom_id, study_id, subject_id, split (by subject)
  ground_truth/findings.parquet                 one row per (frontal image, reported fact); studies
                                                without a frontal image have rows with a null dicom_id
  ground_truth/masks/<dicom_id>/<target>.png    0/255 true mask of each visible present lesion type
  ground_truth/anatomy/<dicom_id>/<name>.png    0/255 lungs, 'lung', heart and the 8 zones (the project's
                                                zone rule, anatomy_models.zones.ZONE_BOUNDS)

The facts of a study are sampled first (subjects' studies in date order, so later reports can say
"unchanged" or "has resolved"); the report is written from them and the frontal images draw the
visible ones. Every random choice comes from a generator seeded by (seed, stream, index), so the
output is byte-identical for a seed and does not depend on the order studies are written in.
"""
from __future__ import annotations

import datetime as dt
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.corpus import METADATA_FILE, SPLIT_FILE
from schemas.tables import GROUND_TRUTH_FINDINGS, with_version
from schemas.vocab import FRONTAL_VIEWS, Certainty, LesionType, Location, Presence, Split
from transforms.phantom import DEVICES, LesionSpec, draw_frontal, draw_lateral
from transforms.synth_reports import Fact, Mention, ReportContext, implied_absent, render_report

METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "AcquisitionDeviceProcessingDescription", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")

JPEG_QUALITY = 90
# 0/255 masks compress to a few kB; run-length deflate without row filters is the fastest way there
PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
               cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]

# Random streams: one generator per (seed, stream, index...).
_CORPUS, _SUBJECT, _IMAGE, _REPORT = 0, 1, 2, 3

NORMAL_SHARE = 0.2
STUDIES_PER_SUBJECT = ((1, 0.5), (2, 0.3), (3, 0.2))
SPLIT_SHARES = {Split.VALIDATE: 0.1, Split.TEST: 0.1}  # of the subjects (at least one each); the rest train

# Study kinds: the views acquired, with their share of studies.
STUDY_KINDS = {
    "pa_lat": (("PA", "LATERAL"), 0.55),
    "ap": (("AP",), 0.22),
    "pa": (("PA",), 0.05),
    "ap_lat": (("AP", "LATERAL"), 0.05),
    "two_frontal": (("PA", "PA", "LATERAL"), 0.04),
    "two_ap": (("AP", "AP"), 0.04),
    "lat_only": (("LATERAL",), 0.05),
}
EXAMINATION = {"PA": "CHEST (PA AND LAT)", "AP": "CHEST (PORTABLE AP)"}
TECHNIQUES = {
    "pa_lat": ("Chest PA and lateral", "PA and lateral views of the chest."),
    "ap": (
        "Portable AP chest radiograph.", "Portable semi-upright AP view of the chest",
        "AP portable upright view of the chest.",
    ),
    "pa": ("PA view of the chest.",),
    "ap_lat": ("AP and lateral views of the chest.",),
    "two_frontal": ("Chest PA and lateral",),
    "two_ap": ("Portable AP views of the chest.",),
    "lat_only": ("Chest PA and lateral",),
}
VIEW_CODE = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}
PROCESSING = {
    "PA": ("CHEST PA", "CHEST, PA"), "AP": ("CHEST AP", "CHEST AP PORT"), "LATERAL": ("CHEST LAT", "CHEST, LAT"),
}
# Image size ranges (rows, and columns as a share of rows) per view; every side stays in 1600..3000.
SIZES = {"PA": ((2000, 3000), (0.78, 1.0)), "AP": ((1800, 2900), (0.85, 1.2)), "LATERAL": ((2000, 3000), (0.8, 1.15))}
SIDE_LIMITS = (1600, 3000)

# Report geography of each kind of lesion: (locations, weight).
FOCAL_LOCATIONS = (
    ((Location.RIGHT_BASE,), 0.22), ((Location.LEFT_BASE,), 0.18), ((Location.LEFT_BASE, Location.RIGHT_BASE), 0.14),
    ((Location.RIGHT_MID,), 0.1), ((Location.LEFT_MID,), 0.1), ((Location.RIGHT_UPPER,), 0.08),
    ((Location.LEFT_UPPER,), 0.06), ((Location.RIGHT_APICAL,), 0.02), ((Location.LEFT_APICAL,), 0.02),
    ((Location.LEFT_MID, Location.RIGHT_MID), 0.04), ((Location.RIGHT_LUNG,), 0.02), ((Location.LEFT_LUNG,), 0.02),
)
BASAL_LOCATIONS = (
    ((Location.LEFT_BASE, Location.RIGHT_BASE), 0.45), ((Location.LEFT_BASE,), 0.2), ((Location.RIGHT_BASE,), 0.2),
    ((Location.LEFT_MID,), 0.05), ((Location.RIGHT_MID,), 0.05), ((Location.RIGHT_UPPER,), 0.05),
)
EFFUSION_LOCATIONS = (
    ((Location.RIGHT_LUNG,), 0.35), ((Location.LEFT_LUNG,), 0.3), ((Location.LEFT_LUNG, Location.RIGHT_LUNG), 0.35),
)
EDEMA_LOCATIONS = (
    ((), 0.6), ((Location.LEFT_MID, Location.RIGHT_MID), 0.25), ((Location.LEFT_LUNG, Location.RIGHT_LUNG), 0.15),
)
# Findings that tend to come together.
COMPANIONS = {
    LesionType.CARDIOMEGALY: (LesionType.EDEMA, LesionType.EFFUSION),
    LesionType.EDEMA: (LesionType.CARDIOMEGALY, LesionType.EFFUSION),
    LesionType.EFFUSION: (LesionType.ATELECTASIS, LesionType.CARDIOMEGALY),
    LesionType.PNEUMONIA: (LesionType.EFFUSION, LesionType.OPACITY),
    LesionType.CONSOLIDATION: (LesionType.EFFUSION,),
    LesionType.ATELECTASIS: (LesionType.EFFUSION,),
    LesionType.OPACITY: (LesionType.EFFUSION, LesionType.ATELECTASIS),
}
# Chance that a study states a lesion type it does not report present as absent.
NEGATION_RATE = {
    LesionType.EFFUSION: 0.7, LesionType.CONSOLIDATION: 0.5, LesionType.EDEMA: 0.35, LesionType.CARDIOMEGALY: 0.5,
    LesionType.PNEUMONIA: 0.15, LesionType.OPACITY: 0.08, LesionType.ATELECTASIS: 0.04,
}
# Chance that a reported finding is drawn: definite ones mostly, hedged ones about half the time.
VISIBLE_RATE = {Certainty.DEFINITE: 0.88, Certainty.UNCERTAIN: 0.5}
DEVICE_RATES = {
    "AP": {"ecg_leads": 0.5, "central_line": 0.35, "endotracheal_tube": 0.2, "enteric_tube": 0.2,
           "sternotomy_wires": 0.1, "pacemaker": 0.05},
    "PA": {"ecg_leads": 0.05, "sternotomy_wires": 0.06, "pacemaker": 0.04},
}
LAYOUTS = (("full", 0.78), ("impression_only", 0.12), ("last_paragraph", 0.1))
ADDENDUM_RATE = 0.08


@dataclass(frozen=True)
class SynthImage:
    dicom_id: str
    view: str  # 'PA' | 'AP' | 'LATERAL'
    rows: int
    columns: int


@dataclass(frozen=True)
class SynthStudy:
    """Everything about one study except its pixels and its report text."""

    index: int  # position in the corpus; seeds the study's images and report
    subject_id: int
    study_id: int
    split: str
    kind: str  # a STUDY_KINDS key
    date: int  # YYYYMMDD
    time: float  # hhmmss.fff
    images: tuple[SynthImage, ...]
    mentions: tuple[Mention, ...]  # every reported fact, grouped as the report states them
    visible: tuple[bool, ...]  # per mention: drawn on the frontal images
    devices: tuple[str, ...]
    context: ReportContext

    @property
    def folder(self) -> Path:
        subject = f"p{self.subject_id}"
        return Path("files") / subject[:3] / subject

    @property
    def frontal(self) -> tuple[SynthImage, ...]:
        return tuple(image for image in self.images if image.view in FRONTAL_VIEWS)


def _generator(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def pick_weighted(rng: np.random.Generator, options):
    """One value of `options`, (value, weight) pairs, drawn in proportion to its weight."""
    values, weights = zip(*options)
    p = np.asarray(weights, dtype=float)
    return values[int(rng.choice(len(values), p=p / p.sum()))]


def _unique_ids(rng: np.random.Generator, count: int, low: int, high: int) -> list[int]:
    seen: set[int] = set()
    out = []
    while len(out) < count:
        value = int(rng.integers(low, high))
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def _dicom_id(rng: np.random.Generator) -> str:
    digits = rng.bytes(20).hex()
    return "-".join(digits[i : i + 8] for i in range(0, 40, 8))


def _image_size(rng: np.random.Generator, view: str) -> tuple[int, int]:
    (lo, hi), (a, b) = SIZES[view]
    rows = int(rng.integers(lo, hi + 1))
    columns = int(np.clip(round(rows * rng.uniform(a, b)), *SIDE_LIMITS))
    return rows, columns


# ---------------------------------------------------------------------------------------------
# facts


def _fact(target: LesionType, certainty: Certainty, locations, severity: float, change: str = "") -> Fact:
    return Fact(str(target), str(Presence.PRESENT), str(certainty), tuple(sorted(str(x) for x in locations)),
                float(round(severity, 3)), change)


def _new_mention(rng: np.random.Generator, target: LesionType, change: str) -> Mention:
    """A freshly reported abnormality of the given type, with its wording structure."""
    severity = rng.uniform(0.05, 1.0)

    def certainty(hedge_rate: float) -> Certainty:
        return Certainty.UNCERTAIN if rng.random() < hedge_rate else Certainty.DEFINITE

    if target == LesionType.CARDIOMEGALY:
        return Mention((_fact(target, certainty(0.12), (Location.HEART,), severity, change),))
    if target == LesionType.EFFUSION:
        return Mention((_fact(target, certainty(0.15), pick_weighted(rng, EFFUSION_LOCATIONS), severity, change),))
    if target == LesionType.EDEMA:
        return Mention((_fact(target, certainty(0.15), pick_weighted(rng, EDEMA_LOCATIONS), severity, change),))
    if target == LesionType.ATELECTASIS:
        where = pick_weighted(rng, BASAL_LOCATIONS)
        if rng.random() < 0.15:  # "bibasilar atelectasis versus pneumonia"
            return Mention((_fact(target, Certainty.UNCERTAIN, where, severity),
                            _fact(LesionType.PNEUMONIA, Certainty.UNCERTAIN, where, severity)))
        return Mention((_fact(target, certainty(0.15), where, severity, change),))
    where = pick_weighted(rng, FOCAL_LOCATIONS)
    if target == LesionType.OPACITY and rng.random() < 0.45:
        readings = pick_weighted(rng, (
            (((LesionType.ATELECTASIS, Certainty.UNCERTAIN),), 0.3),
            (((LesionType.PNEUMONIA, Certainty.UNCERTAIN),), 0.3),
            (((LesionType.ATELECTASIS, Certainty.DEFINITE),), 0.15),
            (((LesionType.ATELECTASIS, Certainty.UNCERTAIN), (LesionType.PNEUMONIA, Certainty.UNCERTAIN)), 0.15),
            (((LesionType.ATELECTASIS, Certainty.DEFINITE), (LesionType.PNEUMONIA, Certainty.UNCERTAIN)), 0.1),
        ))
        return Mention((_fact(target, Certainty.DEFINITE, where, severity, change),
                        *(_fact(t, c, where, severity) for t, c in readings)))
    if target == LesionType.CONSOLIDATION and rng.random() < 0.45:
        reading = Certainty.UNCERTAIN if rng.random() < 0.7 else Certainty.DEFINITE
        return Mention((_fact(target, Certainty.DEFINITE, where, severity, change),
                        _fact(LesionType.PNEUMONIA, reading, where, severity)))
    if target == LesionType.PNEUMONIA and rng.random() < 0.15:
        return Mention((_fact(LesionType.ATELECTASIS, Certainty.UNCERTAIN, where, severity),
                        _fact(target, Certainty.UNCERTAIN, where, severity)))
    hedge_rate = 0.25 if target == LesionType.PNEUMONIA else 0.15
    return Mention((_fact(target, certainty(hedge_rate), where, severity, change),))


def _follow_up(rng: np.random.Generator, mention: Mention) -> list[Mention]:
    """What a later report says about a finding of the previous study: persists, resolves, or nothing."""
    main = mention.facts[0]
    u = rng.random()
    if u < 0.6 or main.target == LesionType.CARDIOMEGALY:
        change = pick_weighted(rng, (("unchanged", 0.45), ("increased", 0.2), ("decreased", 0.2), ("", 0.15)))
        step = {"increased": 0.2, "decreased": -0.2}.get(change, 0.0)
        severity = float(round(np.clip(main.severity + step, 0.05, 1.0), 3))
        facts = [replace(f, severity=severity, change="") for f in mention.facts]
        facts[0] = replace(facts[0], change=change if main.certainty == Certainty.DEFINITE else "")
        return [Mention(tuple(facts))]
    if u < 0.85 and main.locations:
        return [Mention((Fact(main.target, str(Presence.ABSENT), str(Certainty.DEFINITE), main.locations,
                              main.severity, "resolved"),))]
    return []


def _study_mentions(rng: np.random.Generator, primary: LesionType | None, prior: tuple[Mention, ...],
                    has_prior: bool) -> list[Mention]:
    """The reported facts of one study, given its assigned main finding and the previous study's."""
    mentions: list[Mention] = []
    for old in prior:
        if old.facts[0].presence == Presence.PRESENT:
            followed = _follow_up(rng, old)
            if primary is None:  # a normal study: whatever was there has cleared
                followed = [m for m in followed if m.facts[0].presence == Presence.ABSENT]
            mentions += followed

    def stated_types() -> set[str]:  # a type said to persist or to have resolved is not also new
        return {f.target for m in mentions for f in m.facts}

    if primary is not None:
        wanted = [primary]
        extra = int(pick_weighted(rng, ((0, 0.45), (1, 0.4), (2, 0.15))))
        for _ in range(extra):
            pool = COMPANIONS[wanted[-1]] if rng.random() < 0.7 else tuple(LesionType)
            wanted.append(LesionType(pool[int(rng.integers(len(pool)))]))
        for target in wanted:
            if str(target) not in stated_types():
                change = "new" if has_prior and rng.random() < 0.3 else ""
                mentions.append(_new_mention(rng, target, change))

    stated = {f.target for m in mentions for f in m.facts}
    for m in list(mentions):  # "small right pleural effusion. No left effusion."
        main = m.facts[0]
        if main.target == LesionType.EFFUSION and main.presence == Presence.PRESENT and len(main.locations) == 1 \
                and rng.random() < 0.2:
            other = Location.LEFT_LUNG if main.locations[0] == Location.RIGHT_LUNG else Location.RIGHT_LUNG
            mentions.append(Mention((Fact(main.target, str(Presence.ABSENT), str(Certainty.DEFINITE), (str(other),)),)))
    for target in LesionType:
        if str(target) not in stated and rng.random() < NEGATION_RATE[target]:
            locations = (str(Location.HEART),) if target == LesionType.CARDIOMEGALY else ()
            mentions.append(Mention((Fact(str(target), str(Presence.ABSENT), str(Certainty.DEFINITE), locations),)))
    return mentions


def _visible(rng: np.random.Generator, mention: Mention, has_frontal: bool) -> bool:
    main = mention.facts[0]
    if not has_frontal or main.presence == Presence.ABSENT:
        return False
    certain = any(f.certainty == Certainty.DEFINITE for f in mention.facts)
    return bool(rng.random() < VISIBLE_RATE[Certainty.DEFINITE if certain else Certainty.UNCERTAIN])


def _lesion_spec(rng: np.random.Generator, mention: Mention) -> LesionSpec:
    """How a visible mention is drawn: one lesion standing for every type the mention reports."""
    targets = tuple(dict.fromkeys(f.target for f in mention.facts))
    main = mention.facts[0]
    style = main.target
    if main.target == LesionType.OPACITY and len(targets) > 1 and rng.random() < 0.5:
        style = targets[1 + int(rng.integers(len(targets) - 1))]
    return LesionSpec(targets=targets, style=style, locations=main.locations, severity=main.severity)


# ---------------------------------------------------------------------------------------------
# corpus plan


def plan_corpus(n_studies: int, seed: int = 0) -> list[SynthStudy]:
    """Every study of the corpus with its ids, images, facts and report setting (no pixels, no text)."""
    if n_studies < 0:
        raise ValueError("n_studies must be >= 0")
    rng = _generator(seed, _CORPUS)
    sizes = []
    while sum(sizes) < n_studies:
        sizes.append(min(int(pick_weighted(rng, STUDIES_PER_SUBJECT)), n_studies - sum(sizes)))
    subject_ids = _unique_ids(rng, len(sizes), 10_000_000, 20_000_000)
    study_ids = _unique_ids(rng, n_studies, 50_000_000, 60_000_000)
    splits = [str(Split.TRAIN)] * len(sizes)
    if len(sizes) >= 3:  # the split is by subject, and a small corpus still has all three
        chosen = iter(rng.permutation(len(sizes)))
        for split, share in SPLIT_SHARES.items():
            for _ in range(max(1, round(share * len(sizes)))):
                splits[int(next(chosen))] = str(split)
    # each lesion type leads about as many abnormal studies as the others, so a small corpus has all
    n_normal = round(NORMAL_SHARE * n_studies)
    order = [LesionType(t) for t in rng.permutation([str(t) for t in LesionType])]
    primaries: list[LesionType | None] = [None] * n_normal
    primaries += [order[k % len(order)] for k in range(n_studies - n_normal)]
    primaries = [primaries[k] for k in rng.permutation(n_studies)]

    studies: list[SynthStudy] = []
    index = 0
    for subject_index, (subject_id, count) in enumerate(zip(subject_ids, sizes)):
        srng = _generator(seed, _SUBJECT, subject_index)
        split = splits[subject_index]
        sex = "woman" if srng.random() < 0.5 else "man"
        day = dt.date(int(srng.integers(2110, 2196)), 1, 1) + dt.timedelta(days=int(srng.integers(0, 365)))
        prior: tuple[Mention, ...] = ()
        for k in range(count):
            kind = pick_weighted(srng, [(name, share) for name, (_, share) in STUDY_KINDS.items()])
            views = STUDY_KINDS[kind][0]
            images = []
            for view in views:
                rows, columns = _image_size(srng, view)
                images.append(SynthImage(_dicom_id(srng), view, rows, columns))
            frontal_view = next((v for v in views if v in FRONTAL_VIEWS), "PA")
            mentions = _study_mentions(srng, primaries[index], prior, has_prior=k > 0)
            has_frontal = any(v in FRONTAL_VIEWS for v in views)
            visible = tuple(_visible(srng, m, has_frontal) for m in mentions)
            devices = tuple(d for d in DEVICES if srng.random() < DEVICE_RATES[frontal_view].get(d, 0.0))
            context = ReportContext(
                examination=EXAMINATION[frontal_view],
                technique=TECHNIQUES[kind][int(srng.integers(len(TECHNIQUES[kind])))],
                has_prior=k > 0 or srng.random() < 0.3,
                devices=devices,
                layout=pick_weighted(srng, LAYOUTS),
                addendum=bool(srng.random() < ADDENDUM_RATE),
                sex=sex,
            )
            seconds, millis = int(srng.integers(0, 86400)), int(srng.integers(1000))
            clock = float(f"{seconds // 3600:02d}{seconds % 3600 // 60:02d}{seconds % 60:02d}.{millis:03d}")
            studies.append(SynthStudy(
                index=index, subject_id=subject_id, study_id=study_ids[index], split=split, kind=kind,
                date=int(day.strftime("%Y%m%d")), time=clock, images=tuple(images), mentions=tuple(mentions),
                visible=visible, devices=devices, context=context,
            ))
            prior = tuple(mentions)
            day += dt.timedelta(days=int(srng.integers(1, 400)))
            index += 1
    return studies


# ---------------------------------------------------------------------------------------------
# writing


def _write_image(path: Path, pixels: np.ndarray, options: list[int]) -> None:
    if not cv2.imwrite(str(path), pixels, options):
        raise OSError(f"could not write {path}")


def _write_study(
    root: Path, study: SynthStudy, seed: int, writer: ThreadPoolExecutor
) -> tuple[list[dict], list[dict], list[Future]]:
    """Draw one study and hand its files to `writer`; return its metadata rows, its ground-truth
    fact rows and the pending writes (encoding runs beside the drawing of the next study)."""
    pending: list[Future] = []

    def save(path: Path, pixels: np.ndarray, options: list[int]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pending.append(writer.submit(_write_image, path, pixels, options))

    def save_mask(path: Path, mask: np.ndarray) -> None:
        save(path, mask.view(np.uint8) * np.uint8(255), PNG_OPTIONS)

    folder = root / study.folder
    (folder / f"s{study.study_id}").mkdir(parents=True, exist_ok=True)
    report = render_report(_generator(seed, _REPORT, study.index), study.mentions, study.context)
    (folder / f"s{study.study_id}.txt").write_text(report)

    facts = [(fact, visible) for mention, visible in zip(study.mentions, study.visible) for fact in mention.facts]
    stated = {fact.target for fact, _ in facts}
    for target in implied_absent(report):  # "No acute cardiopulmonary process." denies every unnamed type
        if target not in stated:
            where = (str(Location.HEART),) if target == LesionType.CARDIOMEGALY else ()
            facts.append((Fact(target, str(Presence.ABSENT), str(Certainty.DEFINITE), where), False))
    drawn = [m for m, visible in zip(study.mentions, study.visible) if visible]

    metadata, truth = [], []
    for number, image in enumerate(study.images):
        rng = _generator(seed, _IMAGE, study.index, number)
        path = folder / f"s{study.study_id}" / f"{image.dicom_id}.jpg"
        if image.view in FRONTAL_VIEWS:
            specs = [_lesion_spec(rng, m) for m in drawn]
            pixels, lesion_masks, anatomy = draw_frontal(rng, image.rows, image.columns, specs, view=image.view,
                                                         devices=study.devices)
            for name, mask in anatomy.items():
                save_mask(root / "ground_truth" / "anatomy" / image.dicom_id / f"{name}.png", mask)
            shown = {target for target, mask in lesion_masks.items() if mask.any()}
            for target in sorted(shown):
                save_mask(root / "ground_truth" / "masks" / image.dicom_id / f"{target}.png", lesion_masks[target])
            for fact, visible in facts:
                truth.append(_truth_row(study, image.dicom_id, fact,
                                        visible and fact.presence == Presence.PRESENT and fact.target in shown))
        else:
            pixels = draw_lateral(rng, image.rows, image.columns, [_lesion_spec(rng, m) for m in drawn],
                                  devices=study.devices)
        save(path, pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        metadata.append(_metadata_row(study, image, rng))
    if not study.frontal:
        truth += [_truth_row(study, None, fact, False) for fact, _ in facts]
    return metadata, truth, pending


def _truth_row(study: SynthStudy, dicom_id: str | None, fact: Fact, visible: bool) -> dict:
    return {
        "study_id": str(study.study_id), "dicom_id": dicom_id, "target": fact.target,
        "locations": list(fact.locations), "presence": fact.presence, "certainty": fact.certainty,
        "visible": bool(visible),
    }


def _metadata_row(study: SynthStudy, image: SynthImage, rng: np.random.Generator) -> dict:
    procedure = study.context.examination
    if image.view == "AP":
        orientation = pick_weighted(rng, (("Erect", 0.5), ("Recumbent", 0.3), ("", 0.2)))
    else:
        orientation = "Erect"
    processing = PROCESSING[image.view]
    return {
        "dicom_id": image.dicom_id, "subject_id": study.subject_id, "study_id": study.study_id,
        "PerformedProcedureStepDescription": procedure, "ViewPosition": image.view,
        "Rows": image.rows, "Columns": image.columns, "StudyDate": study.date, "StudyTime": study.time,
        "AcquisitionDeviceProcessingDescription": processing[int(rng.integers(len(processing)))],
        "ProcedureCodeSequence_CodeMeaning": procedure, "ViewCodeSequence_CodeMeaning": VIEW_CODE[image.view],
        "PatientOrientationCodeSequence_CodeMeaning": orientation,
    }


def synthesize_corpus(root: Path, n_studies: int, seed: int = 0) -> dict:
    """Write a synthetic corpus of `n_studies` studies under `root` (see the module docstring).

    Deterministic: the same (n_studies, seed) gives byte-identical files. Existing files with the
    same names are overwritten; nothing else under `root` is touched. Returns counts: studies,
    images, frontal, reports, ground_truth_findings (rows), visible_masks (lesion mask files).
    """
    root = Path(root)
    studies = plan_corpus(n_studies, seed)
    metadata: list[dict] = []
    truth: list[dict] = []
    # one encoder thread: PNG/JPEG encoding (which releases the GIL) overlaps the next study's
    # drawing; at most one study's files wait in memory
    with ThreadPoolExecutor(max_workers=1) as writer:
        waiting: list[Future] = []
        for study in studies:
            rows, facts, pending = _write_study(root, study, seed, writer)
            for done in waiting:
                done.result()
            waiting = pending
            metadata += rows
            truth += facts
        for done in waiting:
            done.result()

    root.mkdir(parents=True, exist_ok=True)
    gzip = {"method": "gzip", "mtime": 0}  # no timestamp in the gzip header: byte-identical reruns
    meta = pd.DataFrame(metadata, columns=list(METADATA_COLUMNS)).sort_values(["subject_id", "study_id", "dicom_id"])
    meta.to_csv(root / METADATA_FILE, index=False, compression=gzip)
    split = pd.DataFrame(
        [{"dicom_id": r["dicom_id"], "study_id": r["study_id"], "subject_id": r["subject_id"], "split": s.split}
         for s in studies for r in metadata if r["study_id"] == s.study_id],
        columns=list(SPLIT_COLUMNS),
    ).sort_values(["subject_id", "study_id", "dicom_id"])
    split.to_csv(root / SPLIT_FILE, index=False, compression=gzip)
    (root / "ground_truth").mkdir(parents=True, exist_ok=True)
    schema = with_version(GROUND_TRUTH_FINDINGS, "ground_truth_findings")
    pq.write_table(pa.Table.from_pylist(truth, schema=schema), root / "ground_truth" / "findings.parquet")
    return {
        "studies": len(studies),
        "images": len(metadata),
        "frontal": sum(len(s.frontal) for s in studies),
        "reports": len(studies),
        "ground_truth_findings": len(truth),
        "visible_masks": len({(row["dicom_id"], row["target"]) for row in truth if row["visible"]}),
    }
