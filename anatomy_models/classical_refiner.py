"""Weight-free mask refinement: GrabCut seeded by the candidate box and its prior component.

The prior is smooth (it averages ribs away), so its component is only roughly where the lesion is;
GrabCut re-learns the lesion's and the surrounding lung's intensity distributions from that rough
labelling and moves the outline onto the lesion's edges. Outside a margin around the box is certain
background; the seed's core is certain lesion, the rest of the seed probable lesion, the rest of the
box probable background.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from anatomy_models.base import MaskRefiner, register
from transforms.masks import disk
from transforms.records import Box, RefinedMask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes are background regions not connected to the crop's border."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    return (mask | (flood[1:-1, 1:-1] == 0)).astype(bool)


@register("refiner", "classical")
class GrabCutRefiner(MaskRefiner):
    """Options: lengths are fractions of the box's longer side unless said otherwise."""

    version = "1"

    def __init__(
        self,
        iterations: int = 4,
        box_margin: float = 0.15,  # ring around the box that may still be lesion (boxes come from a smooth prior)
        min_margin: float = 0.02,  # that ring is at least this wide, as a fraction of the image's long side
        core_erosion: float = 0.15,  # the seed eroded by this much is certain lesion
        smoothing_sigma: float = 1.0,  # pixels; denoises before the colour models are fitted
        min_seed_pixels: int = 16,
        max_crop_side: int = 128,  # pixels; larger crops are labelled at this size (GrabCut's cost is per pixel)
    ) -> None:
        self.iterations = iterations
        self.box_margin = box_margin
        self.min_margin = min_margin
        self.core_erosion = core_erosion
        self.smoothing_sigma = smoothing_sigma
        self.min_seed_pixels = min_seed_pixels
        self.max_crop_side = max_crop_side

    def refine(self, image: np.ndarray, boxes: Sequence[Box], seeds: Sequence[np.ndarray]) -> list[RefinedMask]:
        if len(boxes) != len(seeds):
            raise ValueError(f"{len(boxes)} boxes but {len(seeds)} seeds")
        gray = image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)
        if self.smoothing_sigma > 0:
            gray = cv2.GaussianBlur(gray, (0, 0), self.smoothing_sigma)
        return [self._refine_one(gray, box, seed.astype(bool)) for box, seed in zip(boxes, seeds)]

    def _refine_one(self, gray: np.ndarray, box: Box, seed: np.ndarray) -> RefinedMask:
        height, width = gray.shape
        side = max(box.x1 - box.x0, box.y1 - box.y0, 1)
        margin = int(round(max(self.box_margin * side, self.min_margin * max(height, width))))
        # Work on a crop: GrabCut's cost grows with the pixels it labels.
        cx0, cy0 = max(0, box.x0 - 2 * margin - 2), max(0, box.y0 - 2 * margin - 2)
        cx1, cy1 = min(width, box.x1 + 2 * margin + 2), min(height, box.y1 + 2 * margin + 2)
        crop = gray[cy0:cy1, cx0:cx1]
        crop_seed = seed[cy0:cy1, cx0:cx1]
        labels = np.full(crop.shape, cv2.GC_BGD, np.uint8)
        labels[max(0, box.y0 - margin - cy0): box.y1 + margin - cy0, max(0, box.x0 - margin - cx0): box.x1 + margin - cx0] = cv2.GC_PR_BGD
        in_box = np.zeros(crop.shape, bool)
        in_box[box.y0 - cy0: box.y1 - cy0, box.x0 - cx0: box.x1 - cx0] = True
        seed_in_box = crop_seed & in_box
        labels[seed_in_box] = cv2.GC_PR_FGD
        radius = int(round(self.core_erosion * side))
        core = cv2.erode(seed_in_box.astype(np.uint8), disk(2 * radius + 1)).astype(bool) if radius else seed_in_box
        labels[core] = cv2.GC_FGD

        full = np.zeros((height, width), bool)
        if seed_in_box.sum() < self.min_seed_pixels or (labels == cv2.GC_BGD).all():
            full[cy0:cy1, cx0:cx1] = seed_in_box
            return RefinedMask(mask=full, score=0.0)
        try:
            lesion = self._grabcut(crop, labels)
        except cv2.error:
            # GrabCut needs both labels to have samples; a seed covering the whole crop has no background.
            full[cy0:cy1, cx0:cx1] = seed_in_box
            return RefinedMask(mask=full, score=0.0)
        # Keep the parts that touch the seed: GrabCut may also pick look-alike patches elsewhere in the crop.
        _, components = cv2.connectedComponents(lesion.astype(np.uint8), connectivity=8)
        touching = np.unique(components[lesion & seed_in_box])
        lesion = fill_holes(np.isin(components, touching[touching > 0]))
        full[cy0:cy1, cx0:cx1] = lesion
        return RefinedMask(mask=full, score=self.score(full, seed, box))

    def _grabcut(self, crop: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Lesion pixels of the crop; a large crop is labelled at `max_crop_side` and scaled back."""
        height, width = crop.shape
        scale = min(1.0, self.max_crop_side / max(height, width))
        small_size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        if scale < 1:
            crop = cv2.resize(crop, small_size, interpolation=cv2.INTER_AREA)
            labels = cv2.resize(labels, small_size, interpolation=cv2.INTER_NEAREST)
        color = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
        background_model = np.zeros((1, 65), np.float64)
        foreground_model = np.zeros((1, 65), np.float64)
        # GrabCut seeds its GMMs with k-means on OpenCV's thread RNG: reseed so a mask never depends on
        # what ran before it on this worker (byte-identical outputs across runs and worker layouts).
        cv2.setRNGSeed(0)
        cv2.grabCut(color, labels, None, background_model, foreground_model, self.iterations, cv2.GC_INIT_WITH_MASK)
        lesion = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8) * 255
        if scale < 1:
            lesion = cv2.resize(lesion, (width, height), interpolation=cv2.INTER_LINEAR)
        return lesion >= 128

    @staticmethod
    def score(mask: np.ndarray, seed: np.ndarray, box: Box) -> float:
        """Agreement with the candidate: overlap with its prior component, and share of the mask inside its box."""
        if not mask.any():
            return 0.0
        inside = mask[box.y0: box.y1, box.x0: box.x1].sum() / mask.sum()
        return float(np.sqrt(iou(mask, seed) * inside))
