"""End-to-end grounding quality on a synthetic corpus, scored against its ground truth (DESIGN.md §6).

    .venv/bin/python bench/eval_grounding.py [--studies 40] [--seed 0] [--config classical]
    .venv/bin/python bench/eval_grounding.py --seed 0 1 2 5             # one table per corpus, then pooled
    .venv/bin/python bench/eval_grounding.py --corpus ROOT --run OUT      # score an existing run
    .venv/bin/python bench/eval_grounding.py --vision-only --seed 0 1 2 5 # the true findings, vision stages only

Per lesion type: visible true lesions reported as definite that became positives (recall; uncertain ones are
neither positives nor negatives by policy), IoU of the positive mask with the true mask, reported-but-invisible
findings that were discarded, positives on images without that lesion, positive pairs whose locations hold at
least 10 % of the true lesion (loc ok), and negatives that the ground truth contradicts. With several seeds, the
counts of all corpora are pooled into a last table: single small corpora move by several points between seeds.

`--vision-only` leaves the reports out: each frontal image's true findings (present; definite ones grounded, hedged
ones as context, each type once per image at its true locations) go through the configured anatomy, lesion prior,
and grounding, at the working size. It separates what the vision stages lose from what report reading loses, and
prints why each missed visible lesion was discarded. Two ablations and a per-finding export go with it:

    .venv/bin/python bench/eval_grounding.py --vision-only --true-anatomy        # the corpus's true lungs, zones, heart
    .venv/bin/python bench/eval_grounding.py --vision-only --degrade gamma=0.6 noise=10 blur=3
    .venv/bin/python bench/eval_grounding.py --vision-only --findings-csv outcomes.csv   # one row per finding

`--true-anatomy` replaces the anatomy model by the corpus's true anatomy masks (no mediastinum or retrocardiac lung:
the phantom draws none), which bounds what a better anatomy model would give. `--degrade` changes each image before
any model sees it (intensity to the power `gamma`; Gaussian `noise` of that many grey levels, drawn from a fixed
seed; Gaussian `blur` of that many pixels at the working size): how much the numbers move when the films are exposed,
processed or resolved differently from the corpus's. `--findings-csv` writes each finding's outcome (grounded, or
the reason it was discarded), with its IoU and how much of the true lesion its mask covers, for looking into misses.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

from anatomy_models.base import load_configured
from pipeline.config import load_config
from pipeline.corpus import index_corpus
from pipeline.run import run_pipeline
from pipeline.synth import synthesize_corpus
from pipeline.writers import read_table
from schemas.config import PipelineConfig
from schemas.vocab import Certainty, LesionType, Presence
from transforms.grounding import Grounding, ImageToGround, ground_images
from transforms.images import decode_for_models
from transforms.masks import decode_rle, resize_mask
from transforms.records import AnatomyResult, Finding


def _png(path: Path) -> np.ndarray | None:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return None if image is None else image > 127


LOCATION_SHARE = 0.1  # as the pipeline's verification: a location holds at least this share of the lesion


def _location_union(corpus: Path, dicom_id: str, locations: list[str], shape: tuple[int, int]) -> np.ndarray:
    region = np.zeros(shape, bool)
    for loc in locations:
        part = _png(corpus / "ground_truth" / "anatomy" / dicom_id / f"{loc}.png")
        if part is not None:
            region |= part
    return region


def score(corpus: Path, run: Path) -> dict[str, dict[str, float]]:
    truth = pq.read_table(corpus / "ground_truth" / "findings.parquet").to_pylist()
    visible = {(r["dicom_id"], r["target"]) for r in truth if r["presence"] == "present" and r["visible"] and r["dicom_id"]}
    # uncertain findings are neither positives nor negatives by policy: recall counts definite ones only
    eligible = {(r["dicom_id"], r["target"]) for r in truth if r["presence"] == "present" and r["visible"]
                and r["certainty"] == "definite" and r["dicom_id"]}
    invisible = {(r["dicom_id"], r["target"]) for r in truth if r["presence"] == "present" and not r["visible"]
                 and r["certainty"] == "definite" and r["dicom_id"]} - visible
    pairs = read_table(str(run), "pairs").to_pylist()
    masks = {m["mask_id"]: m for m in read_table(str(run), "masks").to_pylist()}
    positive_masks: dict[tuple[str, str], np.ndarray] = {}
    for pair in pairs:
        if pair["is_positive"] and pair["instruction_type"] != "lesion_inference":
            m = masks[pair["mask_id"]]
            decoded = decode_rle(m["rle"], m["height"], m["width"])
            key = (pair["dicom_id"], pair["target"])
            positive_masks[key] = positive_masks.get(key, np.zeros_like(decoded)) | decoded
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for dicom, target in eligible:
        row = rows[target]
        row["visible"] += 1
        if (dicom, target) in positive_masks:
            row["grounded"] += 1
            true = _png(corpus / "ground_truth" / "masks" / dicom / f"{target}.png")
            pred = positive_masks[(dicom, target)]
            row["iou_sum"] += float((true & pred).sum() / max((true | pred).sum(), 1)) if true is not None else 0.0
    for dicom, target in invisible:
        rows[target]["invisible"] += 1
        rows[target]["invisible_discarded"] += (dicom, target) not in positive_masks
    for dicom, target in positive_masks:
        rows[target]["positives"] += 1
        rows[target]["false_positive"] += (dicom, target) not in visible
    for pair in pairs:
        if pair["is_positive"] and pair["locations"] and (pair["dicom_id"], pair["target"]) in visible:
            # a positive's location is right when the true lesion has a real share of itself there
            true = _png(corpus / "ground_truth" / "masks" / pair["dicom_id"] / f"{pair['target']}.png")
            region = _location_union(corpus, pair["dicom_id"], pair["locations"], true.shape)
            rows[pair["target"]]["located_pairs"] += 1
            rows[pair["target"]]["located_right"] += bool((true & region).sum() >= LOCATION_SHARE * true.sum())
        if pair["is_positive"]:
            continue
        row = rows[pair["target"]]
        row["negatives"] += 1
        if (pair["dicom_id"], pair["target"]) not in visible:
            continue
        if not pair["locations"]:
            row["contradicted_negatives"] += 1
            continue
        true = _png(corpus / "ground_truth" / "masks" / pair["dicom_id"] / f"{pair['target']}.png")
        region = _location_union(corpus, pair["dicom_id"], pair["locations"], true.shape)
        row["contradicted_negatives"] += bool((true & region).sum() > 0.05 * true.sum())
    return rows


def _true_finding(row: dict) -> Finding:
    return Finding(finding_id=f"{row['dicom_id']}-{row['target']}", report_id=row["study_id"], study_id=row["study_id"],
                   section="truth", sent_idx=0, sentence="", entity=row["target"], presence=row["presence"],
                   certainty=row["certainty"], reported_locations=tuple(row["locations"]), mention=row["target"],
                   char_start=0, char_end=0, structurer="ground truth")


DEGRADATIONS = ("gamma", "noise", "blur")


def degrade(pixels: np.ndarray, gamma: float = 1.0, noise: float = 0.0, blur: float = 0.0) -> np.ndarray:
    """The uint8 image with its intensities raised to `gamma`, Gaussian noise of `noise` grey levels added (a fixed
    seed, so every run sees the same films) and a Gaussian blur of `blur` pixels."""
    out = 255.0 * (pixels.astype(np.float32) / 255.0) ** gamma
    if noise > 0:
        out += np.random.default_rng(0).normal(0.0, noise, out.shape)
    if blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def true_anatomy(corpus: Path, dicom_id: str, shape: tuple[int, int]) -> AnatomyResult:
    """The corpus's true anatomy masks of one image (lungs, zones, heart), at `shape`."""
    folder = corpus / "ground_truth" / "anatomy" / dicom_id
    masks = {path.stem: resize_mask(_png(path), *shape) for path in sorted(folder.glob("*.png"))}
    return AnatomyResult(masks=masks, confidence=dict.fromkeys(masks, 1.0), backend="ground truth", version="synthetic")


def score_vision_only(corpus: Path, config: PipelineConfig, use_true_anatomy: bool = False,
                      degradation: dict[str, float] | None = None,
                      outcomes: list[dict] | None = None) -> dict[str, dict[str, float]]:
    """Recall, IoU (at the working size) and invisible findings discarded, from the true findings of each frontal image.

    `use_true_anatomy`: the corpus's anatomy masks instead of the anatomy model's; `degradation`: `degrade`'s options,
    applied to each image first; `outcomes`, when given, gets one row per finding (`OUTCOME_COLUMNS`)."""
    truth = pq.read_table(corpus / "ground_truth" / "findings.parquet").to_pylist()
    images = {image.dicom_id: image for study in index_corpus(corpus, config.corpus).studies for image in study.images}
    by_image: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in truth:
        if row["dicom_id"] and row["presence"] == Presence.PRESENT.value:
            kept = by_image[row["dicom_id"]].get(row["target"])
            if kept is None or (kept["certainty"] != Certainty.DEFINITE.value and row["certainty"] == Certainty.DEFINITE.value):
                by_image[row["dicom_id"]][row["target"]] = row  # one lesion per type per image, definite if reported so

    anatomy_model = None if use_true_anatomy else load_configured(config, "anatomy")
    prior_model, refiner = load_configured(config, "lesion_prior"), load_configured(config, "refiner")
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for dicom_id, by_type in sorted(by_image.items()):
        image = images[dicom_id]
        pixels, _ = decode_for_models(corpus / image.path, config.vision.work_size)
        if degradation:
            pixels = degrade(pixels, **degradation)
        if use_true_anatomy:
            anatomy = true_anatomy(corpus, dicom_id, pixels.shape)
        else:
            (anatomy,) = anatomy_model.segment([pixels])
        (prior,) = prior_model.predict([pixels], [anatomy])
        findings = [_true_finding(r) for r in by_type.values() if r["certainty"] == Certainty.DEFINITE.value]
        suspected = [_true_finding(r) for r in by_type.values() if r["certainty"] != Certainty.DEFINITE.value]
        (groundings,) = ground_images([ImageToGround(findings, anatomy, prior, pixels, image.view_position, suspected)],
                                      refiner, config.grounding)
        for grounding in groundings:
            target = grounding.finding.entity
            true = (resize_mask(_png(corpus / "ground_truth" / "masks" / dicom_id / f"{target}.png"), *pixels.shape)
                    if by_type[target]["visible"] else None)
            outcome = true_finding_outcome(grounding, true, rows[target])
            if outcomes is not None:
                outcomes.append({"dicom_id": dicom_id, **outcome})
    return rows


def true_finding_outcome(grounding: Grounding, true: np.ndarray | None, row: dict[str, float]) -> dict:
    """Counts one grounded true finding into its lesion type's table row and returns its outcome (`OUTCOME_COLUMNS`
    but corpus and dicom_id). `true`: the lesion's true mask at the working size; None where the image does not
    show the lesion (a finding that should be discarded)."""
    outcome = {"target": grounding.finding.entity, "visible": true is not None,
               "locations": ";".join(grounding.finding.reported_locations),
               "outcome": "grounded" if grounding.mask is not None else grounding.discard.value,
               "stage": "" if grounding.mask is not None else grounding.stage.value,
               "iou": None, "mask_over_true_area": None, "true_covered": None}
    if true is None:
        row["invisible"] += 1
        row["invisible_discarded"] += grounding.mask is None
        return outcome
    row["visible"] += 1
    if grounding.mask is None:
        row[f"missed: {grounding.discard.value}"] += 1
        return outcome
    row["grounded"] += 1
    overlap, true_area = float((true & grounding.mask).sum()), max(float(true.sum()), 1.0)
    iou = overlap / max(float((true | grounding.mask).sum()), 1.0)
    row["iou_sum"] += iou
    outcome.update(iou=round(iou, 4), mask_over_true_area=round(float(grounding.mask.sum()) / true_area, 4),
                   true_covered=round(overlap / true_area, 4))
    return outcome


OUTCOME_COLUMNS = ("corpus", "dicom_id", "target", "visible", "locations", "outcome", "stage", "iou",
                   "mask_over_true_area", "true_covered")


def write_outcomes(path: Path, outcomes: list[dict]) -> None:
    """One CSV row per finding: grounded (with its IoU, its mask's area over the true lesion's, and the share of the
    true lesion it covers: a small mask inside the lesion and a large one around it have the same IoU) or the reason
    it was discarded."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=OUTCOME_COLUMNS)
        writer.writeheader()
        writer.writerows(outcomes)


def print_vision_table(rows) -> None:
    print(f"{'lesion':<14}{'visible':>8}{'recall':>8}{'mIoU':>7}{'invis.':>8}{'discard%':>9}  missed visible, by reason")
    totals: dict[str, float] = defaultdict(float)
    for target in [t.value for t in LesionType] + ["all"]:
        r = totals if target == "all" else rows.get(target, {})
        if target != "all":
            for k, v in r.items():
                totals[k] += v
        vis, grounded, inv = r.get("visible", 0), r.get("grounded", 0), r.get("invisible", 0)
        missed = {k.split(": ")[1]: int(v) for k, v in sorted(r.items()) if k.startswith("missed: ")}
        print(f"{target:<14}{vis:>8.0f}{grounded / vis if vis else float('nan'):>8.2f}"
              f"{r.get('iou_sum', 0) / grounded if grounded else float('nan'):>7.2f}{inv:>8.0f}"
              f"{100 * r.get('invisible_discarded', 0) / inv if inv else float('nan'):>9.0f}  "
              f"{', '.join(f'{k} {v}' for k, v in missed.items())}")


def print_table(rows) -> None:
    header = (f"{'lesion':<14}{'visible':>8}{'recall':>8}{'mIoU':>7}{'invis.':>8}{'discard%':>9}{'pos':>6}{'FP%':>6}"
              f"{'loc ok%':>8}{'neg':>6}{'bad neg':>8}")
    print(header)
    totals = defaultdict(float)
    for target in [t.value for t in LesionType]:
        r = rows.get(target, {})
        for k, v in r.items():
            totals[k] += v
        _line(target, r)
    print("-" * len(header))
    _line("all", totals)


def _line(name: str, r) -> None:
    vis, grounded = r.get("visible", 0), r.get("grounded", 0)
    recall = grounded / vis if vis else float("nan")
    miou = r.get("iou_sum", 0) / grounded if grounded else float("nan")
    inv = r.get("invisible", 0)
    disc = 100 * r.get("invisible_discarded", 0) / inv if inv else float("nan")
    pos = r.get("positives", 0)
    fp = 100 * r.get("false_positive", 0) / pos if pos else float("nan")
    located = r.get("located_pairs", 0)
    loc_ok = 100 * r.get("located_right", 0) / located if located else float("nan")
    print(f"{name:<14}{vis:>8.0f}{recall:>8.2f}{miou:>7.2f}{inv:>8.0f}{disc:>9.0f}{pos:>6.0f}{fp:>6.0f}"
          f"{loc_ok:>8.0f}{r.get('negatives', 0):>6.0f}{r.get('contradicted_negatives', 0):>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    parser.add_argument("--config", default="classical")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--vision-only", action="store_true", help="ground the true findings; no report reading")
    parser.add_argument("--true-anatomy", action="store_true",
                        help="with --vision-only: the corpus's true anatomy masks")
    parser.add_argument("--degrade", nargs="+", default=[], metavar="KEY=VALUE",
                        help=f"with --vision-only: change each image first ({', '.join(DEGRADATIONS)})")
    parser.add_argument("--findings-csv", type=Path,
                        help="with --vision-only: write each finding's outcome, IoU and coverage to this CSV")
    args = parser.parse_args()
    if (args.true_anatomy or args.degrade or args.findings_csv) and not args.vision_only:
        parser.error("--true-anatomy, --degrade and --findings-csv go with --vision-only")
    degradation = {}
    for item in args.degrade:
        key, _, value = item.partition("=")
        try:
            if key not in DEGRADATIONS:
                raise ValueError(key)
            degradation[key] = float(value)
        except ValueError:
            parser.error(f"--degrade takes KEY=NUMBER with KEY one of {', '.join(DEGRADATIONS)}, not {item!r}")

    config = load_config(args.config, args.set)
    outcomes: list[dict] = []

    def vision_only(corpus: Path, name: str) -> dict[str, dict[str, float]]:
        found: list[dict] = []
        rows = score_vision_only(corpus, config.config, args.true_anatomy, degradation, found)
        outcomes.extend({"corpus": name, **outcome} for outcome in found)
        return rows

    table = print_vision_table if args.vision_only else print_table
    if args.corpus and (args.run or args.vision_only):
        table(vision_only(args.corpus, str(args.corpus)) if args.vision_only else score(args.corpus, args.run))
        if args.findings_csv:
            write_outcomes(args.findings_csv, outcomes)
        return
    pooled: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for seed in args.seed:
        with tempfile.TemporaryDirectory() as tmp:
            corpus, run = Path(tmp) / "corpus", Path(tmp) / "run"
            synthesize_corpus(corpus, args.studies, seed=seed)
            if args.vision_only:
                rows = vision_only(corpus, f"seed {seed}")
            else:
                run_pipeline(corpus, run, config, overwrite=True)
                rows = score(corpus, run)
            print(f"{args.studies} synthetic studies, seed {seed}, config {args.config} {' '.join(args.set)}"
                  f"{' (vision only)' if args.vision_only else ''}{' (true anatomy)' if args.true_anatomy else ''}"
                  f"{' degraded: ' + ' '.join(args.degrade) if args.degrade else ''}")
            table(rows)
        for target, row in rows.items():
            for key, value in row.items():
                pooled[target][key] += value
    if len(args.seed) > 1:
        print(f"pooled: {len(args.seed)} corpora of {args.studies} studies, seeds {' '.join(map(str, args.seed))}")
        table(pooled)
    if args.findings_csv:
        write_outcomes(args.findings_csv, outcomes)
        print(f"{len(outcomes)} findings' outcomes written to {args.findings_csv}")


if __name__ == "__main__":
    main()
