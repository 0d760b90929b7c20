"""Lung-field Dice of the anatomy backends on real radiographs, per-structure Dice on phantoms, and their speed.

    .venv/bin/python bench/eval_anatomy.py [--data ../shared/data/cxr-lungs-dev] [--backends classical cxas pspnet]
                                           [--input-size 512] [--weights-dir DIR] [--per-image]
                                           [--phantoms 40] [--phantom-seed 0] [--corpus ROOT]

Ground truth: the V7 Labs lung masks shipped in torchxrayvision (`data/semantic_masks_v7labs_lungs.zip`),
one label for both lungs, resized to the image with nearest neighbour, foreground >= 128 (see the data
folder's README). Each image is given to the backend at `--input-size` px on its long side (the
pipeline's work size) and the predicted masks are resized back to the image to score.

Printed per backend: Dice of the lung union (mean/median/min, and per image with --per-image), Dice of
each side (the ground truth's two lungs are told apart by connected components: the one on the image
left is the patient's right lung), whether the predicted right lung lies left of the left lung in the
image, and ms/image at the input size and at 1024 px on one CPU thread. Backends whose weights are
missing are reported as skipped.

Phantoms: the frontal images of a synthetic corpus (`mimic-ils synth`, written to a temporary folder with
`--phantoms` studies and `--phantom-seed`, or an existing one with `--corpus`), with the lesions, devices
and views the corpus draws, scored against its true anatomy (ground_truth/anatomy/): Dice of each lung
and the heart, and the error of the cardiothoracic ratio the grounding computes from the predicted heart
and lungs (predicted minus true), for normal hearts and for hearts drawn enlarged (visible cardiomegaly).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import torchxrayvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anatomy_models.classical_anatomy import ClassicalAnatomy  # noqa: E402
from anatomy_models.cxas import CxasAnatomy  # noqa: E402
from anatomy_models.pspnet import PspnetAnatomy  # noqa: E402
from anatomy_models.weights import MissingWeightsError  # noqa: E402
from schemas.vocab import Location  # noqa: E402

BACKENDS = {"classical": ClassicalAnatomy, "cxas": CxasAnatomy, "pspnet": PspnetAnatomy}
MASK_ARCHIVE = Path(torchxrayvision.__file__).parent / "data" / "semantic_masks_v7labs_lungs.zip"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-lungs-dev"


def load_lung_dev_set(root: Path) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(image name, view, uint8 image, bool lung mask at the image's size) for every manifest row."""
    cases = []
    with zipfile.ZipFile(MASK_ARCHIVE) as archive, open(root / "manifest.csv", newline="") as manifest:
        for row in csv.DictReader(manifest):
            image = cv2.imread(str(root / "images" / row["image"]), cv2.IMREAD_GRAYSCALE)
            encoded = np.frombuffer(archive.read(row["mask_member"]), np.uint8)
            mask = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST) >= 128
            cases.append((row["image"], row["view"], image, mask))
    return cases


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    total = predicted.sum() + truth.sum()
    return float(2 * (predicted & truth).sum() / total) if total else 1.0


def split_sides(lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patient's right, patient's left) lung of a one-label mask: its two largest components, by image side."""
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(lungs.astype(np.uint8))
    largest = sorted(range(1, count), key=lambda label: stats[label, cv2.CC_STAT_AREA], reverse=True)[:2]
    largest.sort(key=lambda label: centroids[label][0])
    if len(largest) < 2:
        empty = np.zeros_like(lungs)
        return (labels == largest[0], empty) if largest else (empty, empty)
    return labels == largest[0], labels == largest[1]


def resize_long_side(image: np.ndarray, size: int) -> np.ndarray:
    if size <= 0:
        return image
    scale = size / max(image.shape)
    shape = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, shape, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def to_size(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def ms_per_image(backend, images: list[np.ndarray], size: int, repeats: int = 1) -> float:
    batch = [resize_long_side(image, size) for image in images]
    start = time.perf_counter()
    for _ in range(repeats):
        backend.segment(batch)
    return (time.perf_counter() - start) * 1000 / (len(batch) * repeats)


def evaluate(name: str, backend, cases, input_size: int, per_image: bool) -> None:
    rows = []
    for image_name, view, image, truth in cases:
        result = backend.segment([resize_long_side(image, input_size)])[0]
        lung = to_size(result.masks[Location.LUNG.value], truth.shape)
        right = to_size(result.masks[Location.RIGHT_LUNG.value], truth.shape)
        left = to_size(result.masks[Location.LEFT_LUNG.value], truth.shape)
        true_right, true_left = split_sides(truth)
        right_x = np.nonzero(right)[1].mean() if right.any() else np.nan
        left_x = np.nonzero(left)[1].mean() if left.any() else np.nan
        rows.append(
            dict(
                image=image_name,
                view=view,
                lung=dice(lung, truth),
                right=dice(right, true_right),
                left=dice(left, true_left),
                sides_ok=bool(right_x < left_x),
                confidence=result.confidence[Location.LUNG.value],
            )
        )
    if per_image:
        print(f"{'image':34s} {'view':10s} {'lung':>6s} {'right':>6s} {'left':>6s} {'sides':>5s} {'conf':>5s}")
        for row in rows:
            print(
                f"{row['image']:34s} {row['view']:10s} {row['lung']:6.3f} {row['right']:6.3f} {row['left']:6.3f} "
                f"{'ok' if row['sides_ok'] else 'SWAP':>5s} {row['confidence']:5.2f}"
            )
    for key, label in (("lung", "lung union"), ("right", "right lung"), ("left", "left lung")):
        values = [row[key] for row in rows]
        print(
            f"{name:10s} {label:11s} Dice  mean {statistics.mean(values):.3f}  median {statistics.median(values):.3f}  "
            f"min {min(values):.3f}  (n={len(values)})"
        )
    print(f"{name:10s} sides in image convention (right lung left of left lung): {sum(r['sides_ok'] for r in rows)}/{len(rows)}")
    images = [image for _, _, image, _ in cases]
    for size in sorted({input_size, 1024} - {0}):
        print(f"{name:10s} speed at {size} px, 1 CPU thread: {ms_per_image(backend, images, size):.1f} ms/image")


def phantom_cases(root: Path) -> Iterator[tuple[str, bool, np.ndarray, dict[str, np.ndarray]]]:
    """(dicom id, heart drawn enlarged, image, true masks of the lungs and heart) per frontal image of a synthetic
    corpus, read one at a time (full-size masks of a whole corpus do not fit in memory)."""
    import pyarrow.parquet as pq

    truth = pq.read_table(root / "ground_truth" / "findings.parquet").to_pylist()
    enlarged = {row["dicom_id"] for row in truth if row["target"] == "cardiomegaly" and row["visible"]}
    images = {path.stem: path for path in (root / "files").rglob("*.jpg")}
    names = (Location.RIGHT_LUNG.value, Location.LEFT_LUNG.value, Location.LUNG.value, Location.HEART.value)
    for folder in sorted((root / "ground_truth" / "anatomy").iterdir()):
        masks = {name: cv2.imread(str(folder / f"{name}.png"), cv2.IMREAD_GRAYSCALE) > 127 for name in names}
        yield folder.name, folder.name in enlarged, cv2.imread(str(images[folder.name]), cv2.IMREAD_GRAYSCALE), masks


def evaluate_phantoms(name: str, backend, cases, input_size: int) -> None:
    from transforms.grounding import cardiothoracic_ratio
    from transforms.records import AnatomyResult

    def ratio(masks: dict[str, np.ndarray]) -> float:
        value = cardiothoracic_ratio(AnatomyResult(masks=masks, confidence={}, backend="", version=""))
        return float("nan") if value is None else value

    structures = (Location.RIGHT_LUNG.value, Location.LEFT_LUNG.value, Location.HEART.value)
    scores = {s: [] for s in structures}
    ratio_errors = {False: [], True: []}
    for _, enlarged, image, truth in cases:
        result = backend.segment([resize_long_side(image, input_size)])[0]
        predicted = {s: to_size(result.masks[s], image.shape) for s in (*structures, Location.LUNG.value)}
        for structure in structures:
            scores[structure].append(dice(predicted[structure], truth[structure]))
        ratio_errors[enlarged].append(ratio(predicted) - ratio(truth))
    for structure, values in scores.items():
        print(f"{name:10s} phantom {structure:11s} Dice  mean {statistics.mean(values):.3f}  "
              f"min {min(values):.3f}  (n={len(values)})")
    for enlarged, errors in ratio_errors.items():
        if errors:
            errors = np.asarray(errors)
            print(f"{name:10s} phantom CTR error, {'enlarged' if enlarged else 'normal':8s} hearts: mean {np.nanmean(errors):+.3f}  "
                  f"mean |error| {np.nanmean(np.abs(errors)):.3f}  max |error| {np.nanmax(np.abs(errors)):.3f}  (n={errors.size})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--input-size", type=int, default=512, help="long side given to the backend (0: as stored)")
    parser.add_argument("--weights-dir", default=None, help="weights folder for cxas/pspnet (default: torchxrayvision's cache)")
    parser.add_argument("--per-image", action="store_true")
    parser.add_argument("--phantoms", type=int, default=40,
                        help="studies of the synthetic corpus whose frontal images are scored (0: none)")
    parser.add_argument("--phantom-seed", type=int, default=0)
    parser.add_argument("--corpus", type=Path, default=None, help="score this synthetic corpus instead of writing one")
    args = parser.parse_args()

    if not (args.data / "manifest.csv").is_file():
        sys.exit(f"no dev set at {args.data} (expected manifest.csv and images/)")
    cases = load_lung_dev_set(args.data)
    with tempfile.TemporaryDirectory() as folder:
        corpus = args.corpus
        if corpus is None and args.phantoms > 0:
            from pipeline.synth import synthesize_corpus

            corpus = Path(folder)
            synthesize_corpus(corpus, args.phantoms, seed=args.phantom_seed)
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        for name in args.backends:
            options = {} if name == "classical" else {"weights_dir": args.weights_dir}
            try:
                backend = BACKENDS[name](**options)
                backend.load()
            except MissingWeightsError as error:
                print(f"{name:10s} skipped: {error}")
                continue
            evaluate(name, backend, cases, args.input_size, args.per_image)
            if corpus is not None:
                evaluate_phantoms(name, backend, phantom_cases(corpus), args.input_size)

if __name__ == "__main__":
    main()
