"""The phantom's lesions drawn into a radiograph whose lungs are known, and the real-film evaluation built on it."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import load_config
from schemas.vocab import LesionType, Location
from transforms.phantom import LesionSpec, draw_frontal, draw_into_radiograph

DEV_SET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-lungs-dev"
SPECS = [
    LesionSpec(("consolidation",), "consolidation", ("right lung base",), 0.6),
    LesionSpec(("pneumonia",), "pneumonia", ("left mid zone lung",), 0.6),
    LesionSpec(("opacity",), "opacity", ("right upper zone lung",), 0.8),
    LesionSpec(("atelectasis",), "atelectasis", ("left lung base", "right lung base"), 0.7),
    LesionSpec(("effusion",), "effusion", ("left lung",), 0.6),
    LesionSpec(("edema",), "edema", (), 0.7),
]


@pytest.fixture(scope="module")
def clear_film():
    """A phantom film without lesions and its true lungs, standing in for a real radiograph."""
    image, _, anatomy = draw_frontal(np.random.default_rng(3), 640, 600)
    return image, anatomy[Location.RIGHT_LUNG.value], anatomy[Location.LEFT_LUNG.value]


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.style)
def test_a_drawn_lesion_brightens_its_true_mask_inside_its_lung_and_nothing_outside_the_lungs(clear_film, spec):
    image, right, left = clear_film
    drawn, mask = draw_into_radiograph(np.random.default_rng(0), image, right, left, spec)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    sides = {loc.split()[0] for loc in spec.locations}
    home = right if sides == {"right"} else left if sides == {"left"} else right | left
    assert mask.sum() > 0.005 * mask.size and not (mask & ~home).any()
    change = drawn.astype(np.int16) - image.astype(np.int16)
    assert change[mask].mean() > 8  # air replaced by fluid or tissue: denser, brighter
    near_lungs = cv2.dilate((right | left).astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    assert not change[~near_lungs].any()


def test_an_effusion_fills_its_lung_from_the_base(clear_film):
    image, right, left = clear_film
    _, mask = draw_into_radiograph(np.random.default_rng(1), image, right, left, SPECS[4])
    lung_rows, fluid_rows = np.flatnonzero(left.any(axis=1)), np.flatnonzero(mask.any(axis=1))
    assert fluid_rows[-1] >= lung_rows[-1] - 2  # down to the costophrenic angle
    assert fluid_rows[0] > lung_rows[0] + 0.4 * (lung_rows[-1] - lung_rows[0])  # below the upper lung


def test_the_same_draw_gives_the_same_film_and_cardiomegaly_is_refused(clear_film):
    image, right, left = clear_film
    first = draw_into_radiograph(np.random.default_rng(7), image, right, left, SPECS[0])
    second = draw_into_radiograph(np.random.default_rng(7), image, right, left, SPECS[0])
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    with pytest.raises(ValueError, match="cardiomegaly"):
        draw_into_radiograph(np.random.default_rng(7), image, right, left,
                             LesionSpec(("cardiomegaly",), "cardiomegaly", ("heart",), 0.5))


def test_the_real_film_evaluation_scores_each_drawn_lesion_and_its_untouched_film(tmp_path):
    if not (DEV_SET / "manifest.csv").exists():
        pytest.skip("../shared/data/cxr-lungs-dev not available")
    bench = Path(__file__).parents[1] / "bench"
    spec = importlib.util.spec_from_file_location("eval_insertion", bench / "eval_insertion.py")
    sys.path.insert(0, str(bench))  # eval_insertion imports its sibling scripts
    try:
        eval_insertion = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(eval_insertion)
    finally:
        sys.path.remove(str(bench))
    outcomes = []
    types = (LesionType.EFFUSION, LesionType.CONSOLIDATION)
    rows = eval_insertion.score_insertion(DEV_SET, load_config("classical").config, per_film=2, seed=0,
                                          outcomes=outcomes, types=types, films=3)
    assert len(outcomes) == 3 * 2 * 2  # each drawn lesion, and the same finding on the untouched film
    for target in types:
        row = rows[target.value]
        assert row["visible"] == row["invisible"] == 3
        missed = sum(v for k, v in row.items() if k.startswith("missed: "))
        assert row["grounded"] + missed == 3
    # the drawn fluid is found where it was drawn
    effusion = rows["effusion"]
    assert effusion["grounded"] >= 2 and effusion["iou_sum"] / effusion["grounded"] > 0.1
    assert all(o["visible"] == (o["iou"] is not None) for o in outcomes if o["outcome"] == "grounded")
