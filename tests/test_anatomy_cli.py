"""`mimic-ils anatomy`: PNG, JPG and DICOM in, one 0/255 PNG per structure at the input's resolution out."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_damaged import write_dicom

from pipeline.cli import main
from schemas.vocab import Location
from transforms.phantom import draw_frontal


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    image, _, anatomy = draw_frontal(np.random.default_rng(3), 700, 600)
    return image, anatomy


def _masks(folder) -> dict[str, np.ndarray]:
    return {path.stem: cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in folder.glob("*.png")}


def test_png_jpg_and_dicom_give_masks_at_input_resolution(tmp_path, phantom, capsys):
    image, truth = phantom
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "film.png"), image)
    cv2.imwrite(str(images / "film_jpeg.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    # A 12-bit MONOCHROME1 DICOM (bone dark, the film convention) of the same picture at a larger size.
    large = cv2.resize(image, (900, 1050), interpolation=cv2.INTER_LINEAR).astype(np.uint16) * 16
    write_dicom(images / "film_dicom.dcm", 4095 - large, "MONOCHROME1")

    assert main(["anatomy", "--images", str(images), "--output", str(tmp_path / "out"), "--batch-size", "2"]) == 0
    assert "3 images" in capsys.readouterr().out

    expected = {location.value for location in Location}
    results = {stem: _masks(tmp_path / "out" / stem) for stem in ("film", "film_jpeg", "film_dicom")}
    for stem, masks in results.items():
        assert expected <= set(masks), stem
        shape = (1050, 900) if stem == "film_dicom" else image.shape
        for name, mask in masks.items():
            assert mask.shape == shape and mask.dtype == np.uint8, (stem, name)
            assert set(np.unique(mask)) <= {0, 255}, (stem, name)
    lung = {stem: masks[Location.LUNG.value] > 0 for stem, masks in results.items()}
    assert _dice(lung["film"], truth[Location.LUNG.value]) > 0.85
    assert _dice(lung["film_jpeg"], lung["film"]) > 0.95
    dicom_lung = cv2.resize(lung["film_dicom"].astype(np.uint8), image.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    assert _dice(dicom_lung, lung["film"]) > 0.9  # MONOCHROME1 was inverted: the lungs are found, not the bones


def test_an_undecodable_file_is_reported_and_the_others_are_written(tmp_path, phantom, capsys):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "good.png"), phantom[0])
    (images / "broken.dcm").write_bytes(b"not a dicom file")
    assert main(["anatomy", "--images", str(images), "--output", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "broken.dcm" in captured.err and "1 could not be decoded" in captured.out
    assert (tmp_path / "out" / "good" / f"{Location.HEART.value}.png").is_file()
    assert not (tmp_path / "out" / "broken").exists()


def test_unknown_backend_is_one_line(tmp_path, phantom, capsys):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "film.png"), phantom[0])
    assert main(["anatomy", "--backend", "nonesuch", "--images", str(images), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unknown anatomy backend 'nonesuch'" in err and len(err.strip().splitlines()) == 1
