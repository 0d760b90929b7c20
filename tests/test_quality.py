"""The quality gate on real run directories: a good run passes, deliberately broken copies fail by name."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.quality import PrewarmedGate, validate_run
from schemas.config import QualityConfig, quality_config
from pipeline.writers import read_table, table_to_bytes
from transforms.mask_outliers import DESCRIPTOR_NAMES, flag_mask_outliers, mask_descriptors
from transforms.masks import encode_rle

from conftest import SYNTH_STUDIES

FAST = QualityConfig(data_docs=False)


def rewrite(run_dir, table: str, edit) -> None:
    """Replace a table of a run directory by `edit(rows)`, written as one shard like the pipeline writes it."""
    rows = edit(read_table(str(run_dir), table).to_pylist())
    for shard in (run_dir / table).glob("part-*.parquet"):
        shard.unlink()
    (run_dir / table / "part-00000.parquet").write_bytes(table_to_bytes(table, rows, 1000, "zstd"))


def test_good_run_passes_and_writes_results_and_data_docs(run_dir):
    report = validate_run(run_dir)
    assert report.success, report.format_table()
    assert len(report.outcomes) > 100
    suites = {o.suite for o in report.outcomes}
    assert {"studies", "pairs", "masks", "findings", "discarded", "errors", "mask_geometry", "list_values",
            "contract"} <= suites
    saved = json.loads((run_dir / "quality" / "results.json").read_text())
    assert saved["success"] and saved["n_expectations"] == len(report.outcomes)
    assert (run_dir / "quality" / "great_expectations" / "pairs.json").is_file()
    index = run_dir / "quality" / "data_docs" / "index.html"
    assert report.data_docs_index == index and index.is_file()
    assert list((run_dir / "quality" / "data_docs" / "validations").rglob("*.html"))
    landing = (run_dir / "quality" / "index.html").read_text()
    assert "PASS" in landing and "validations/mimic_ils/pairs/" in landing
    table = report.format_table()
    assert "PASS" in table and "pairs" in table


def _verdicts(report):
    return [(o.suite, o.rule, o.success, o.message) for o in report.outcomes], report.suites, report.mask_outliers


def test_the_prewarmed_gate_reports_what_validate_run_reports(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("quality", "audit"))
    rewrite(copy, "studies", lost_study)  # a failing run: the failures must come back from the child too
    from_child = PrewarmedGate().validate(copy, FAST)
    assert not from_child.success and _verdicts(from_child) == _verdicts(validate_run(copy, FAST))


def test_the_gate_validates_in_process_when_its_child_is_gone(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("quality", "audit"))
    gate = PrewarmedGate()
    gate._process.kill()
    gate._process.join()
    report = gate.validate(copy, FAST)
    assert report.success and not gate._process.is_alive()


def _first(rows, predicate):
    return next(i for i, r in enumerate(rows) if predicate(r))


def dangling_mask_id(rows):
    rows[_first(rows, lambda r: r["is_positive"])]["mask_id"] = "0" * 24
    return rows


def out_of_vocabulary_location(rows):
    rows[_first(rows, lambda r: r["locations"])]["locations"] = ["left lobe"]
    return rows


def negative_with_a_mask(rows):
    mask = next(r["mask_id"] for r in rows if r["is_positive"])
    rows[_first(rows, lambda r: not r["is_positive"])]["mask_id"] = mask
    return rows


def lost_study(rows):
    return rows[1:]


BREAKAGES = {  # each on its own rows, so one copy holds all four and each message must still show up
    "dangling mask_id": ("pairs", dangling_mask_id, ["mask_id " + "0" * 24, "missing from masks"]),
    "out-of-vocabulary location": ("pairs", out_of_vocabulary_location,
                                   ["pairs.locations", "Location vocabulary", "left lobe"]),
    "negative with a mask": ("pairs", negative_with_a_mask, ["mask_id is null for negative pairs"]),
    "lost study": ("studies", lost_study, ["one row per input study", f"{SYNTH_STUDIES} in the manifest",
                                           f"observed {SYNTH_STUDIES - 1}"]),
}


@pytest.fixture(scope="module")
def broken_report(run_dir, tmp_path_factory):
    copy = tmp_path_factory.mktemp("broken") / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("quality", "audit"))
    for table, edit, _ in BREAKAGES.values():
        rewrite(copy, table, edit)
    return validate_run(copy, FAST)


@pytest.mark.parametrize("problem", list(BREAKAGES))
def test_a_broken_copy_fails_with_a_message_naming_each_problem(broken_report, problem):
    assert not broken_report.success and "FAIL" in broken_report.format_table()
    needles = BREAKAGES[problem][2]
    messages = [o.message for o in broken_report.failures]
    assert any(all(n in m for n in needles) for m in messages), messages


def test_settings_come_from_a_quality_section_or_default():
    assert quality_config(None) == QualityConfig()
    section = {"quality": {"negative_ratio_band": [1, 2], "outlier_score_threshold": 0.5}}
    settings = quality_config(None, {"config": section})
    assert settings.negative_ratio_band == (1, 2) and settings.outlier_score_threshold == 0.5


def _disc(height, width, cy, cx, radius):
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


def test_descriptors_say_where_and_how_big_a_mask_is():
    mask = np.zeros((400, 300), bool)
    mask[300:400, 0:150] = True  # the image-left (patient's right) bottom quarter
    d = dict(zip(DESCRIPTOR_NAMES, mask_descriptors(mask)))
    assert d["area_fraction"] == pytest.approx(0.125, abs=0.01)
    assert d["centroid_x"] == pytest.approx(0.25, abs=0.02) and d["centroid_y"] == pytest.approx(0.875, abs=0.02)
    assert d["grid_r3c0"] == pytest.approx(1.0) and d["bbox_fill"] == pytest.approx(1.0)


def test_hdbscan_flags_the_mask_unlike_the_others():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):  # basal effusions: similar size, at the image-left base
        mask = _disc(256, 256, 200 + rng.integers(-6, 6), 60 + rng.integers(-6, 6), 28 + rng.integers(-3, 3))
        rows.append({"mask_id": f"m{i:02d}", "target": "effusion", "rle": encode_rle(mask), "height": 256, "width": 256})
    odd = np.zeros((256, 256), bool)
    odd[5:40, 20:250] = True  # a wide band over the apices
    rows.append({"mask_id": "odd", "target": "effusion", "rle": encode_rle(odd), "height": 256, "width": 256})
    rows.append({"mask_id": "lone", "target": "edema", "rle": encode_rle(odd), "height": 256, "width": 256})
    scores = {s.mask_id: s for s in flag_mask_outliers(rows, min_masks=10, min_cluster_size=5, min_samples=None,
                                                       score_threshold=0.8)}
    assert scores["odd"].flagged and scores["odd"].score == max(s.score for s in scores.values() if s.score is not None)
    assert sum(s.flagged for s in scores.values()) <= 3
    assert scores["lone"].score is None and not scores["lone"].flagged  # too few edema masks to judge
