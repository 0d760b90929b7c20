"""Decode radiographs at the resolution the models need, whatever the file's bit depth or channels."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# cv2 decodes JPEGs at 1/2, 1/4 or 1/8 scale directly (DCT scaling), far cheaper than a full decode.
_REDUCED_FLAGS = ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4), (2, cv2.IMREAD_REDUCED_GRAYSCALE_2))


class ImageDecodeError(Exception):
    """The file is missing, truncated or not an image."""


def source_size(path: Path) -> tuple[int, int]:
    """(height, width) read from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"cannot read image header: {exc}") from None
    return height, width


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Grayscale uint8 from any depth/channels: 16-bit and float are rescaled by their own range."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float32)
    low, high = np.percentile(image, (0.5, 99.5))
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    return np.clip((image - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)


def _check_jpeg_complete(path: Path) -> None:
    """OpenCV decodes a truncated JPEG into a grey-filled image with only a warning: refuse it instead."""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 1024))
        tail = handle.read()
    if b"\xff\xd9" not in tail:
        raise ImageDecodeError("truncated JPEG: no end-of-image marker")


def decode_for_models(path: Path, work_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The image as uint8 grayscale with its long side at `work_size` (never upscaled), and its source size."""
    height, width = source_size(path)
    long_side = max(height, width)
    image = None
    if path.suffix.lower() in {".jpg", ".jpeg"}:
        _check_jpeg_complete(path)
        for factor, flag in _REDUCED_FLAGS:
            if long_side / factor >= work_size:
                image = cv2.imread(str(path), flag)
                break
    if image is None:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageDecodeError("image data could not be decoded (truncated or corrupt file)")
    image = to_uint8(image)
    scale = work_size / max(image.shape)
    if scale < 1:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image, (height, width)
