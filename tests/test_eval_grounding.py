"""The vision-only evaluation (`bench/eval_grounding.py --vision-only`) on the shared synthetic corpus."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.config import load_config

_spec = importlib.util.spec_from_file_location("eval_grounding", Path(__file__).parents[1] / "bench" / "eval_grounding.py")
eval_grounding = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_grounding)


def test_vision_only_scores_each_reported_lesion_of_each_frontal_image_once(corpus):
    rows = eval_grounding.score_vision_only(corpus, load_config("classical").config)
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
