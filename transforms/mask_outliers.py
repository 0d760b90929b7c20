"""Odd masks surface for review: simple shape descriptors per mask, HDBSCAN outlier scores per lesion type.

The descriptors need no anatomy model (the run directory stores none): position and coverage are
measured on a fixed image grid (2 sides × 4 bands apex→base), a stand-in for the lung zones that is
good enough to tell a basal effusion mask from one drawn over the apex.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as coco_mask

GRID_ROWS, GRID_COLUMNS = 4, 2
DESCRIPTOR_NAMES: tuple[str, ...] = (
    "area_fraction",
    "centroid_x",
    "centroid_y",
    "bbox_log_aspect",
    "bbox_fill",
    *(f"grid_r{row}c{column}" for row in range(GRID_ROWS) for column in range(GRID_COLUMNS)),
)


@dataclass(frozen=True)
class OutlierScore:
    mask_id: str
    target: str
    score: float | None  # HDBSCAN GLOSH outlier score in [0, 1]; None when the type has too few masks
    cluster: int  # HDBSCAN label; -1 is noise
    flagged: bool
    descriptors: dict[str, float]


def mask_descriptors(mask: np.ndarray) -> np.ndarray:
    """Area fraction, centroid (x, y as fractions of the image), log bbox aspect (w/h), bbox fill, grid coverage.

    Grid coverage is the share of the mask in each cell of a 4×2 grid, rows from the top (apex) down,
    columns image-left (patient's right) then image-right. Everything comes from row and column
    sums, so a source-resolution mask costs two passes and no resize.
    """
    height, width = mask.shape
    half = width // GRID_COLUMNS
    halves = [mask[:, :half].sum(axis=1, dtype=np.int64), mask[:, half:].sum(axis=1, dtype=np.int64)]
    rows = halves[0] + halves[1]
    columns = mask.sum(axis=0, dtype=np.int64)
    area = int(rows.sum())
    if area == 0:
        return np.zeros(len(DESCRIPTOR_NAMES), np.float64)
    filled_rows, filled_columns = np.flatnonzero(rows), np.flatnonzero(columns)
    box_h = filled_rows[-1] - filled_rows[0] + 1
    box_w = filled_columns[-1] - filled_columns[0] + 1
    band = np.minimum(np.arange(height) * GRID_ROWS // height, GRID_ROWS - 1)
    cells = np.stack([np.bincount(band, weights=side, minlength=GRID_ROWS) for side in halves], axis=1).ravel() / area
    centroid_x = float((np.arange(width) * columns).sum()) / area / width
    centroid_y = float((np.arange(height) * rows).sum()) / area / height
    head = [area / (height * width), centroid_x, centroid_y, float(np.log(box_w / box_h)), area / (box_w * box_h)]
    return np.concatenate([head, cells]).astype(np.float64)


def descriptors_from_rle(rle: str, height: int, width: int) -> np.ndarray:
    return mask_descriptors(coco_mask.decode({"size": [height, width], "counts": rle.encode("ascii")}))


def _standardise(features: np.ndarray) -> np.ndarray:
    """Robust scaling (median, IQR) so no single descriptor dominates the distances."""
    median = np.median(features, axis=0)
    spread = np.subtract(*np.percentile(features, [75, 25], axis=0))
    spread[spread < 1e-6] = 1.0
    return (features - median) / spread


def outlier_scores(features: np.ndarray, min_cluster_size: int, min_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(GLOSH outlier scores, cluster labels) of one lesion type's masks."""
    import hdbscan

    clusterer = hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples,
                                allow_single_cluster=True)
    with warnings.catch_warnings():
        # identical masks give zero distances, which HDBSCAN reports as a warning and scores as NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        clusterer.fit(_standardise(features))
    scores = np.nan_to_num(np.asarray(clusterer.outlier_scores_, np.float64), nan=0.0)
    return scores, np.asarray(clusterer.labels_)


def flag_mask_outliers(masks: list[dict], min_masks: int, min_cluster_size: int, min_samples: int | None,
                       score_threshold: float, max_masks_per_type: int | None = None) -> list[OutlierScore]:
    """Score mask rows (mask_id, target, rle, height, width) against the other masks of their lesion type.

    Types with fewer than `min_masks` masks are described but not scored (too few to say what is normal).
    `max_masks_per_type` bounds the work (decoding is the cost): the masks with the smallest ids, a
    uniform sample since ids are content hashes, are the ones scored.
    """
    by_target: dict[str, list[dict]] = {}
    for row in masks:
        by_target.setdefault(row["target"], []).append(row)
    out: list[OutlierScore] = []
    for target in sorted(by_target):
        rows = sorted(by_target[target], key=lambda r: r["mask_id"])[:max_masks_per_type]
        features = np.stack([descriptors_from_rle(r["rle"], r["height"], r["width"]) for r in rows])
        if len(rows) >= max(min_masks, min_cluster_size + 1):
            scores, labels = outlier_scores(features, min_cluster_size, min_samples)
        else:
            scores, labels = [None] * len(rows), np.full(len(rows), -1)
        for row, vector, score, label in zip(rows, features, scores, labels):
            out.append(OutlierScore(
                mask_id=row["mask_id"], target=target, score=None if score is None else round(float(score), 4),
                cluster=int(label), flagged=score is not None and float(score) >= score_threshold,
                descriptors={name: round(float(v), 4) for name, v in zip(DESCRIPTOR_NAMES, vector)}))
    return out
