import cv2
import numpy as np
import pytest

from transforms.images import ImageDecodeError, decode_for_models, to_uint8
from transforms.masks import bbox_xywh, decode_rle, encode_resized, encode_rle, mask_id, resize_mask


def test_rle_round_trip_and_content_id():
    mask = np.zeros((37, 53), bool)
    mask[5:20, 10:31] = True
    mask[30, 0] = True
    rle = encode_rle(mask)
    assert isinstance(rle, str) and np.array_equal(decode_rle(rle, 37, 53), mask)
    assert bbox_xywh(mask) == [0, 5, 31, 26]
    assert mask_id("d", "edema", 37, 53, rle) == mask_id("d", "edema", 37, 53, rle)
    assert mask_id("d", "edema", 37, 53, rle) != mask_id("d", "opacity", 37, 53, rle)


def test_resize_mask_keeps_shape_of_region():
    small = np.zeros((50, 40), bool)
    small[10:30, 5:20] = True
    big = resize_mask(small, 500, 400)
    assert big.shape == (500, 400)
    assert abs(big.sum() - 100 * small.sum()) / (100 * small.sum()) < 0.05


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_decode_reduces_large_images_and_reports_source_size(tmp_path, suffix):
    image = (np.random.default_rng(0).random((2400, 1800)) * 255).astype(np.uint8)
    path = tmp_path / f"x{suffix}"
    cv2.imwrite(str(path), image)
    pixels, size = decode_for_models(path, 512)
    assert size == (2400, 1800) and pixels.shape == (512, 384) and pixels.dtype == np.uint8


def test_sixteen_bit_and_colour_become_uint8_grayscale(tmp_path):
    deep = np.linspace(0, 4095, 300 * 200, dtype=np.uint16).reshape(300, 200)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), deep)
    pixels, _ = decode_for_models(path, 512)
    assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255
    assert to_uint8(np.dstack([deep.astype(np.uint8)] * 3)).ndim == 2


def test_truncated_or_missing_file_is_a_decode_error(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageDecodeError):
        decode_for_models(path, 512)
    with pytest.raises(ImageDecodeError):
        decode_for_models(tmp_path / "missing.jpg", 512)
    whole = tmp_path / "whole.jpg"
    cv2.imwrite(str(whole), (np.random.default_rng(1).random((800, 600)) * 255).astype(np.uint8))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_for_models(cut, 512)


def test_encode_resized_matches_the_plain_path():
    small = np.zeros((64, 48), bool)
    small[10:40, 5:30] = True
    small[50:60, 40:47] = True
    rle, area, bbox = encode_resized(small, 640, 480)
    full = resize_mask(small, 640, 480)
    assert rle == encode_rle(full) and area == int(full.sum()) and bbox == bbox_xywh(full)
    assert encode_resized(np.zeros((8, 8), bool), 80, 80)[1:] == (0, [0, 0, 0, 0])


@pytest.mark.parametrize("seed", range(3))
def test_encode_resized_equals_encoding_every_pixel(seed):
    """Runs are read only where the mask can reach; the RLE is that of the whole resized mask, including runs
    that touch the first or last pixel and runs that carry over from one column to the next."""
    rng = np.random.default_rng(seed)
    small = cv2.GaussianBlur(rng.random((60, 45)).astype(np.float32), (0, 0), 3) > 0.55
    small[0, 0] = small[-1, -1] = True
    small[:, 20:23] = True  # whole columns: at source size their runs join across column ends
    for height, width in ((60, 45), (437, 301), (601, 452), (40, 30)):
        full = resize_mask(small.T, width, height).T  # resized transposed, as encode_resized does
        assert encode_resized(small, height, width) == (encode_rle(full), int(full.sum()), bbox_xywh(full))
    assert encode_resized(np.ones((8, 8), bool), 80, 60) == (encode_rle(np.ones((80, 60), bool)), 4800, [0, 0, 60, 80])
