"""Segment Anything refinement: one image embedding per image, every candidate box prompted in one batch.

Each candidate gives a box prompt and, optionally, one positive point at the deepest point of its prior
component (so a loose box around a small lesion still says which object is meant). SAM returns three
masks per prompt; the one with the highest predicted IoU is kept, and that prediction is the score.

On CUDA the image encoder (the cost: vit_h 191 ms fp32, 68 ms bf16 on an H100) runs under autocast, bf16
by default (its embedding differs from fp32 by 0.9 % relative L2); the prompt and mask decoders stay fp32,
so mask outlines are thresholded on fp32 logits. The image is resized for the encoder with OpenCV on its
one gray channel (SAM's own resize goes through PIL on three equal RGB channels: 14 ms of CPU per image).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from anatomy_models.base import MaskRefiner, register
from anatomy_models.weights import MissingWeightsError, Precision, pick_device, pick_precision
from transforms.records import Box, RefinedMask

if TYPE_CHECKING:
    import torch

# Official checkpoints, from the segment-anything README (facebookresearch/segment-anything).
SAM_CHECKPOINT_URLS = {
    "default": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}


def resolve_checkpoint(checkpoint: str | Path | None, model_type: str) -> Path:
    """The checkpoint file, or a MissingWeightsError naming the file and the official download URL."""
    from segment_anything import sam_model_registry

    if model_type not in sam_model_registry:
        raise ValueError(f"unknown SAM model_type '{model_type}' (known: {', '.join(sam_model_registry)})")
    url = SAM_CHECKPOINT_URLS.get(model_type, "https://github.com/facebookresearch/segment-anything#model-checkpoints")
    if checkpoint is None:
        raise MissingWeightsError(
            f"no SAM checkpoint configured: set refiner.options.checkpoint to the {model_type} file "
            f"({Path(url).name}, download from {url})")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"SAM checkpoint not found: {path} (model_type {model_type}); download it from {url} "
            f"and point refiner.options.checkpoint at it")
    return path


def interior_point(mask: np.ndarray) -> tuple[float, float] | None:
    """(x, y) of the mask pixel farthest from its outline: inside the object even for crescent shapes."""
    if not mask.any():
        return None
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(x), float(y)


@register("refiner", "sam")
class SamRefiner(MaskRefiner):
    version = "1"

    def __init__(
        self,
        checkpoint: str | None = None,
        model_type: str = "vit_b",
        device: str = "auto",  # CUDA when present
        point_prompt: bool = True,
        mask_threshold: float = 0.0,  # on SAM's mask logits
        precision: Precision = "auto",  # the image encoder's autocast dtype: bf16 on CUDA, fp32 on CPU
    ) -> None:
        self.checkpoint = resolve_checkpoint(checkpoint, model_type)
        self.model_type = model_type
        self.device = device
        try:  # checked now, so that a bad setting fails in the launcher rather than on a worker
            self.precision = pick_precision(precision, pick_device(device))
        except ValueError as error:
            raise ValueError(f"refiner 'sam': {error}") from None
        self.point_prompt = point_prompt
        self.mask_threshold = mask_threshold
        self._predictor = None

    def load(self) -> None:
        if self._predictor is not None:
            return
        import torch
        from segment_anything import SamPredictor, sam_model_registry

        device = pick_device(self.device)
        # Built empty, then loaded on the CPU first: checkpoints saved from a GPU load on CPU-only workers too.
        model = sam_model_registry[self.model_type](checkpoint=None)
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.to(device).eval()
        model.mask_threshold = self.mask_threshold
        self._predictor = SamPredictor(model)

    def refine(self, image: np.ndarray, boxes: Sequence[Box], seeds: Sequence[np.ndarray]) -> list[RefinedMask]:
        if len(boxes) != len(seeds):
            raise ValueError(f"{len(boxes)} boxes but {len(seeds)} seeds")
        if not boxes:
            return []
        import torch

        self.load()
        predictor = self._predictor
        gray = image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)
        size = gray.shape[:2]
        device = predictor.device
        encoder_input = self.encoder_input(gray, device)
        with torch.autocast(device.type, dtype=self.precision, enabled=self.precision is not None):
            predictor.set_torch_image(encoder_input, size)  # the one encoder pass for this image
        predictor.features = predictor.features.float()
        box_tensor = torch.tensor([[b.x0, b.y0, b.x1, b.y1] for b in boxes], dtype=torch.float32, device=device)
        box_tensor = predictor.transform.apply_boxes_torch(box_tensor, size)
        points = labels = None
        if self.point_prompt:
            interior = [interior_point(seed.astype(bool) & _box_mask(box, size)) for box, seed in zip(boxes, seeds)]
            centres = [p if p is not None else ((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2) for p, b in zip(interior, boxes)]
            points = torch.tensor([[c] for c in centres], dtype=torch.float32, device=device)
            points = predictor.transform.apply_coords_torch(points, size)
            labels = torch.ones((len(boxes), 1), dtype=torch.int64, device=device)
        with torch.inference_mode():
            masks, predicted_iou, _ = predictor.predict_torch(points, labels, boxes=box_tensor, multimask_output=True)
        best = predicted_iou.argmax(dim=1)
        rows = torch.arange(len(boxes), device=best.device)
        chosen = masks[rows, best].cpu().numpy().astype(bool)
        scores = predicted_iou[rows, best].clamp(0, 1).cpu().numpy()
        return [RefinedMask(mask=mask, score=float(score)) for mask, score in zip(chosen, scores)]

    def encoder_input(self, gray: np.ndarray, device: torch.device) -> torch.Tensor:
        """[1, 3, h, w] float on `device`: `gray` resized so its long side is the encoder's input size, as SAM's
        own transform does (bilinear), on the one channel that the three RGB channels would repeat."""
        import torch
        from segment_anything.utils.transforms import ResizeLongestSide

        height, width = gray.shape[:2]
        new_height, new_width = ResizeLongestSide.get_preprocess_shape(height, width,
                                                                       self._predictor.transform.target_length)
        resized = cv2.resize(gray, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(resized).to(device).float()[None, None].expand(1, 3, new_height, new_width)


def _box_mask(box: Box, size: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[box.y0: box.y1, box.x0: box.x1] = True
    return mask
