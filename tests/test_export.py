"""Exports of a real run (synthetic corpus -> classical pipeline): mimic-ils-json, hf, and the loaders."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import UserError
from pipeline.export import export_run
from pipeline.writers import read_table
from transforms.loader import JsonExportPairs, RunPairs
from transforms.masks import decode_rle
from transforms.statistics import dataset_statistics

@pytest.fixture(scope="module")
def pairs(run_dir):
    rows = read_table(str(run_dir), "pairs").to_pylist()
    assert any(r["is_positive"] for r in rows) and any(not r["is_positive"] for r in rows)
    return rows


@pytest.fixture(scope="module")
def masks(run_dir):
    return {m["mask_id"]: m for m in read_table(str(run_dir), "masks").to_pylist()}


@pytest.fixture(scope="module")
def json_export(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "json"
    counts = export_run(run_dir, "mimic-ils-json", out)
    return out, counts


@pytest.fixture(scope="module")
def hf_export(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "hf"
    counts = export_run(run_dir, "hf", out)
    return out, counts


def _by_split(rows):
    out = {}
    for row in rows:
        out.setdefault(row["split"], set()).add(row["pair_id"])
    return out


def test_json_split_files_hold_exactly_each_splits_pairs(json_export, pairs, corpus):
    out, counts = json_export
    expected = _by_split(pairs)
    assert counts["pairs"] == len(pairs) and counts["masks"] == len({p["mask_id"] for p in pairs if p["mask_id"]})
    for split in ("train", "validate", "test"):
        items = json.loads((out / f"{split}.json").read_text())
        assert [i["id"] for i in items] == [p["pair_id"] for p in pairs if p["split"] == split]
        assert {i["id"] for i in items} == expected.get(split, set())
        assert all(i["split"] == split for i in items)
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["corpus_root"] == str(corpus.resolve())
    assert metadata["splits"] == {s: len(expected.get(s, ())) for s in ("train", "validate", "test")}


def test_json_items_carry_the_pair_fields(json_export, pairs, corpus):
    out, _ = json_export
    by_id = {p["pair_id"]: p for p in pairs}
    items = [i for split in ("train", "validate", "test") for i in json.loads((out / f"{split}.json").read_text())]
    for item in items:
        pair = by_id[item["id"]]
        assert item["image"] == pair["image_path"] and (corpus / item["image"]).is_file()
        for key in ("instruction", "answer", "target", "instruction_type", "locations", "reported_locations",
                    "grounded_locations", "sent_idx", "is_positive", "negative_kind"):
            assert item[key] == pair[key], key
        assert item["conversations"][0]["value"].endswith(pair["instruction"])
        assert item["conversations"][1]["value"] == pair["answer"]


def test_json_mask_pngs_decode_to_the_rle_pixels(json_export, pairs, masks):
    out, _ = json_export
    items = [i for split in ("train", "validate", "test") for i in json.loads((out / f"{split}.json").read_text())]
    negatives = [i for i in items if not i["is_positive"]]
    assert negatives and all(i["mask"] is None and i["negative_kind"] for i in negatives)
    positives = [i for i in items if i["is_positive"]]
    assert positives
    for item in positives:
        png = cv2.imread(str(out / item["mask"]), cv2.IMREAD_UNCHANGED)
        row = masks[item["mask_id"]]
        assert png.dtype == np.uint8 and png.ndim == 2 and set(np.unique(png)) <= {0, 255}
        assert np.array_equal(png == 255, decode_rle(row["rle"], row["height"], row["width"]))
    # one PNG per referenced mask, shared by the pairs that reference it
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == sorted({i["mask_id"] for i in positives})


def test_hf_parquet_reads_back_with_masks_that_decode(hf_export, pairs, masks):
    out, counts = hf_export
    expected = _by_split(pairs)
    card = (out / "README.md").read_text()
    for split, ids in expected.items():
        assert f"path: data/{split}-*.parquet" in card
        files = sorted((out / "data").glob(f"{split}-*.parquet"))
        # what load_dataset("parquet", data_files=...) reads: the files' rows, in order
        rows = [r for f in files for r in pq.read_table(f).to_pylist()]
        assert [r["pair_id"] for r in rows] == [p["pair_id"] for p in pairs if p["split"] == split]
        assert counts["splits"][split] == len(ids)
        for row in rows:
            if row["is_positive"]:
                m = masks[row["mask_id"]]
                assert (row["mask_height"], row["mask_width"], row["mask_area"]) == (m["height"], m["width"], m["area"])
                assert decode_rle(row["mask_rle"], row["mask_height"], row["mask_width"]).sum() == m["area"]
            else:
                assert row["mask_id"] is None and row["mask_rle"] is None and row["mask_bbox"] is None


def test_hf_folder_loads_with_datasets(hf_export, pairs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # local files only: never reach for the Hub
    datasets = pytest.importorskip("datasets")
    out, _ = hf_export
    expected = _by_split(pairs)
    files = {split: str(out / "data" / f"{split}-*.parquet") for split in expected}
    loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "a"))
    from_card = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "b"))
    for ds in (loaded, from_card):
        assert {s: set(ds[s]["pair_id"]) for s in ds} == expected
    positive = next(r for split in loaded for r in loaded[split] if r["is_positive"])
    mask = decode_rle(positive["mask_rle"], positive["mask_height"], positive["mask_width"])
    assert mask.sum() == positive["mask_area"]


def test_loaders_agree_on_images_masks_and_text(run_dir, json_export, pairs):
    out, _ = json_export
    from_run = RunPairs(run_dir)
    assert len(from_run) == len(pairs)
    by_id = {}
    for i in range(len(from_run)):
        decoded = from_run[i]
        assert decoded.image.dtype == np.uint8 and decoded.image.ndim == 2
        if decoded.pair["is_positive"]:
            assert decoded.mask.dtype == bool and decoded.mask.shape == decoded.image.shape and decoded.mask.any()
        else:
            assert decoded.mask is None and "There is no" in decoded.answer
        by_id[decoded.pair["pair_id"]] = decoded
    for split in ("train", "validate", "test"):
        exported = JsonExportPairs(out, split)
        assert len(exported) == sum(p["split"] == split for p in pairs)
        for i in range(len(exported)):
            decoded = exported[i]
            same = by_id[decoded.pair["id"]]
            assert (decoded.instruction, decoded.answer) == (same.instruction, same.answer)
            assert np.array_equal(decoded.image, same.image)
            assert (decoded.mask is None) == (same.mask is None)
            if decoded.mask is not None:
                assert np.array_equal(decoded.mask, same.mask)


def test_statistics_of_the_run_match_its_pairs_table(run_dir, pairs):
    stats = dataset_statistics(pq.read_table(run_dir / "pairs"))
    assert stats["n_pairs"] == len(pairs)
    for pair in pairs:
        polarity = "positive" if pair["is_positive"] else "negative"
        stats["by_lesion_instruction"][pair["target"]][pair["instruction_type"]][polarity] -= 1
        stats["by_split"][pair["split"]][polarity] -= 1
        if not pair["is_positive"]:
            stats["by_negative_kind"][pair["negative_kind"]] -= 1
    assert all(n == 0 for by_type in stats["by_lesion_instruction"].values() for cell in by_type.values()
               for n in cell.values())
    assert all(v["positive"] == v["negative"] == 0 for v in stats["by_split"].values())
    assert set(stats["by_negative_kind"].values()) == {0}


def test_user_mistakes_are_one_line_errors(run_dir, json_export, tmp_path):
    with pytest.raises(UserError, match="unknown export format"):
        export_run(run_dir, "coco", tmp_path / "x")
    with pytest.raises(UserError, match="not a run directory"):
        export_run(tmp_path, "hf", tmp_path / "x")
    with pytest.raises(UserError, match="not empty"):
        export_run(run_dir, "hf", json_export[0])
    with pytest.raises(UserError, match="inside the run directory"):
        export_run(run_dir, "hf", run_dir / "export")
    with pytest.raises(UserError, match="corpus root not found"):
        export_run(run_dir, "hf", tmp_path / "x", corpus_root=tmp_path / "moved-away")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".*inprogress"))


def test_export_is_byte_identical_when_repeated(run_dir, json_export, corpus, tmp_path):
    again = tmp_path / "again"
    export_run(run_dir, "mimic-ils-json", again, corpus_root=corpus)
    first = json_export[0]
    names = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((first / n).read_bytes() == (again / n).read_bytes() for n in names)
