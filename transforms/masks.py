"""Mask encoding: COCO compressed RLE (pycocotools), content-hash ids, boxes, resizing; and the mask geometry the
vision backends and the phantom share."""
from __future__ import annotations

import hashlib

import cv2
import numpy as np
from pycocotools import mask as coco_mask

INSIDE_LEVEL = 128  # a resized 0/255 mask pixel at or above this level is inside the mask


def encode_rle(mask: np.ndarray) -> str:
    """COCO compressed RLE counts of a bool HxW mask, as a string."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle["counts"].decode("ascii")


def _reach(first: int, last: int, n_source: int, n_target: int) -> tuple[int, int]:
    """Target index range [start, stop) that linear resizing can light from source indices first..last.

    A target pixel t reads source pixels floor((t + 0.5) * s - 0.5) and the next (s = n_source / n_target);
    two pixels of slack cover the float rounding of that position."""
    scale = n_source / n_target
    start = int(np.floor((first - 0.5) / scale - 0.5)) - 2
    stop = int(np.ceil((last + 1.5) / scale - 0.5)) + 2
    return max(0, start), min(n_target, stop)


def _run_counts(window: np.ndarray, row0: int, col0: int, n_columns: int, n_pixels: int) -> np.ndarray:
    """COCO RLE counts of a row-major image of `n_pixels` whose only set pixels lie in `window` at (row0, col0)."""
    padded = np.zeros((window.shape[0], window.shape[1] + 2), bool)
    padded[:, 1:-1] = window
    changes = padded[:, 1:] != padded[:, :-1]
    # row-major, so the run boundaries come out sorted (a flat scan of bools is far cheaper than a 2-D one)
    rows, cols = np.divmod(np.flatnonzero(changes), changes.shape[1])
    edges = (rows + row0) * n_columns + (cols + col0)
    # a run that ends at a row's last column and one that starts at the next row's first are one run
    touching = np.flatnonzero(edges[1:] == edges[:-1])
    edges = np.delete(edges, np.concatenate([touching, touching + 1]))
    if len(edges) and edges[-1] == n_pixels:  # the last run reaches the end: no trailing empty run
        edges = edges[:-1]
    return np.diff(np.concatenate([[0], edges, [n_pixels]])).astype(np.uint32)


def encode_resized(mask: np.ndarray, height: int, width: int) -> tuple[str, int, list[int]]:
    """(RLE counts, area, [x, y, w, h]) of `mask` at (height, width): `resize_mask(mask.T, width, height).T`.

    The mask is resized transposed, so that its rows are the columns COCO's RLE runs along; only the window
    that the mask's source pixels can reach is thresholded and scanned for runs (lesion masks cover a few
    per cent of a radiograph), and pycocotools compresses the counts. Area and box come from the RLE.
    """
    transposed = np.ascontiguousarray(mask.T, dtype=bool)
    rows, cols = np.flatnonzero(transposed.any(axis=1)), np.flatnonzero(transposed.any(axis=0))
    if len(rows):
        if transposed.shape == (width, height):
            (row0, row1), (col0, col1) = (rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)
            window = transposed[row0:row1, col0:col1]
        else:
            row0, row1 = _reach(rows[0], rows[-1], transposed.shape[0], width)
            col0, col1 = _reach(cols[0], cols[-1], transposed.shape[1], height)
            window = _resized_levels(transposed, width, height)[row0:row1, col0:col1] >= INSIDE_LEVEL
        counts = _run_counts(window, row0, col0, height, height * width)
    else:
        counts = np.array([height * width], np.uint32)
    rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    x, y, w, h = coco_mask.toBbox(rle)
    return rle["counts"].decode("ascii"), int(coco_mask.area(rle)), [int(x), int(y), int(w), int(h)]


def decode_rle(counts: str, height: int, width: int) -> np.ndarray:
    return coco_mask.decode({"size": [height, width], "counts": counts.encode("ascii")}).astype(bool)


def mask_id(dicom_id: str, target: str, height: int, width: int, rle: str) -> str:
    """Content hash: the same mask of the same lesion type on the same image has the same id."""
    payload = f"{dicom_id}|{target}|{height}x{width}|{rle}".encode()
    return hashlib.sha256(payload).hexdigest()[:24]


def bbox_xywh(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _resized_levels(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """The mask as 0/255, resized linearly to (height, width): pixels at `INSIDE_LEVEL` or above are inside."""
    return cv2.resize(mask.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bool mask to (height, width); smooth upsampling (linear, then threshold) keeps edges from going blocky."""
    if mask.shape == (height, width):
        return mask.astype(bool)
    return _resized_levels(mask, height, width) >= INSIDE_LEVEL


def ramp(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """0 below `low`, 1 above `high`, linear between."""
    return np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)


def mirrored_columns(mask: np.ndarray, axis_twice: float) -> np.ndarray:
    """The mask reflected about the column `axis_twice / 2` (twice the axis, so a half-column axis stays exact);
    columns whose reflection falls outside the image are empty."""
    width = mask.shape[1]
    source = np.round(axis_twice - np.arange(width)).astype(int)
    inside = (source >= 0) & (source < width)
    mirrored = np.zeros_like(mask)
    mirrored[:, inside] = mask[:, source[inside]]
    return mirrored


def lowest_rows(mask: np.ndarray) -> np.ndarray:
    """Per column, the row of the mask's lowest pixel; -1 in columns the mask does not reach."""
    return np.where(mask.any(axis=0), mask.shape[0] - 1 - np.argmax(mask[::-1], axis=0), -1)


def below_lowest(mask: np.ndarray) -> np.ndarray:
    """The pixels below the mask's lowest pixel in each column it reaches (none in the columns it does not)."""
    lowest = lowest_rows(mask)
    return (np.arange(mask.shape[0])[:, None] > lowest[None, :]) & (lowest[None, :] >= 0)


def disk(diameter: float) -> np.ndarray:
    """A disk structuring element of odd size (at least 3): an even-sized kernel's anchor is off centre, which
    shifts every edge it touches."""
    size = max(3, int(round(diameter)) | 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def dilate(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """`mask` grown by a disc of `radius_px`: a distance transform costs the same for any radius (a disc
    kernel's cost grows with its area, and regions are dilated by tens of pixels). The 5x5 chamfer
    approximates Euclidean distance within 2 %, at a third of the exact transform's cost."""
    if radius_px <= 0:
        return mask.astype(bool)
    outside = (~mask.astype(bool)).astype(np.uint8)
    return cv2.distanceTransform(outside, cv2.DIST_L2, 5) <= radius_px


def row_borders(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of a mask: whether it has pixels, its first and its last column (0 and width-1 where it has none)."""
    return mask.any(axis=1), np.argmax(mask, axis=1), mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)


def gap_between(right_lung: np.ndarray, left_lung: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """Pixels between the right lung's medial (largest x) and the left lung's medial (smallest x) border."""
    gap = np.zeros_like(right_lung)
    top, bottom = max(top, 0), min(bottom, gap.shape[0] - 1)
    (right_has, _, right_last), (left_has, left_first, _) = (row_borders(right_lung[top : bottom + 1]),
                                                            row_borders(left_lung[top : bottom + 1]))
    columns = np.arange(gap.shape[1])[None, :]
    gap[top : bottom + 1] = ((columns > right_last[:, None]) & (columns < left_first[:, None])
                             & (right_has & left_has)[:, None])
    return gap


def masked_gaussian(image: np.ndarray, mask: np.ndarray, sigma: float, sigma_x: float | None = None) -> np.ndarray:
    """Gaussian mean of `image` over `mask` only (normalised convolution); 0 where the mask has no support."""
    weights = mask.astype(np.float32)
    sx = sigma if sigma_x is None else sigma_x
    numerator = cv2.GaussianBlur(image * weights, (0, 0), sigmaX=sx, sigmaY=sigma)
    denominator = cv2.GaussianBlur(weights, (0, 0), sigmaX=sx, sigmaY=sigma)
    return np.where(denominator > 1e-3, numerator / np.maximum(denominator, 1e-3), 0.0).astype(np.float32)
