"""Decode a pair into (image, mask, instruction, answer): from a run directory or a mimic-ils-json export.

Both readers are sequences (`len`, indexing), so they can back a training data set directly. The image is
the source radiograph as uint8 grayscale; the mask is bool at the same size, or None for a negative pair.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transforms.masks import decode_rle

RUN_MANIFEST = "manifest.json"
EXPORT_METADATA = "metadata.json"


@dataclass(frozen=True)
class DecodedPair:
    image: np.ndarray  # (H, W) uint8, the source radiograph
    mask: np.ndarray | None  # (H, W) bool for positives, None for negatives
    instruction: str
    answer: str
    pair: dict  # every other field of the pair (target, locations, negative_kind, ...)


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return image


def _checked(pair: dict, image: np.ndarray, mask: np.ndarray | None) -> DecodedPair:
    if mask is not None and mask.shape != image.shape:
        raise ValueError(f"pair {pair.get('pair_id') or pair.get('id')}: mask {mask.shape} and image {image.shape} "
                         "differ in size")
    return DecodedPair(image, mask, pair["instruction"], pair["answer"], pair)


def _table(run_dir: Path, name: str) -> pa.Table:
    shards = sorted((run_dir / name).glob("part-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{run_dir / name} holds no part-*.parquet shard")
    return pa.concat_tables([pq.read_table(s) for s in shards])


def _corpus_root(given: Path | None, recorded: str | None, source: Path) -> Path:
    if given is not None:
        return Path(given)
    if not recorded:
        raise ValueError(f"{source} records no corpus root: pass corpus_root")
    return Path(recorded)


class RunPairs:
    """The pairs of a run directory; `corpus_root` defaults to the run's input root from its manifest."""

    def __init__(self, run_dir: Path, corpus_root: Path | None = None, split: str | None = None):
        run_dir = Path(run_dir)
        manifest = run_dir / RUN_MANIFEST
        recorded = json.loads(manifest.read_text()).get("inputs", {}).get("root") if manifest.is_file() else None
        self.corpus_root = _corpus_root(corpus_root, recorded, manifest)
        pairs = _table(run_dir, "pairs")
        if split is not None:
            pairs = pairs.filter(pc.equal(pairs.column("split"), split))
        self._pairs = pairs
        masks = _table(run_dir, "masks").select(["mask_id", "rle", "height", "width"]).to_pylist()
        self._masks = {m["mask_id"]: m for m in masks}

    def __len__(self) -> int:
        return self._pairs.num_rows

    def pair(self, index: int) -> dict:
        return self._pairs.slice(index, 1).to_pylist()[0]

    def __getitem__(self, index: int) -> DecodedPair:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        pair = self.pair(index % len(self))
        image = read_image(self.corpus_root / pair["image_path"])
        mask = None
        if pair["mask_id"] is not None:
            m = self._masks[pair["mask_id"]]
            mask = decode_rle(m["rle"], m["height"], m["width"])
        return _checked(pair, image, mask)


class JsonExportPairs:
    """One split of a mimic-ils-json export; `corpus_root` defaults to the one in its metadata.json."""

    def __init__(self, export_dir: Path, split: str, corpus_root: Path | None = None):
        self.export_dir = Path(export_dir)
        metadata = self.export_dir / EXPORT_METADATA
        recorded = json.loads(metadata.read_text()).get("corpus_root") if metadata.is_file() else None
        self.corpus_root = _corpus_root(corpus_root, recorded, metadata)
        self._items = json.loads((self.export_dir / f"{split}.json").read_text())

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> DecodedPair:
        item = self._items[index]
        image = read_image(self.corpus_root / item["image"])
        mask = None
        if item["mask"] is not None:
            png = cv2.imread(str(self.export_dir / item["mask"]), cv2.IMREAD_GRAYSCALE)
            if png is None:
                raise FileNotFoundError(f"cannot read mask {self.export_dir / item['mask']}")
            mask = png > 127
        return _checked(item, image, mask)
