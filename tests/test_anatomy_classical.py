"""Classical anatomy backend on real radiographs (when the dev set is present), on phantoms of the synthetic
corpus, and on degenerate input."""
from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torchxrayvision

from anatomy_models.classical_anatomy import RETROCARDIAC_LUNG, ClassicalAnatomy
from anatomy_models.zones import ZONE_BOUNDS, lung_zones
from schemas.vocab import LUNG_BY_SIDE, ZONES_BY_SIDE, Location
from transforms.grounding import cardiothoracic_ratio
from transforms.phantom import LesionSpec, draw_frontal
from transforms.records import AnatomyResult

DEV_SET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-lungs-dev"
MASK_ARCHIVE = Path(torchxrayvision.__file__).parent / "data" / "semantic_masks_v7labs_lungs.zip"
# A PA film, an AP supine film with lines and dense bilateral opacities, a small journal figure.
SAMPLE_IMAGES = ("c3829ecb.png", "3248cc61.png", "12941_2020_358_Fig1_HTML.png")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def real_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    if not (DEV_SET / "manifest.csv").is_file() or not MASK_ARCHIVE.is_file():
        pytest.skip("cxr-lungs-dev or torchxrayvision's lung mask archive not available")
    cases = []
    with zipfile.ZipFile(MASK_ARCHIVE) as archive, open(DEV_SET / "manifest.csv", newline="") as manifest:
        for row in csv.DictReader(manifest):
            if row["image"] not in SAMPLE_IMAGES:
                continue
            image = cv2.imread(str(DEV_SET / "images" / row["image"]), cv2.IMREAD_GRAYSCALE)
            # The pipeline hands the backends images at about 512 px on the long side.
            scale = 512 / max(image.shape)
            image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
            mask = cv2.imdecode(np.frombuffer(archive.read(row["mask_member"]), np.uint8), cv2.IMREAD_GRAYSCALE)
            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST) >= 128
            cases.append((image, mask))
    assert len(cases) == len(SAMPLE_IMAGES)
    return cases


@pytest.fixture(scope="module")
def real_results(real_cases):
    return ClassicalAnatomy().segment([image for image, _ in real_cases])


def test_lung_fields_match_the_annotation(real_cases, real_results):
    for (image, truth), result in zip(real_cases, real_results):
        lung = result.masks[Location.LUNG.value]
        assert lung.shape == image.shape and lung.dtype == bool
        assert _dice(lung, truth) > 0.8
        assert result.confidence[Location.LUNG.value] > 0.5


def test_left_lung_is_on_the_image_right(real_results):
    for result in real_results:
        right_x = np.nonzero(result.masks[Location.RIGHT_LUNG.value])[1]
        left_x = np.nonzero(result.masks[Location.LEFT_LUNG.value])[1]
        assert right_x.max() < left_x.min() + 1  # no overlap across the midline
        assert right_x.mean() < left_x.mean()


def test_zones_partition_each_lung(real_results):
    for result in real_results:
        for side, zones in ZONES_BY_SIDE.items():
            lung = result.masks[LUNG_BY_SIDE[side].value]
            stacked = np.stack([result.masks[zone.value] for zone in zones])
            assert (stacked.sum(axis=0) == lung).all()  # each lung pixel in exactly one zone, none outside
            tops = [np.flatnonzero(zone.any(axis=1))[0] for zone in stacked]
            assert tops == sorted(tops)  # apical above upper above mid above base


def test_heart_lies_between_the_lungs_in_the_lower_chest(real_results):
    for result in real_results:
        heart = result.masks[Location.HEART.value]
        assert heart.any()
        heart_y, heart_x = np.nonzero(heart)
        right_x = np.nonzero(result.masks[Location.RIGHT_LUNG.value])[1]
        left_x = np.nonzero(result.masks[Location.LEFT_LUNG.value])[1]
        assert right_x.mean() < heart_x.mean() < left_x.mean()
        lung_rows = np.flatnonzero(result.masks[Location.LUNG.value].any(axis=1))
        assert heart_y.mean() > (lung_rows[0] + lung_rows[-1]) / 2
        assert result.masks["mediastinum"][heart].all()


def test_retrocardiac_lung_is_lung_behind_the_heart(real_results):
    for result in real_results:
        retrocardiac, lung = result.masks[RETROCARDIAC_LUNG], result.masks[Location.LUNG.value]
        assert retrocardiac.any() and not (retrocardiac & ~lung).any()
        assert retrocardiac.sum() < 0.2 * lung.sum()
        assert (retrocardiac & result.masks["mediastinum"]).sum() > 0.7 * retrocardiac.sum()
        for side in ("right", "left"):  # both lower lobes reach behind the heart
            assert (retrocardiac & result.masks[LUNG_BY_SIDE[side].value]).any()
        rows = np.flatnonzero(lung.any(axis=1))
        assert np.nonzero(retrocardiac)[0].mean() > (rows[0] + rows[-1]) / 2


def test_real_hearts_give_a_plausible_cardiothoracic_ratio(real_results):
    """The dev set has no heart annotation, but a heart narrower than a third of the thorax is not a heart: a rule
    that only phantoms' clean borders satisfy (a smooth arc fitted to each border) shrank these to 0.31."""
    for result in real_results:
        assert 0.35 < _ratio(result.masks) < 0.75


PHANTOM_LESIONS = {
    "normal": (),
    "cardiomegaly": (LesionSpec(("cardiomegaly",), "cardiomegaly", ("heart",), 0.7),),
    "basal consolidation": (LesionSpec(("consolidation",), "consolidation", ("right lung base",), 0.8),),
    "left effusion": (LesionSpec(("effusion",), "effusion", ("left lung base",), 0.8),),
}


@pytest.fixture(scope="module")
def phantom_results():
    """Phantoms of the synthetic corpus (AP and PA), their true anatomy and lesions, and the backend's result."""
    cases = {}
    for seed, view in ((0, "AP"), (1, "PA")):
        for name, lesions in PHANTOM_LESIONS.items():
            image, lesion_masks, anatomy = draw_frontal(np.random.default_rng([seed, 7]), 640, 560, lesions, view=view)
            cases[(view, name)] = (anatomy, lesion_masks, ClassicalAnatomy().segment([image])[0])
    return cases


def _ratio(masks: dict[str, np.ndarray]) -> float:
    return cardiothoracic_ratio(AnatomyResult(masks=masks, confidence={}, backend="", version=""))


def test_phantom_lungs_and_heart_match_the_truth(phantom_results):
    for (view, name), (truth, _, result) in phantom_results.items():
        for structure, least in ((Location.RIGHT_LUNG, 0.85), (Location.LEFT_LUNG, 0.85), (Location.HEART, 0.75)):
            assert _dice(result.masks[structure.value], truth[structure.value]) > least, (view, name, structure)
        assert abs(_ratio(result.masks) - _ratio(truth)) < 0.08, (view, name)


def test_enlarged_heart_gives_a_larger_cardiothoracic_ratio(phantom_results):
    for view in ("AP", "PA"):
        normal, enlarged = (_ratio(phantom_results[(view, name)][2].masks) for name in ("normal", "cardiomegaly"))
        assert enlarged > normal + 0.1 and enlarged > 0.55


def test_an_opacified_base_is_still_lung(phantom_results):
    for (view, name), (truth, lesions, result) in phantom_results.items():
        for lesion in lesions.values():  # consolidation and pleural fluid lie in the (true) lung field
            assert result.masks[Location.LUNG.value][lesion].mean() > 0.5, (view, name)


def test_blank_images_give_empty_masks_with_zero_confidence():
    backend = ClassicalAnatomy()
    for image in (np.full((300, 240), 128, np.uint8), np.zeros((64, 64), np.float32)):
        result = backend.segment([image])[0]
        assert result.backend == "classical"
        for name, mask in result.masks.items():
            assert mask.shape == image.shape and not mask.any(), name
            assert result.confidence[name] == 0.0


def test_float_and_uint8_inputs_of_any_size_come_back_at_their_size(real_cases):
    image = real_cases[0][0]
    wide = cv2.resize(image, (700, 300)).astype(np.float32) / 255.0
    results = ClassicalAnatomy().segment([image, wide])
    assert results[0].masks[Location.LUNG.value].shape == image.shape
    assert results[1].masks[Location.LUNG.value].shape == wide.shape
    for result in results:
        assert set(result.masks) >= {location.value for location in Location} | {"mediastinum", "diaphragm"}
        assert all(0.0 <= value <= 1.0 for value in result.confidence.values())


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ValueError, match="classical.*work_sise"):
        ClassicalAnatomy(work_sise=256)


def test_zone_rule_splits_a_lung_at_the_documented_fractions():
    lung = np.zeros((120, 50), bool)
    lung[10:110, 5:45] = True  # 100 rows tall
    zones = lung_zones(lung, "left")
    starts = [np.flatnonzero(zones[zone.value].any(axis=1))[0] for zone in ZONES_BY_SIDE["left"]]
    assert starts == [10] + [10 + round(fraction * 100) for fraction in ZONE_BOUNDS]
    assert np.flatnonzero(zones[Location.LEFT_BASE.value].any(axis=1))[-1] == 109
