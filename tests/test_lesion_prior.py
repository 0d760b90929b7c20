"""Lesion priors: the classical anomaly map on drawn frontal phantoms (and real radiographs when present),
and the torchxrayvision backend through its real weight-loading path with random weights."""
from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from anatomy_models.base import create as create_backend
from anatomy_models.classical_anatomy import RETROCARDIAC_LUNG
from anatomy_models.classical_prior import ClassicalLesionPrior, masked_opening
from anatomy_models.random_weights import save_random_densenet
from anatomy_models.zones import lung_regions
from conftest import make_finding
from pipeline.config import load_config
from schemas.vocab import LUNG_BY_SIDE, ZONES_BY_SIDE, DiscardReason, LesionType, Location
from transforms.grounding import ImageToGround, behind_reported_fluid, ground_images
from transforms.masks import lowest_rows
from transforms.records import AnatomyResult

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LUNG_TYPES = [t.value for t in LesionType if t is not LesionType.CARDIOMEGALY]


def ellipse(shape, cy, cx, ry, rx) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def frontal_phantom(height=320, width=300, heart_rx=0.13, seed=0):
    """Dark lungs in a brighter body, a dense heart, rib shadows and noise; returns (float image, anatomy).

    The patient's right lung is on the image left.
    """
    rng = np.random.default_rng(seed)
    shape = (height, width)
    image = np.full(shape, 0.1, np.float32)
    body = ellipse(shape, height * 0.55, width * 0.5, height * 0.5, width * 0.46)
    image[body] = 0.62
    right = ellipse(shape, height * 0.5, width * 0.31, height * 0.33, width * 0.14)
    left = ellipse(shape, height * 0.5, width * 0.69, height * 0.33, width * 0.14)
    image[right | left] = 0.25
    yy, xx = np.mgrid[:height, :width]
    ribs = 0.06 * (np.sin(yy / height * 2 * np.pi * 9 + 0.3 * np.abs(xx - width / 2) / width * 2 * np.pi) > 0.4)
    image += np.where(right | left, ribs, 0)
    # Chest wall overlaps the lung outline: the lateral rim of a real lung is denser than its core.
    rim = (right | left) & ~cv2.erode((right | left).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    image[rim] += 0.08
    heart = ellipse(shape, height * 0.7, width * 0.55, height * 0.13, width * heart_rx)
    image[heart] = 0.7
    image += rng.normal(0, 0.02, shape).astype(np.float32)
    masks = {LUNG_BY_SIDE["right"].value: right, LUNG_BY_SIDE["left"].value: left,
             Location.LUNG.value: right | left, Location.HEART.value: heart}
    for side, lung in (("right", right), ("left", left)):
        rows = np.flatnonzero(lung.any(axis=1))
        edges = np.linspace(rows[0], rows[-1] + 1, 5).astype(int)
        for zone, y0, y1 in zip(ZONES_BY_SIDE[side], edges[:-1], edges[1:]):
            band = np.zeros(shape, bool)
            band[y0:y1] = True
            masks[zone.value] = lung & band
    anatomy = AnatomyResult(masks=masks, confidence={k: 1.0 for k in masks}, backend="phantom", version="0")
    return image, anatomy


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(cv2.GaussianBlur(image, (0, 0), 1.0) * 255, 0, 255).astype(np.uint8)


def add_lesion(image: np.ndarray, lesion: np.ndarray, density: float = 0.35) -> np.ndarray:
    """Add soft-edged density over `lesion` (an opacity lets through less of the beam: brighter)."""
    soft = cv2.GaussianBlur(lesion.astype(np.float32), (0, 0), 2.0)
    return image + density * soft


@pytest.fixture(scope="module")
def prior():
    return ClassicalLesionPrior()


def test_maps_are_well_formed_for_every_type(prior):
    image, anatomy = frontal_phantom(height=300, width=260)
    (result,) = prior.predict([to_uint8(image)], [anatomy])
    assert set(result.maps) == {t.value for t in LesionType} == set(result.probabilities)
    for lesion_map in result.maps.values():
        assert lesion_map.shape == (300, 260) and lesion_map.dtype == np.float32
        assert 0 <= lesion_map.min() and lesion_map.max() <= 1
    assert all(0 <= p <= 1 for p in result.probabilities.values())
    assert result.backend == "classical"


def test_normal_lungs_give_low_maps(prior):
    for seed in range(3):
        image, anatomy = frontal_phantom(seed=seed)
        (result,) = prior.predict([to_uint8(image)], [anatomy])
        lungs = anatomy.masks[Location.LUNG.value]
        for lesion in LUNG_TYPES:
            assert result.maps[lesion][lungs].mean() < 0.02, lesion
            assert result.probabilities[lesion] < 0.15, lesion


def test_opacity_mass_lies_on_the_drawn_lesion(prior):
    image, anatomy = frontal_phantom()
    lesion = ellipse(image.shape, 130, 95, 22, 18)  # right upper/mid lung
    (result,) = prior.predict([to_uint8(add_lesion(image, lesion))], [anatomy])
    near = cv2.dilate(lesion.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    for lesion_type in ("opacity", "pneumonia", "consolidation"):
        lesion_map = result.maps[lesion_type]
        # what becomes a candidate lies on the lesion; faint spots where ribs meet the chest wall hold the rest
        strong = lesion_map >= 0.5
        assert strong[near].sum() / strong.sum() > 0.95, lesion_type
        assert lesion_map[near].sum() / lesion_map.sum() > 0.7, lesion_type
        assert lesion_map[lesion].mean() > (0.6 if lesion_type != "consolidation" else 0.4), lesion_type
        assert result.probabilities[lesion_type] > 0.5, lesion_type
    healthy_lung = anatomy.masks["left lung"]
    assert result.maps["opacity"][healthy_lung].mean() < 0.02  # as normal lungs (test_normal_lungs_give_low_maps)
    # a unilateral focus is not edema
    assert result.probabilities["edema"] < 0.15


def test_focal_map_follows_the_lesion_outline_between_ribs(prior):
    image, anatomy = frontal_phantom()
    lesion = ellipse(image.shape, 150, 205, 10, 10)
    (result,) = prior.predict([to_uint8(add_lesion(image, lesion))], [anatomy])
    strong = result.maps["opacity"] >= 0.5
    near = cv2.dilate(lesion.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert strong[near].sum() / strong.sum() > 0.98
    # the coarse density that averages ribs away spreads a lesion this small over its neighbours (IoU 0.47)
    assert (strong & lesion).sum() / (strong | lesion).sum() > 0.52


def test_masked_opening_flattens_thin_bright_structure_and_keeps_broad_structure():
    image = np.full((60, 80), 0.2, np.float32)
    image[20:23, 5:75] = 0.8  # a rib: 3 pixels thin
    lesion = ellipse(image.shape, 45, 40, 10, 10)  # 20 pixels across (a disc: the opening keeps it)
    image[lesion] = 0.8
    mask = np.zeros(image.shape, bool)
    mask[5:58, 3:77] = True
    image[~mask] = 1.0  # soft tissue around the lung
    opened = masked_opening(image, mask, 9)
    assert np.allclose(opened[20:23, 10:70], 0.2)
    assert np.isclose(opened[lesion], 0.8).mean() > 0.97  # all but single-pixel tips of the drawn disc
    assert np.allclose(opened[mask & (image < 0.5)], 0.2)  # outside bright tissue does not spread into the lung
    assert np.array_equal(opened[~mask], image[~mask])


def test_faint_opacity_is_opacity_but_not_consolidation(prior):
    image, anatomy = frontal_phantom()
    lesion = ellipse(image.shape, 130, 205, 20, 16)
    (result,) = prior.predict([to_uint8(add_lesion(image, lesion, density=0.22))], [anatomy])
    assert result.probabilities["opacity"] > result.probabilities["consolidation"]
    assert result.maps["opacity"][lesion].mean() > result.maps["consolidation"][lesion].mean()


def test_effusion_concentrates_at_the_base(prior):
    image, anatomy = frontal_phantom()
    right = anatomy.masks["right lung"]
    rows = np.flatnonzero(right.any(axis=1))
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    # fluid layering from the base, its surface (meniscus) climbing laterally (image left for the right lung)
    level = rows[-1] - 0.28 * (rows[-1] - rows[0]) - 0.5 * np.clip(95 - xx, 0, None)
    fluid = right & (yy >= level)
    (result,) = prior.predict([to_uint8(add_lesion(image, fluid, density=0.45))], [anatomy])
    effusion = result.maps["effusion"]
    lower_third = yy >= rows[-1] - (rows[-1] - rows[0]) / 3
    assert effusion[lower_third].sum() / effusion.sum() > 0.9
    assert effusion[fluid].mean() > 0.4
    assert effusion[:, image.shape[1] // 2:].sum() < 0.02 * effusion.sum()
    assert result.probabilities["effusion"] > 0.5
    # the map spills past the lung outline below it (the costophrenic recess), never beside it (the chest wall)
    lungs = anatomy.masks["lung"]
    ring = cv2.dilate(lungs.astype(np.uint8), np.ones((31, 31), np.uint8)).astype(bool) & ~lungs
    lowest = lowest_rows(lungs)[None, :]
    below = (yy > lowest) & (lowest >= 0)
    assert effusion[ring & ~below].max() == 0


def film_with_right_basal_fluid() -> tuple[np.ndarray, AnatomyResult, np.ndarray]:
    """(film, anatomy, fluid): fluid over the right lung's lower 30 %, above an undense rim (the lung field's outline
    reaches a few pixels past the fluid's floor, as a lung mask's edge dilation does)."""
    image, anatomy = frontal_phantom()
    right = anatomy.masks["right lung"]
    rows = np.flatnonzero(right.any(axis=1))
    yy, _ = np.mgrid[: image.shape[0], : image.shape[1]]
    fluid = right & (yy >= rows[-1] - 0.3 * (rows[-1] - rows[0])) & (yy < lowest_rows(right)[None, :] - 4)
    return to_uint8(add_lesion(image, fluid, density=0.45)), anatomy, fluid


def test_fluid_above_an_undense_lung_rim_is_effusion_and_hides_the_lung_behind_it_once_reported(prior):
    film, anatomy, fluid = film_with_right_basal_fluid()
    (result,) = prior.predict([film], [anatomy])
    assert result.maps["effusion"][fluid].mean() > 0.4
    reported = [make_finding("effusion", ["right lung"])]
    seen = behind_reported_fluid(reported, anatomy, result, load_config("classical").config.grounding)
    for focal in ("opacity", "pneumonia", "consolidation", "atelectasis"):
        assert seen.maps[focal][fluid].mean() < 0.2, focal


def test_suspected_fluid_hides_the_lung_behind_it_from_a_reported_pneumonia(prior):
    """"Effusion is suspected" is not grounded, but the reader saw fluid-like density there: a pneumonia reported at
    that base is not grounded on it."""
    film, anatomy, fluid = film_with_right_basal_fluid()
    (result,) = prior.predict([film], [anatomy])
    config = load_config("classical").config.grounding
    refiner = create_backend("refiner", "classical")
    refiner.load()
    pneumonia = make_finding("pneumonia", ["right lung base"])
    suspected = make_finding("effusion", ["right lung"], certainty="uncertain")

    (unexplained,), (explained,) = ground_images([ImageToGround([pneumonia], anatomy, result, film, "PA"),
                                                  ImageToGround([pneumonia], anatomy, result, film, "PA", [suspected])],
                                                 refiner, config)
    assert (unexplained.mask & fluid).sum() > 0.9 * unexplained.mask.sum()
    assert explained.mask is None and explained.discard == DiscardReason.NO_PRIOR_SIGNAL
    # the audit trail says why the dense base gave no candidate
    assert "prior_hidden_by_fluid" not in unexplained.details
    assert explained.details["prior_hidden_by_fluid"] > 0.5


def test_fluid_reaches_the_unaerated_base_behind_the_heart_border(prior):
    image, anatomy = frontal_phantom()
    right = anatomy.masks["right lung"]
    rows = np.flatnonzero(right.any(axis=1))
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    fluid = right & (yy >= rows[-1] - 0.3 * (rows[-1] - rows[0]))
    # the medial part of the fluid lies where the anatomy carries lung that the film shows as soft tissue
    hidden = fluid & (xx > 78)
    marked = AnatomyResult(masks=anatomy.masks | {RETROCARDIAC_LUNG: hidden}, confidence=anatomy.confidence,
                           backend=anatomy.backend, version=anatomy.version)
    (with_fluid,) = prior.predict([to_uint8(add_lesion(image, fluid, density=0.45))], [marked])
    assert with_fluid.maps["effusion"][hidden].mean() > 0.8
    # without fluid on that side, lung carried behind the heart border is not fluid
    (clear,) = prior.predict([to_uint8(image)], [marked])
    assert clear.maps["effusion"][hidden].max() < 0.1


def test_fluid_layers_behind_the_heart_at_the_level_it_reaches_the_heart_border(prior):
    image, anatomy = frontal_phantom()
    left, heart = anatomy.masks["left lung"], anatomy.masks[Location.HEART.value]
    rows = np.flatnonzero(left.any(axis=1))
    yy, _ = np.mgrid[: image.shape[0], : image.shape[1]]
    surface = rows[-1] - 0.25 * (rows[-1] - rows[0])
    seen_fluid = left & ~heart & (yy >= surface)
    behind = left & heart  # lung that the film shows as heart
    (with_fluid,) = prior.predict([to_uint8(add_lesion(image, seen_fluid, density=0.45))], [anatomy])
    effusion = with_fluid.maps["effusion"]
    assert effusion[behind & (yy >= surface + 6)].mean() > 0.8
    assert effusion[behind & (yy < surface - 6)].max() < 0.1  # above the fluid's level the lung behind the heart is not fluid
    (clear,) = prior.predict([to_uint8(image)], [anatomy])
    assert clear.maps["effusion"][behind].max() < 0.1


def test_only_fluid_layering_up_from_the_base_is_carried_behind_the_heart(prior):
    """Dense rows at the heart's border that do not reach down to the base (the heart's own edge, a lesion against
    it) are not a fluid level."""
    _, anatomy = frontal_phantom()
    right, left, heart = (anatomy.masks[name] for name in ("right lung", "left lung", Location.HEART.value))
    seen, behind = left & ~heart, left & heart
    rows = np.flatnonzero(seen.any(axis=1))
    yy, _ = np.mgrid[: heart.shape[0], : heart.shape[1]]
    island = (yy >= rows[-1] - 60) & (yy < rows[-1] - 45)
    layer = yy >= rows[-1] - 20
    effusion = (seen & (island | layer)).astype(np.float32)
    fluid = prior._behind_heart(effusion, (right, left), heart, margin=3)
    assert fluid[behind & layer].mean() > 0.9
    assert fluid[behind & island].max() == 0
    assert fluid[right].max() == 0


def test_fluid_below_a_lung_cut_at_its_surface_reaches_the_mirrored_clear_lung(prior):
    image, anatomy = frontal_phantom()
    right, left = anatomy.masks["right lung"], anatomy.masks["left lung"]
    rows = np.flatnonzero(right.any(axis=1))
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    surface = rows[-1] - 0.35 * (rows[-1] - rows[0]) - 0.5 * np.clip(95 - xx, 0, None)
    fluid = right & (yy >= surface)
    # a segmenter stops the lung a few pixels past the fluid's surface: below that the film shows no lung outline
    cut = right & (yy < surface + 10)
    masks = anatomy.masks | {Location.LUNG.value: cut | left} | lung_regions(cut, left)
    seen_as_cut = AnatomyResult(masks=masks, confidence=anatomy.confidence, backend=anatomy.backend, version=anatomy.version)
    (result,) = prior.predict([to_uint8(add_lesion(image, fluid, density=0.45))], [seen_as_cut])
    effusion = result.maps["effusion"]
    assert effusion[fluid].mean() > 0.8
    assert effusion[left].max() < 0.1
    assert (effusion >= 0.5)[~fluid].sum() < 0.3 * fluid.sum()


def test_upper_zone_opacity_is_not_effusion(prior):
    image, anatomy = frontal_phantom()
    lesion = ellipse(image.shape, 110, 90, 18, 20)
    (result,) = prior.predict([to_uint8(add_lesion(image, lesion, density=0.45))], [anatomy])
    assert result.probabilities["effusion"] < 0.15 < result.probabilities["consolidation"]


def test_bilateral_perihilar_haze_is_edema(prior):
    image, anatomy = frontal_phantom()
    haze = ellipse(image.shape, 150, 110, 40, 26) | ellipse(image.shape, 150, 190, 40, 26)
    haze &= anatomy.masks[Location.LUNG.value]
    (result,) = prior.predict([to_uint8(add_lesion(image, haze, density=0.3))], [anatomy])
    edema = result.maps["edema"]
    assert result.probabilities["edema"] > 0.5
    assert edema[anatomy.masks["right lung"]].sum() > 0.3 * edema.sum()
    assert edema[anatomy.masks["left lung"]].sum() > 0.3 * edema.sum()
    # its extent is edema's distribution: the perihilar haze is covered, the lung periphery spared
    assert (edema[haze] >= 0.5).mean() > 0.7
    for side, lateral_at_small_x in (("right lung", True), ("left lung", False)):
        lung = anatomy.masks[side]
        cols = np.flatnonzero(lung.any(axis=0))
        rim = int(0.1 * (cols[-1] - cols[0]))
        strip = np.zeros_like(lung)
        if lateral_at_small_x:
            strip[:, : cols[0] + rim] = True
        else:
            strip[:, cols[-1] - rim:] = True
        assert edema[lung & strip].max() < 0.1
        # a bat's wing: the apex and the base are spared too
        rows = np.flatnonzero(lung.any(axis=1))
        margin = int(0.05 * (rows[-1] - rows[0]))
        assert edema[rows[0] : rows[0] + margin][lung[rows[0] : rows[0] + margin]].max() < 0.5
        assert edema[rows[-1] - margin : rows[-1] + 1][lung[rows[-1] - margin : rows[-1] + 1]].max() < 0.5


def test_dense_hila_alone_are_not_edema(prior):
    image, anatomy = frontal_phantom()
    # Normal hila: small dense spots at mirrored perihilar points, most of the perihilar field aerated.
    hila = ellipse(image.shape, 140, 118, 10, 7) | ellipse(image.shape, 140, 182, 10, 7)
    (result,) = prior.predict([to_uint8(add_lesion(image, hila, density=0.4))], [anatomy])
    assert result.probabilities["edema"] < 0.15


def test_lung_marked_retrocardiac_is_not_judged_as_aerated_lung(prior):
    image, anatomy = frontal_phantom()
    # A dense block at the left base, as abdomen under a lung field carried down below the dome looks.
    block = np.zeros(image.shape, bool)
    block[230:265, 175:230] = True
    block &= anatomy.masks["left lung"]
    dense = to_uint8(add_lesion(image, block, density=0.45))
    (unmarked,) = prior.predict([dense], [anatomy])
    marked_anatomy = AnatomyResult(masks=anatomy.masks | {RETROCARDIAC_LUNG: block}, confidence=anatomy.confidence,
                                   backend=anatomy.backend, version=anatomy.version)
    (marked,) = prior.predict([dense], [marked_anatomy])
    # unmarked, the block is dense lung layering up from the base: fluid (which hides the lung behind it)
    assert np.maximum(unmarked.maps["opacity"], unmarked.maps["effusion"])[block].mean() > 0.5
    # effusion may spill a little past the field's outline (fluid fills the pleural rim); the rest stops there
    assert marked.maps["effusion"][block].mean() < 0.1
    for lesion in set(LUNG_TYPES) - {"effusion"}:
        assert marked.maps[lesion][block].max() == 0, lesion
        assert marked.probabilities[lesion] < 0.15, lesion


def test_cardiomegaly_probability_rises_with_heart_width(prior):
    probabilities = []
    for heart_rx in (0.1, 0.14, 0.18, 0.22):
        image, anatomy = frontal_phantom(heart_rx=heart_rx)
        (result,) = prior.predict([to_uint8(image)], [anatomy])
        probabilities.append(result.probabilities["cardiomegaly"])
        heart = anatomy.masks[Location.HEART.value]
        assert np.allclose(result.maps["cardiomegaly"][heart], probabilities[-1])
        assert not result.maps["cardiomegaly"][~heart].any()
    assert probabilities == sorted(probabilities)
    assert probabilities[0] < 0.1 and probabilities[-1] > 0.9  # CTR ≈ 0.36 vs ≈ 0.79


def test_missing_lungs_give_empty_lung_maps(prior):
    image, anatomy = frontal_phantom()
    masks = {k: v for k, v in anatomy.masks.items() if k != "left lung"}
    (result,) = prior.predict([to_uint8(image)], [AnatomyResult(masks, {}, "phantom", "0")])
    assert all(not result.maps[t].any() for t in LUNG_TYPES)


def _real_cases(count: int):
    """Real radiographs at 512 px with their annotated lungs split into sides (no heart annotation)."""
    root = SHARED_DATA / "cxr-lungs-dev"
    xrv = pytest.importorskip("torchxrayvision")
    archive = Path(xrv.__file__).parent / "data" / "semantic_masks_v7labs_lungs.zip"
    if not (root / "manifest.csv").exists() or not archive.exists():
        pytest.skip("real radiographs not available")
    with open(root / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))[:count]
    cases = []
    with zipfile.ZipFile(archive) as masks:
        for row in rows:
            image = cv2.imread(str(root / "images" / row["image"]), cv2.IMREAD_GRAYSCALE)
            scale = 512 / max(image.shape)
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            lungs = cv2.imdecode(np.frombuffer(masks.read(row["mask_member"]), np.uint8), cv2.IMREAD_GRAYSCALE)
            lungs = cv2.resize(lungs, size, interpolation=cv2.INTER_NEAREST) >= 128
            _, labels, stats, _ = cv2.connectedComponentsWithStats(lungs.astype(np.uint8))
            first, second = (labels == k for k in np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:2] + 1)
            right, left = (first, second) if np.flatnonzero(first.any(0)).mean() < np.flatnonzero(second.any(0)).mean() else (second, first)
            masks_by_name = {"right lung": right, "left lung": left, "lung": right | left}
            cases.append((image, AnatomyResult(masks_by_name, {}, "v7labs", "0")))
    return cases


def test_real_radiographs_give_bounded_maps(prior):
    cases = _real_cases(5)
    results = prior.predict([image for image, _ in cases], [anatomy for _, anatomy in cases])
    strong_fractions = []
    for (image, anatomy), result in zip(cases, results):
        lungs = anatomy.masks["lung"]
        for lesion_map in result.maps.values():
            assert lesion_map.shape == image.shape and np.isfinite(lesion_map).all()
        strong_fractions.append(float((result.maps["opacity"][lungs] >= 0.5).mean()))
    # COVID-19 patients: opacities are expected, but never the whole lung field everywhere
    assert np.median(strong_fractions) < 0.3 and max(strong_fractions) < 0.7


@pytest.mark.parametrize("as_module", [True, False])
def test_xrv_prior_loads_saved_weights_and_maps_two_image_sizes(tmp_path, as_module):
    torch = pytest.importorskip("torch")
    xrv = pytest.importorskip("torchxrayvision")
    from anatomy_models.xrv_prior import XrvLesionPrior, padded_model_input

    save_random_densenet(tmp_path, "densenet121-res224-all", as_module)
    prior = XrvLesionPrior(weights_dir=str(tmp_path), device="cpu")
    first, first_anatomy = frontal_phantom(height=320, width=300)
    second, second_anatomy = frontal_phantom(height=256, width=300, seed=1)
    images = [to_uint8(first), to_uint8(second)]
    results = prior.predict(images, [first_anatomy, second_anatomy])
    assert len(results) == 2
    for image, anatomy, result in zip(images, [first_anatomy, second_anatomy], results):
        assert set(result.maps) == {t.value for t in LesionType} == set(result.probabilities)
        for lesion, lesion_map in result.maps.items():
            assert lesion_map.shape == image.shape and lesion_map.dtype == np.float32
            assert 0 <= lesion_map.min() and lesion_map.max() <= 1
        far_from_lungs = ~cv2.dilate(anatomy.masks["lung"].astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool)
        assert not result.maps["opacity"][far_from_lungs].any()
        near_heart = cv2.dilate(anatomy.masks["heart"].astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
        assert not result.maps["cardiomegaly"][~near_heart].any()
        assert result.backend == "xrv"
    # image-level probabilities are torchxrayvision's own output for these weights (sigmoid + operating points)
    model = xrv.models.DenseNet(weights=None, num_classes=18)
    model.load_state_dict(prior._model.state_dict(), strict=False)
    model.op_threshs = torch.tensor(xrv.models.model_urls["densenet121-res224-all"]["op_threshs"])
    model.eval()
    with torch.inference_mode():
        expected = model(torch.from_numpy(padded_model_input(images[1], 224)[0][None]))[0]
    labels = xrv.models.model_urls["densenet121-res224-all"]["labels"]
    assert results[1].probabilities["effusion"] == pytest.approx(float(expected[labels.index("Effusion")]), abs=1e-5)
    assert results[1].probabilities["opacity"] == pytest.approx(float(expected[labels.index("Lung Opacity")]), abs=1e-5)


def test_xrv_prior_without_weights_names_the_file_and_where_to_get_it(tmp_path):
    pytest.importorskip("torchxrayvision")
    from anatomy_models.xrv_prior import XrvLesionPrior

    from anatomy_models.weights import MissingWeightsError

    with pytest.raises(MissingWeightsError) as error:
        XrvLesionPrior(weights_dir=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt") in message
    assert "https://github.com/mlmed/torchxrayvision/releases/download/v1/" in message
    with pytest.raises(ValueError, match="unknown torchxrayvision"):
        XrvLesionPrior(weights="resnet50-res512-all", weights_dir=str(tmp_path))


def test_blunted_costophrenic_angle_adds_fluid_below_that_lung_only(prior):
    shape = (300, 300)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    # Lungs whose lowest point is lateral (sharp costophrenic angles); the right one (image left) has lost its
    # angle to fluid: its lower border (the meniscus) is highest laterally and far above the other lung's.
    sharp_right = (xx >= 40) & (xx < 130) & (yy >= 40) & (yy < 250 - (xx - 40) * 0.3)
    left = (xx >= 170) & (xx < 260) & (yy >= 40) & (yy < 223 + (xx - 170) * 0.3)
    blunted_right = (xx >= 40) & (xx < 130) & (yy >= 40) & (yy < 190 + (xx - 40) * 0.2)
    fluid = prior._subpulmonic_fluid(blunted_right, left)
    assert fluid[215:240, 45:80].mean() > 0.9  # deepest laterally, down to the clear lung's height
    assert not fluid[:, 150:].any() and not fluid[blunted_right].any()
    assert not prior._subpulmonic_fluid(sharp_right, left).any()
