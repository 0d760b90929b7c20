"""The vision-only evaluation (`bench/eval_grounding.py --vision-only`) on the shared synthetic corpus."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.config import load_config

_spec = importlib.util.spec_from_file_location("eval_grounding", Path(__file__).parents[1] / "bench" / "eval_grounding.py")
eval_grounding = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_grounding)


def test_vision_only_scores_each_reported_lesion_of_each_frontal_image_once(corpus, tmp_path):
    outcomes = []
    rows = eval_grounding.score_vision_only(corpus, load_config("classical").config, outcomes=outcomes)
    truth = pq.read_table(corpus / "ground_truth" / "findings.parquet").to_pylist()
    definite = {(r["dicom_id"], r["target"]): r["visible"] for r in truth
                if r["dicom_id"] and r["presence"] == "present" and r["certainty"] == "definite"}
    for target in {t for _, t in definite}:
        row = rows[target]
        visible = sum(v for (_, t), v in definite.items() if t == target)
        assert row["visible"] == visible and row["invisible"] == sum(t == target for _, t in definite) - visible
        missed = sum(v for k, v in row.items() if k.startswith("missed: "))
        assert row["grounded"] + missed == visible
        assert 0 <= row["iou_sum"] <= row["grounded"]
    assert rows["cardiomegaly"]["grounded"] > 0 and rows["cardiomegaly"]["iou_sum"] / rows["cardiomegaly"]["grounded"] > 0.6

    # one outcome per finding, agreeing with the table
    assert len(outcomes) == len(definite)
    for target, row in rows.items():
        mine = [o for o in outcomes if o["target"] == target and o["visible"]]
        assert sum(o["outcome"] == "grounded" for o in mine) == row["grounded"]
        assert abs(sum(o["iou"] for o in mine if o["outcome"] == "grounded") - row["iou_sum"]) < 1e-3
        for key, count in row.items():
            if key.startswith("missed: "):
                assert sum(o["outcome"] == key.split(": ")[1] and o["stage"] != "" for o in mine) == count
    for o in outcomes:
        if o["iou"] is not None:
            assert 0 <= o["iou"] <= min(o["true_covered"], 1.0) + 1e-9 and o["mask_over_true_area"] > 0
    path = tmp_path / "outcomes.csv"
    eval_grounding.write_outcomes(path, [{"corpus": "c", **o} for o in outcomes])
    with open(path, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(outcomes)


def test_true_anatomy_gives_the_grounding_the_corpus_s_own_heart(corpus):
    rows = eval_grounding.score_vision_only(corpus, load_config("classical").config, use_true_anatomy=True)
    cardiomegaly = rows["cardiomegaly"]
    # the true mask of an enlarged heart is the true heart itself: with the true anatomy the two coincide
    assert cardiomegaly["grounded"] > 0 and cardiomegaly["iou_sum"] / cardiomegaly["grounded"] > 0.99


def test_degrade_changes_the_film_as_asked_and_the_same_way_every_time():
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (64, 1)).astype(np.uint8)
    assert np.array_equal(eval_grounding.degrade(ramp), ramp)
    darker = eval_grounding.degrade(ramp, gamma=1.6)
    assert darker[0, 32] < ramp[0, 32] and darker[0, 0] == 0 and darker[0, -1] == 255
    noisy = eval_grounding.degrade(ramp, noise=10)
    assert np.array_equal(noisy, eval_grounding.degrade(ramp, noise=10))
    assert 5 < np.std(noisy.astype(float) - ramp) < 15
    step = np.zeros((64, 64), np.uint8)
    step[:, 32:] = 255
    blurred = eval_grounding.degrade(step, blur=3)
    assert 0 < blurred[0, 31] < 255 and blurred[0, 0] == 0
