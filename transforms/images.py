"""Decode radiographs at the resolution the models need, whatever the file's format, bit depth or channels."""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# cv2 decodes JPEGs at 1/2, 1/4 or 1/8 scale directly (DCT scaling), far cheaper than a full decode.
_REDUCED_FLAGS = ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4), (2, cv2.IMREAD_REDUCED_GRAYSCALE_2))
# Decompression-bomb guard: a header announcing more pixels than this is refused before any decode.
# MIMIC-CXR images are at most ~4,300 x 3,500 (15 Mpx); 100 Mpx leaves room for any real radiograph.
MAX_IMAGE_PIXELS = 100_000_000
DICOM_SUFFIXES = {".dcm", ".dicom"}


class ImageDecodeError(Exception):
    """The file is missing, truncated or not an image."""


class ImageTooLarge(ImageDecodeError):
    """The header announces more pixels than the decompression-bomb limit."""


def _dicom_header(path: Path):
    import pydicom  # only DICOM inputs need it

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise ImageDecodeError(f"cannot read DICOM header: {exc}") from None


def source_size(path: Path) -> tuple[int, int]:
    """(height, width) read from the file header, without decoding the pixels."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        header = _dicom_header(path)
        return int(header.Rows), int(header.Columns)
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the caller applies its limit to the size
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
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


def _decode_dicom(path: Path) -> np.ndarray:
    """Pixels of a single-frame grayscale DICOM with bright bone, whatever its photometric interpretation."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except Exception as exc:  # pydicom raises many types for corrupt or unsupported pixel data
        raise ImageDecodeError(f"cannot decode DICOM pixel data: {type(exc).__name__}: {exc}") from None
    if pixels.ndim != 2:
        raise ImageDecodeError(f"DICOM pixel data of shape {pixels.shape}: expected one grayscale frame")
    image = to_uint8(pixels)
    # MONOCHROME1 stores bone dark (the film convention); the models expect MONOCHROME2 (bone bright)
    if str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        image = 255 - image
    return image


def decode_for_models(path: Path, work_size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """The image as uint8 grayscale with its long side at `work_size` (never upscaled), and its source size.

    JPEGs are decoded at the smallest DCT scale that still covers `work_size`; other formats are decoded whole,
    which the `max_pixels` check (on the header, before decoding) keeps bounded."""
    path = Path(path)
    height, width = source_size(path)
    if height * width > max_pixels:
        raise ImageTooLarge(f"image is {width} x {height} = {height * width} pixels, above the limit of {max_pixels}")
    long_side = max(height, width)
    image = None
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        image = _decode_dicom(path)
    elif suffix in {".jpg", ".jpeg"}:
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
