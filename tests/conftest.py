"""Shared fixtures: a hand-built anatomy/prior for pure grounding tests, and data locations."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas.vocab import LUNG_BY_SIDE, ZONES_BY_SIDE, LesionType, Location
from transforms.records import AnatomyResult, Finding, LesionPrior

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SYNTH_STUDIES = 12  # the shared synthetic corpus: small, but holds every lesion type and damaged-input room


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A synthetic corpus in the MIMIC-CXR-JPG layout, built once per test process (read-only for tests)."""
    from pipeline.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("corpus")
    synthesize_corpus(root, SYNTH_STUDIES, seed=5)
    return root


@pytest.fixture(scope="session")
def run_dir(corpus, tmp_path_factory):
    """The classical pipeline run on `corpus`, quality gate included (read-only for tests: copy to change it)."""
    from pipeline.config import load_config
    from pipeline.run import run_pipeline

    out = tmp_path_factory.mktemp("run")
    run_pipeline(corpus, out, load_config("classical"), overwrite=True)
    return out

SIZE = 200
# image left = patient's right
LUNG_COLUMNS = {"right": (30, 90), "left": (110, 170)}
LUNG_ROWS = (30, 170)


def _box(y0, y1, x0, x1):
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture
def toy_anatomy() -> AnatomyResult:
    masks = {}
    top, bottom = LUNG_ROWS
    step = (bottom - top) // 4
    for side, (x0, x1) in LUNG_COLUMNS.items():
        masks[LUNG_BY_SIDE[side].value] = _box(top, bottom, x0, x1)
        for i, zone in enumerate(ZONES_BY_SIDE[side]):
            masks[zone.value] = _box(top + i * step, top + (i + 1) * step if i < 3 else bottom, x0, x1)
    masks[Location.LUNG.value] = masks["right lung"] | masks["left lung"]
    masks[Location.HEART.value] = _box(110, 165, 80, 135)
    return AnatomyResult(masks=masks, confidence={k: 1.0 for k in masks}, backend="toy", version="0")


def blob(cy: int, cx: int, radius: int, value: float = 0.9) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2, value, 0.0).astype(np.float32)


def toy_prior(maps: dict[str, np.ndarray] | None = None, probability: float = 0.9) -> LesionPrior:
    maps = maps or {}
    full = {t.value: maps.get(t.value, np.zeros((SIZE, SIZE), np.float32)) for t in LesionType}
    return LesionPrior(maps=full, probabilities={t: probability for t in full}, backend="toy", version="0")


def make_finding(entity: str, locations=(), presence="present", certainty="definite", sent_idx=0, fid=None) -> Finding:
    return Finding(finding_id=fid or f"f-{entity}-{sent_idx}-{'-'.join(locations)}", report_id="s50000001",
                   study_id="50000001", section="FINDINGS", sent_idx=sent_idx, sentence="...", entity=entity,
                   presence=presence, certainty=certainty, reported_locations=tuple(locations), mention=entity,
                   char_start=0, char_end=len(entity), structurer="test")


def tiny_sam(checkpoint=None):
    """A SAM with a two-block, 64-wide image encoder: the real architecture and code path, test-sized."""
    from segment_anything.build_sam import _build_sam

    return _build_sam(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1],
                      checkpoint=checkpoint)
