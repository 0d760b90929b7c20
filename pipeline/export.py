"""`mimic-ils export`: a run directory -> training-ready folders (DESIGN.md §4).

- `mimic-ils-json`: the layout LISA-style training code reads. One JSON list per split (`train.json`,
  `validate.json`, `test.json`, always present, empty when a split has no pair), one PNG per mask
  (`masks/<mask_id>.png`, 0/255 at source resolution, shared by the pairs that reference it) and
  `metadata.json` with the corpus root that the items' `image` paths are relative to.
- `hf`: a Hugging Face `datasets` folder: `data/<split>-NNNNN-of-NNNNN.parquet` (the pair columns joined
  with their mask's RLE, height, width, area and bbox), a README.md dataset card whose `configs` block
  lets `load_dataset(DIR)` find the splits, and the same `metadata.json`.

The folder is built beside the output and renamed into place, so a failed export leaves nothing that
looks finished. Nothing time-dependent is written: the same run exports to the same bytes.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.run import MANIFEST
from pipeline.writers import read_table
from schemas.tables import PAIRS, SCHEMA_METADATA_KEY
from schemas.vocab import SCHEMA_VERSION, Split
from transforms.masks import decode_rle

FORMATS = ("mimic-ils-json", "hf")
METADATA = "metadata.json"
MASK_DIR = "masks"
HF_DATA_DIR = "data"
HF_ROWS_PER_FILE = 200_000
HF_ROW_GROUP_ROWS = 10_000
# 0/255 masks: run-length deflate without row filters is both small and fast
PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
               cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
# The mask columns an `hf` row carries (null for negatives), named `mask_<column>`.
HF_MASK_COLUMNS = ("height", "width", "rle", "area", "bbox")


def mask_png_path(mask_id: str) -> str:
    """Where a mask's PNG lies in a mimic-ils-json export, relative to the export folder."""
    return f"{MASK_DIR}/{mask_id}.png"


def _check_run_dir(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    missing = [name for name in ("pairs", "masks") if not (run_dir / name).is_dir()]
    if not (run_dir / MANIFEST).is_file() or missing:
        raise UserError(f"{run_dir} is not a run directory (needs {MANIFEST}, pairs/ and masks/): "
                        "pass the --output folder of `mimic-ils run`")
    try:
        return json.loads((run_dir / MANIFEST).read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{run_dir / MANIFEST} is not valid JSON ({exc}): re-run the pipeline") from exc


def _check_output(output: Path, run_dir: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"export folder {output} exists and is not empty: choose another --output or remove it")
    if output == run_dir or run_dir in output.parents:
        raise UserError(f"export folder {output} is inside the run directory: choose a folder outside it")


def _referenced_masks(pairs: pa.Table, masks: pa.Table) -> pa.Table:
    """The masks the pairs reference, in mask_id order; a dangling reference means the run is damaged."""
    wanted = pc.unique(pairs.column("mask_id").drop_null())
    known = set(masks.column("mask_id").to_pylist())
    dangling = [m for m in wanted.to_pylist() if m not in known]
    if dangling:
        raise UserError(f"the run is inconsistent: {len(dangling)} mask ids that pairs reference (e.g. {dangling[0]}) "
                        "are missing from masks/: re-run the pipeline")
    # mask_id is a content hash that includes the dicom_id, so each id has exactly one row
    return masks.filter(pc.is_in(masks.column("mask_id"), value_set=wanted)).sort_by("mask_id")


def _splits(pairs: pa.Table) -> list[str]:
    if pairs.column("split").null_count:
        raise UserError("the run is inconsistent: some pairs have no split: re-run the pipeline")
    present = set(pc.unique(pairs.column("split")).to_pylist())
    standard = [s.value for s in Split]
    return [s for s in standard if s in present] + sorted(present - set(standard))


def _metadata(fmt: str, run_dir: Path, manifest: dict, corpus_root: str | None, counts: dict) -> dict:
    return {
        "format": fmt,
        "schema_version": SCHEMA_VERSION,
        "corpus_root": corpus_root,
        "image_paths": "relative to corpus_root (MIMIC-CXR-JPG layout: files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg)",
        "source_run": str(run_dir),
        "run_id": manifest.get("run_id"),
        "config_name": manifest.get("config_name"),
        "config_hash": manifest.get("config_hash"),
        "code_version": manifest.get("code_version"),
        **counts,
    }


def _write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")


# --- mimic-ils-json ---------------------------------------------------------------------------------------------

def json_item(pair: dict) -> dict:
    """One pair as a mimic-ils-json item: the LISA-style fields first, the pair's provenance after."""
    mask = mask_png_path(pair["mask_id"]) if pair["mask_id"] is not None else None
    return {
        "id": pair["pair_id"],
        "image": pair["image_path"],
        "mask": mask,
        "instruction": pair["instruction"],
        "answer": pair["answer"],
        "conversations": [{"from": "human", "value": "<image>\n" + pair["instruction"]},
                          {"from": "gpt", "value": pair["answer"]}],
        "target": pair["target"],
        "instruction_type": pair["instruction_type"],
        "locations": pair["locations"],
        "reported_locations": pair["reported_locations"],
        "grounded_locations": pair["grounded_locations"],
        "sent_idx": pair["sent_idx"],
        "is_positive": pair["is_positive"],
        "negative_kind": pair["negative_kind"],
        "split": pair["split"],
        "subject_id": pair["subject_id"],
        "study_id": pair["study_id"],
        "dicom_id": pair["dicom_id"],
        "finding_id": pair["finding_id"],
        "mask_id": pair["mask_id"],
    }


def mask_png(rle: str, height: int, width: int) -> np.ndarray:
    """The mask as a C-ordered (height, width) 0/255 uint8 image, ready for PNG encoding."""
    mask = decode_rle(rle, height, width)  # column-major, as COCO RLE runs down the columns
    image = cv2.transpose(mask.T.view(np.uint8))  # row-major copy; cv2's transpose is far faster than numpy's
    np.multiply(image, 255, out=image)
    return image


def _write_mask_png(folder: Path, row: dict) -> None:
    path = folder / f"{row['mask_id']}.png"
    if not cv2.imwrite(str(path), mask_png(row["rle"], row["height"], row["width"]), PNG_OPTIONS):
        raise OSError(f"could not write {path}")


def write_mask_pngs(masks: pa.Table, folder: Path, workers: int | None = None) -> int:
    """Decode every mask's RLE into `folder/<mask_id>.png`; in threads, since PNG encoding (most of the cost)
    releases the GIL."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = masks.select(["mask_id", "rle", "height", "width"]).to_pylist()
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for _ in pool.map(lambda row: _write_mask_png(folder, row), rows):
            pass
    return len(rows)


def _export_json(pairs: pa.Table, masks: pa.Table, splits: list[str], folder: Path) -> dict:
    by_split: dict[str, list[dict]] = {s: [] for s in [s.value for s in Split] + splits}
    for pair in pairs.to_pylist():
        by_split[pair["split"]].append(json_item(pair))
    for split, items in by_split.items():
        _write_json(folder / f"{split}.json", items)
    n_masks = write_mask_pngs(masks, folder / MASK_DIR)
    return {"splits": {s: len(items) for s, items in by_split.items()}, "masks": n_masks}


# --- hf ---------------------------------------------------------------------------------------------------------

def hf_table(pairs: pa.Table, masks: pa.Table) -> pa.Table:
    """The pair columns and, for positives, their mask's columns (`mask_rle`, ...); negatives get nulls."""
    index = pc.index_in(pairs.column("mask_id"), value_set=masks.column("mask_id"))
    joined = pairs
    for name in HF_MASK_COLUMNS:
        column = masks.column(name).take(index)
        if pa.types.is_fixed_size_list(column.type):
            # null fixed-size lists do not survive the dataset scanner `datasets` reads with: a plain list does
            column = column.cast(pa.list_(column.type.value_type))
        joined = joined.append_column(f"mask_{name}", column)
    return joined.replace_schema_metadata({SCHEMA_METADATA_KEY: SCHEMA_VERSION.encode(),
                                           b"mimic_ils_table": b"hf_pairs"})


def _hf_files(split: str, n_rows: int) -> list[tuple[str, int, int]]:
    """(file name, first row, row count) of a split's parquet files, named as the Hub names them."""
    n_files = max(1, math.ceil(n_rows / HF_ROWS_PER_FILE))
    return [(f"{split}-{i:05d}-of-{n_files:05d}.parquet", i * HF_ROWS_PER_FILE,
             min(HF_ROWS_PER_FILE, n_rows - i * HF_ROWS_PER_FILE)) for i in range(n_files)]


_HF_FEATURES = {
    "pair_id": "deterministic id of the pair",
    "split": "train / validate / test (from mimic-cxr-2.0.0-split.csv.gz)",
    "subject_id": "MIMIC-CXR subject id",
    "study_id": "MIMIC-CXR study id",
    "dicom_id": "the image's id",
    "image_path": "image path relative to `corpus_root` (metadata.json)",
    "instruction_type": "global | basic | lesion_inference",
    "target": "lesion type: cardiomegaly, pneumonia, atelectasis, opacity, consolidation, edema, effusion",
    "locations": "the CXAS locations the instruction names (empty for global instructions)",
    "is_positive": "true when the answer comes with a mask",
    "negative_kind": "negative_reported_lesion | not_reported_lesion | location_without_lesion | "
                     "grounding_no_location_extension (null for positives)",
    "instruction": "the instruction text",
    "answer": "the answer text (`[SEG]` marks the mask token)",
    "mask_id": "content hash of the mask (null for negatives)",
    "finding_id": "the structured report finding behind the pair",
    "sent_idx": "index of the report sentence the finding comes from",
    "reported_locations": "locations the report gives for the finding",
    "grounded_locations": "locations the grounding verified",
    "mask_height": "mask (= source image) height in pixels",
    "mask_width": "mask (= source image) width in pixels",
    "mask_rle": "COCO compressed RLE counts (string) of the mask at source resolution",
    "mask_area": "mask area in pixels",
    "mask_bbox": "mask bounding box [x, y, w, h]",
}


def _hf_card(table: pa.Schema, files: dict[str, list[str]], counts: dict[str, int], corpus_root: str | None) -> str:
    config = "\n".join(f"  - split: {split}\n    path: {HF_DATA_DIR}/{split}-*.parquet" for split in files)
    features = "\n".join(f"| `{f.name}` | `{f.type}` | {_HF_FEATURES.get(f.name, '')} |" for f in table)
    sizes = "\n".join(f"| {split} | {counts[split]:,} |" for split in files)
    return f"""---
configs:
- config_name: default
  data_files:
{config}
task_categories:
- image-segmentation
tags:
- medical
- chest-x-ray
- instruction-guided-segmentation
---

# mimic-ils (instruction-guided lesion segmentation pairs)

Instruction–answer pairs for chest X-ray lesion segmentation, made by the mimic-ils pipeline from
radiographs and their reports. Images are not included (MIMIC-CXR is credentialed data): `image_path`
is relative to the corpus root `{corpus_root}` (also in `metadata.json`).

| split | pairs |
|---|---|
{sizes}

## Loading

```python
from datasets import load_dataset
ds = load_dataset("parquet", data_files={{{", ".join(f'"{s}": "{HF_DATA_DIR}/{s}-*.parquet"' for s in files)}}})
# or, from this folder: load_dataset("path/to/this/folder")
```

## Decoding a mask

Positive pairs carry their mask as COCO compressed RLE at the source image's resolution; negative
pairs have null mask columns (their answer says the lesion is absent; the target mask is empty).

```python
from pycocotools import mask as coco_mask

def decode_mask(row):
    if row["mask_rle"] is None:
        return None  # negative pair: the lesion is absent, the target is an all-False mask of the image's size
    rle = {{"size": [row["mask_height"], row["mask_width"]], "counts": row["mask_rle"].encode("ascii")}}
    return coco_mask.decode(rle).astype(bool)  # (height, width), True on the lesion
```

With the package installed, `transforms.loader` decodes image, mask, instruction and answer in one call.

## Features

| column | arrow type | meaning |
|---|---|---|
{features}
"""


def _export_hf(pairs: pa.Table, masks: pa.Table, splits: list[str], folder: Path, corpus_root: str | None) -> dict:
    table = hf_table(pairs, masks)
    data = folder / HF_DATA_DIR
    data.mkdir(parents=True)
    files, counts = {}, {}
    for split in splits:
        part = table.filter(pc.equal(table.column("split"), split))
        counts[split] = part.num_rows
        files[split] = []
        for name, start, length in _hf_files(split, part.num_rows):
            pq.write_table(part.slice(start, length), data / name, row_group_size=HF_ROW_GROUP_ROWS,
                           compression="zstd")
            files[split].append(f"{HF_DATA_DIR}/{name}")
    (folder / "README.md").write_text(_hf_card(table.schema, files, counts, corpus_root))
    return {"splits": counts, "masks": masks.num_rows, "files": files}


# --- entry point ------------------------------------------------------------------------------------------------

def export_run(run_dir: Path, fmt: str, output: Path, corpus_root: Path | None = None) -> dict:
    """Export a run directory as `fmt` into `output` (new or empty); returns the counts written.

    `corpus_root` (the folder the pairs' image paths are relative to) defaults to the run's input root from
    its manifest; it is recorded once, in `metadata.json`.
    """
    started = time.perf_counter()
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}': choose one of {', '.join(FORMATS)}")
    run_dir, output = Path(run_dir).resolve(), Path(output).resolve()
    manifest = _check_run_dir(run_dir)
    _check_output(output, run_dir)
    if corpus_root is not None and not Path(corpus_root).is_dir():
        raise UserError(f"corpus root not found: {corpus_root}: pass the folder the run was made from")
    root = str(Path(corpus_root).resolve()) if corpus_root is not None else manifest.get("inputs", {}).get("root")

    pairs = read_table(str(run_dir), "pairs").select(PAIRS.names)
    masks = _referenced_masks(pairs, read_table(str(run_dir), "masks"))
    splits = _splits(pairs)

    staging = output.parent / f".{output.name}.inprogress"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        if fmt == "mimic-ils-json":
            counts = _export_json(pairs, masks, splits, staging)
        else:
            counts = _export_hf(pairs, masks, splits, staging, root)
        n_positive = int(pc.sum(pairs.column("is_positive")).as_py() or 0)
        counts = {"pairs": pairs.num_rows, "positive": n_positive, "negative": pairs.num_rows - n_positive, **counts}
        _write_json(staging / METADATA, _metadata(fmt, run_dir, manifest, root, counts))
        if output.exists():
            output.rmdir()
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"format": fmt, "output": str(output), **counts, "seconds": round(time.perf_counter() - started, 3)}
