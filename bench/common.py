"""What the benchmarks share: the cached synthetic base corpus, the fixed grounding workload, the load average.

Kept free of spaCy and Beam so that the vision benchmark runs on a GPU machine carrying only the vision stack.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transforms.records import Finding  # noqa: E402


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def bench_finding(target: str) -> Finding:
    """A fixed grounding workload: one unlocated, present, definite finding per lesion type."""
    return Finding(f"bench-{target}", "bench", "bench", "FINDINGS", 0, target, target, "present", "definite", (),
                   target, 0, len(target), "bench")


def base_corpus(cache: Path, n_studies: int) -> Path:
    from pipeline.synth import synthesize_corpus

    root = cache / f"base-{n_studies}-seed0"
    if not (root / "ground_truth").is_dir():
        if root.exists():
            shutil.rmtree(root)
        started = time.perf_counter()
        synthesize_corpus(root, n_studies, seed=0)
        print(f"synth: {n_studies} studies in {time.perf_counter() - started:.0f} s -> {root}")
    return root
