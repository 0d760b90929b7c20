"""Model files and the torch plumbing shared by the torchxrayvision anatomy backends (cxas, pspnet); the
device and precision choice shared by every learned backend.

Where weights live, and one clear error when they are missing: nothing is ever downloaded here.
File names and URLs are torchxrayvision's own, so a cache filled by torchxrayvision on a connected
machine (`~/.torchxrayvision/models_data/` by default) can be copied here as is.

Images go to the models the torchxrayvision way: scaled to [-1024, 1024] by `xrv.utils.normalize`,
resized to the model's square input (512 px; squashed, not cropped, so every pixel of the input has
a prediction), and the models' own `forward` does the channel repeat and ImageNet normalisation.
Per-structure probabilities are resized back to each input image's size before thresholding.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchxrayvision import utils as xrv_utils
from torchxrayvision.baseline_models import chestx_anatomy


class MissingWeightsError(FileNotFoundError):
    """A model's weights file is not in the cache directory; the message says what to fetch and where to put it."""


@dataclass(frozen=True)
class WeightsSpec:
    model: str
    url: str

    @property
    def filename(self) -> str:
        return os.path.basename(self.url)


# CXAS: torchxrayvision.baseline_models.chestx_anatomy.WEIGHTS_URL.
CXAS_WEIGHTS = WeightsSpec("CXAS UNet-ResNet50 (torchxrayvision chestx_anatomy)", chestx_anatomy.WEIGHTS_URL)
# ChestX-Det PSPNet: the URL is a local in torchxrayvision.baseline_models.chestx_det.PSPNet.__init__ (1.5.x),
# not a module constant, so it is repeated here verbatim.
PSPNET_WEIGHTS = WeightsSpec(
    "ChestX-Det PSPNet (torchxrayvision chestx_det)",
    "https://github.com/mlmed/torchxrayvision/releases/download/v1/pspnet_chestxray_best_model_4.pth",
)


def default_weights_dir() -> Path:
    """torchxrayvision's own cache directory."""
    return Path(xrv_utils.get_cache_dir()).expanduser()


def resolve_weights(spec: WeightsSpec, weights_dir: str | os.PathLike | None = None) -> Path:
    """The weights file of `spec` in `weights_dir` (default: torchxrayvision's cache), or MissingWeightsError."""
    directory = Path(weights_dir).expanduser() if weights_dir is not None else default_weights_dir()
    path = directory / spec.filename
    if not path.is_file():
        raise MissingWeightsError(
            f"weights for {spec.model} not found: expected {path}; on a connected machine run "
            f"`wget {spec.url} -O {spec.filename}` and copy the file into {directory} "
            f"(or set the backend option weights_dir to the folder that holds it)"
        )
    return path


Precision = Literal["auto", "fp32", "fp16", "bf16"]  # autocast dtype of a forward pass (auto: bf16 on CUDA)


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when available (or asked for), else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available on this machine")
    return torch.device(requested)


def pick_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a forward pass on `device`, or None for plain fp32.

    'auto': bf16 on CUDA GPUs that support it, else fp16 on CUDA; fp32 on CPU. fp16 needs CUDA (CPU
    autocast runs bf16 only); bf16 on a CUDA GPU without bf16 support is refused."""
    if requested not in get_args(Precision):
        raise ValueError(f"unknown precision {requested!r} (known: {', '.join(get_args(Precision))})")
    if requested == "fp32" or (requested == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return torch.bfloat16 if bf16_ok else torch.float16
        if requested == "bf16" and not bf16_ok:
            raise ValueError(f"precision 'bf16' requested but {device} does not support bfloat16; use fp16 or fp32")
        return torch.bfloat16 if requested == "bf16" else torch.float16
    if requested == "fp16":
        raise ValueError("precision 'fp16' needs a CUDA device; on CPU use fp32 or bf16")
    return torch.bfloat16


def to_model_input(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """A batch [B, 1, size, size] in torchxrayvision's [-1024, 1024] range.

    uint8 images are read on their 0-255 scale; other dtypes (uint16, float) are stretched between
    their own minimum and maximum, since their nominal range says nothing about the exposure.
    """
    batch = []
    for image in images:
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
        if image.dtype == np.uint8:
            scaled, maxval = image, 255
        else:
            values = np.nan_to_num(image.astype(np.float32))
            low, high = float(values.min()), float(values.max())
            scaled, maxval = (values - low) / (high - low) if high > low else np.zeros_like(values), 1.0
        interpolation = cv2.INTER_AREA if max(image.shape) > size else cv2.INTER_LINEAR
        resized = cv2.resize(scaled.astype(np.float32), (size, size), interpolation=interpolation)
        batch.append(xrv_utils.normalize(np.clip(resized, 0, maxval), maxval))
    return torch.from_numpy(np.stack(batch)[:, None])


@torch.no_grad()
def segment_batch(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    channels: Sequence[int],
    input_size: int,
    device: torch.device,
) -> list[np.ndarray]:
    """Sigmoid probabilities of the given output channels, one float32 [len(channels), H, W] array per image at its own size."""
    logits = model(to_model_input(images, input_size).to(device))
    probabilities = torch.sigmoid(logits[:, list(channels)].float())
    return [
        F.interpolate(probabilities[i : i + 1], size=np.asarray(image).shape[:2], mode="bilinear", align_corners=False)[0]
        .cpu()
        .numpy()
        for i, image in enumerate(images)
    ]


def masks_and_confidence(
    probabilities: np.ndarray, names: Sequence[str], thresholds: Sequence[float]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Threshold each channel; a structure's confidence is its mean probability inside its mask (0 when empty)."""
    masks, confidence = {}, {}
    for channel, name, threshold in zip(probabilities, names, thresholds):
        mask = channel > threshold
        masks[name] = mask
        confidence[name] = float(channel[mask].mean()) if mask.any() else 0.0
    return masks, confidence
