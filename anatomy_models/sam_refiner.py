"""Segment Anything refinement: one image embedding per image, every candidate box prompted in one batch.

Several images (a batch of the DAG) are encoded `encode_batch` at a time: on an H100 a batch of 8 takes vit_h's
encoder from 68 to 49 ms per image. A batch the GPU has no memory for is halved until it fits.

Each candidate gives a box prompt and, optionally, one positive point at the deepest point of its prior
component (so a loose box around a small lesion still says which object is meant). SAM returns three
masks per prompt; the one with the highest predicted IoU is kept, and that prediction is the score.

On CUDA the image encoder (the cost: vit_h 191 ms fp32, 68 ms bf16 on an H100) runs under autocast, bf16
by default (its embedding differs from fp32 by 0.9 % relative L2); the prompt and mask decoders stay fp32,
so mask outlines are thresholded on fp32 logits. The image is resized for the encoder with OpenCV on its
one gray channel (SAM's own resize goes through PIL on three equal RGB channels: 14 ms of CPU per image).
"""
from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)

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
        encode_batch: int | None = None,  # images per encoder pass (default: 8 on CUDA, 1 on CPU)
    ) -> None:
        self.checkpoint = resolve_checkpoint(checkpoint, model_type)
        self.model_type = model_type
        self.device = device
        target = pick_device(device)
        try:  # checked now, so that a bad setting fails in the launcher rather than on a worker
            self.precision = pick_precision(precision, target)
        except ValueError as error:
            raise ValueError(f"refiner 'sam': {error}") from None
        if encode_batch is not None and encode_batch < 1:
            raise ValueError(f"refiner 'sam': encode_batch must be at least 1, not {encode_batch}")
        # A batch of 8 saves 28 % of vit_h's encoder time on an H100; on a CPU batching saves nothing and the global
        # attention of 8 images at once would take gigabytes.
        self.encode_batch = encode_batch or (8 if target.type == "cuda" else 1)
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
        return self.refine_images([(image, boxes, seeds)])[0]

    def refine_images(self, requests: Sequence[tuple[np.ndarray, Sequence[Box], Sequence[np.ndarray]]]
                      ) -> list[list[RefinedMask]]:
        """Images with boxes are encoded `encode_batch` at a time (one encoder pass per image), then each image's
        boxes are decoded together against its own embedding."""
        for _, boxes, seeds in requests:
            if len(boxes) != len(seeds):
                raise ValueError(f"{len(boxes)} boxes but {len(seeds)} seeds")
        results: list[list[RefinedMask]] = [[] for _ in requests]
        todo = [index for index, (_, boxes, _) in enumerate(requests) if boxes]
        if not todo:
            return results
        self.load()
        start = 0
        while start < len(todo):
            chunk = todo[start: start + self.encode_batch]
            grays = [_gray(requests[index][0]) for index in chunk]
            encoded = self._encode_within_memory(grays)
            if encoded is None:
                continue  # the batch was halved: the same images again, fewer at a time
            for index, gray, features in zip(chunk, grays, encoded):
                _, boxes, seeds = requests[index]
                results[index] = self._decode(gray, features, boxes, seeds)
            start += len(chunk)
        return results

    def _encode_within_memory(self, grays: list[np.ndarray]) -> list[tuple[torch.Tensor, tuple[int, int]]] | None:
        """`_encode`, or None after halving `encode_batch` when the GPU ran out of memory for this many images.

        Several Beam workers share a GPU, and each encoder pass over 8 images at 1024 px holds gigabytes (global
        attention): on an H100, 8 workers with SAM vit_b at a batch of 8 filled its 80 GB. The batch stays halved
        for the rest of this worker's life, since the other workers' memory stays taken. A single image that does
        not fit is an error."""
        import torch

        try:
            return self._encode(grays)
        except torch.cuda.OutOfMemoryError:
            if len(grays) == 1:
                raise
        torch.cuda.empty_cache()  # outside the handler: the failed pass's tensors, which its traceback held, are free
        self.encode_batch = max(1, len(grays) // 2)
        logger.warning("refiner 'sam': GPU out of memory encoding %d images at once; now %d at a time",
                       len(grays), self.encode_batch)
        return None

    def _encode(self, grays: list[np.ndarray]) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """(image embedding 1×256×64×64 in fp32, encoder input size) per image, from one encoder pass over all."""
        import torch

        model = self._predictor.model
        device = self._predictor.device
        inputs = [self.encoder_input(gray, device) for gray in grays]
        # preprocess normalises and pads each image to the encoder's square, so images of any shape stack
        batch = torch.cat([model.preprocess(x) for x in inputs])
        with torch.inference_mode(), torch.autocast(device.type, dtype=self.precision,
                                                    enabled=self.precision is not None):
            embeddings = model.image_encoder(batch)
        return [(embeddings[i: i + 1].float(), tuple(x.shape[-2:])) for i, x in enumerate(inputs)]

    def _decode(self, gray: np.ndarray, features: tuple[torch.Tensor, tuple[int, int]], boxes: Sequence[Box],
                seeds: Sequence[np.ndarray]) -> list[RefinedMask]:
        import torch

        predictor = self._predictor
        size = gray.shape[:2]
        device = predictor.device
        # the state SamPredictor.set_torch_image leaves, with the embedding computed in the batch
        predictor.reset_image()
        predictor.features, predictor.input_size = features
        predictor.original_size, predictor.is_image_set = size, True
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


def _gray(image: np.ndarray) -> np.ndarray:
    return image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)


def _box_mask(box: Box, size: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[box.y0: box.y1, box.x0: box.x1] = True
    return mask
