"""End to end: synthetic corpus -> Beam pipeline (classical backends) -> the six tables, checked."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.contract import check_run
from pipeline.run import run_pipeline
from pipeline.writers import read_table
from schemas.tables import TABLES
from transforms.masks import decode_rle

from conftest import SYNTH_STUDIES

NO_GATE = ["quality.validate_after_run=false"]  # the quality gate runs once, on the main run


def tables(out):
    return {name: read_table(str(out), name).to_pylist() for name in TABLES}


def test_tables_honour_the_contract(run_dir, corpus):
    assert check_run(run_dir) == []
    t = tables(run_dir)
    for name in ("studies", "pairs", "masks", "findings", "discarded"):
        assert t[name], f"{name} is empty"
    for name, schema in TABLES.items():
        for shard in (run_dir / name).glob("part-*.parquet"):
            assert pq.read_schema(shard).equals(schema, check_metadata=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"]["studies"] == SYNTH_STUDIES == len({r["study_id"] for r in t["studies"]})
    assert manifest["contract_problems"] == [] and manifest["config_name"] == "classical"
    quality = json.loads((run_dir / "quality" / "results.json").read_text())
    assert quality["success"], quality
    assert (run_dir / "statistics.png").is_file() and manifest["statistics"]["n_pairs"] == len(t["pairs"])


def test_positive_masks_overlap_the_ground_truth(run_dir, corpus):
    import cv2

    t = tables(run_dir)
    masks = {m["mask_id"]: m for m in t["masks"]}
    hits, total = 0, 0
    for pair in t["pairs"]:
        if not pair["is_positive"]:
            assert pair["mask_id"] is None
            continue
        if pair["instruction_type"] != "global":
            continue
        mask = masks[pair["mask_id"]]
        truth_path = corpus / "ground_truth" / "masks" / pair["dicom_id"] / f"{pair['target']}.png"
        total += 1
        if truth_path.is_file():
            truth = cv2.imread(str(truth_path), cv2.IMREAD_GRAYSCALE) > 127
            predicted = decode_rle(mask["rle"], mask["height"], mask["width"])
            assert predicted.shape == truth.shape
            hits += bool((predicted & truth).sum() / predicted.sum() > 0.3)
    assert total > 0 and hits / total >= 0.6, f"{hits}/{total} positive masks overlap their ground truth"


def test_reported_but_invisible_findings_are_mostly_discarded(run_dir, corpus):
    truth = pq.read_table(corpus / "ground_truth" / "findings.parquet").to_pylist()
    invisible = {(r["dicom_id"], r["target"]) for r in truth
                 if r["presence"] == "present" and r["certainty"] == "definite" and not r["visible"]}
    positives = {(p["dicom_id"], p["target"]) for p in tables(run_dir)["pairs"] if p["is_positive"]}
    if invisible:
        assert len(invisible & positives) / len(invisible) <= 0.5


def test_same_input_gives_byte_identical_tables_with_two_worker_processes(run_dir, corpus, tmp_path):
    out = tmp_path / "again"
    run_pipeline(corpus, out, load_config("classical", NO_GATE),
                 ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"], overwrite=True)
    for name in ("pairs", "masks", "findings", "studies", "discarded"):
        first = sorted((run_dir / name).glob("part-*.parquet"))
        second = sorted((out / name).glob("part-*.parquet"))
        assert [p.name for p in first] == [p.name for p in second]
        for a, b in zip(first, second):
            assert a.read_bytes() == b.read_bytes(), f"{name}/{a.name} differs"


def test_existing_output_is_refused_without_overwrite(run_dir, corpus):
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="--overwrite"):
        run_pipeline(corpus, run_dir, load_config("classical", NO_GATE))


def test_a_refiner_failing_on_some_images_fails_those_alone(run_dir, corpus, tmp_path, monkeypatch):
    """Images are grounded a batch at a time; an image the refiner breaks on becomes its own error row, and the
    other images of its batch are grounded as in a clean run."""
    from anatomy_models import base
    from anatomy_models.backends import BACKEND_MODULES
    from anatomy_models.classical_refiner import GrabCutRefiner
    from transforms.images import decode_for_models

    def breaks_on(image) -> bool:  # deterministic per image: even widths at the work size
        return image.shape[1] % 2 == 0

    class FailsOnSomeImages(GrabCutRefiner):
        name = "fails_on_some"

        def refine(self, image, boxes, seeds):
            if boxes and breaks_on(image):
                raise RuntimeError("refiner broke on this image")
            return super().refine(image, boxes, seeds)

    monkeypatch.setitem(base._REGISTRIES["refiner"], "fails_on_some", FailsOnSomeImages)
    monkeypatch.setitem(BACKEND_MODULES["refiner"], "fails_on_some", FailsOnSomeImages.__module__)
    config = load_config("classical", ["refiner.backend=fails_on_some", *NO_GATE])
    out = tmp_path / "run"
    run_pipeline(corpus, out, config, overwrite=True)
    assert check_run(out) == []
    failed = [e for e in tables(out)["errors"] if e["stage"] == "refine"]
    assert failed and all(e["message"] == "refiner broke on this image" for e in failed)
    for error in failed:
        pixels, _ = decode_for_models(corpus / error["input_path"], config.config.vision.work_size)
        assert breaks_on(pixels), error["key"]
    clean = json.loads((run_dir / "manifest.json").read_text())["counters"]["images_grounded"]
    assert json.loads((out / "manifest.json").read_text())["counters"]["images_grounded"] == clean - len(failed)
