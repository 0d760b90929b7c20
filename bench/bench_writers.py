"""Parquet writer throughput: pairs rows -> one sorted, zstd-compressed shard, on one core.

    .venv/bin/python bench/bench_writers.py [--rows 200000]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from pipeline.writers import table_to_bytes
from schemas.vocab import InstructionType, LesionType, Location, NegativeKind


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows shaped like real pairs: ~10 pairs per study, half negatives."""
    rng = np.random.default_rng(seed)
    targets, locations = [t.value for t in LesionType], [loc.value for loc in Location]
    kinds, itypes = [k.value for k in NegativeKind], [t.value for t in InstructionType]
    rows = []
    for i in range(n):
        positive = bool(rng.random() < 0.5)
        loc = [locations[int(rng.integers(len(locations)))]]
        target = targets[int(rng.integers(len(targets)))]
        rows.append({
            "pair_id": f"{rng.integers(1 << 62):024x}", "split": "train", "subject_id": f"1{i // 30:07d}",
            "study_id": f"5{i // 10:07d}", "dicom_id": f"{i // 5:08x}-0000-0000-0000-000000000000",
            "image_path": f"files/p10/p1{i // 30:07d}/s5{i // 10:07d}/{i // 5:08x}.jpg",
            "instruction_type": itypes[int(rng.integers(len(itypes)))], "target": target, "locations": loc,
            "is_positive": positive, "negative_kind": None if positive else kinds[int(rng.integers(len(kinds)))],
            "instruction": f"Segment the {target} in the {loc[0]}.",
            "answer": "[SEG]" if positive else f"[SEG] There is no {target} in the {loc[0]}.",
            "mask_id": f"{rng.integers(1 << 62):024x}" if positive else None, "finding_id": f"{i:016x}",
            "sent_idx": int(rng.integers(10)), "reported_locations": loc, "grounded_locations": loc if positive else [],
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    rows = pair_rows(args.rows)
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        payload = table_to_bytes("pairs", rows, row_group_rows=50_000, compression="zstd")
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    print(f"pairs writer: {args.rows} rows -> {len(payload) / 1e6:.1f} MB in {median:.2f} s "
          f"(median of 3) = {args.rows / median:,.0f} pairs/s on one core")


if __name__ == "__main__":
    main()
