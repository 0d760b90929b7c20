"""The synthetic corpus: PhysioNet layout, ground truth consistent with the pixels, realistic reports."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from anatomy_models.zones import lung_zones
from pipeline.corpus import METADATA_FILE, SPLIT_FILE
from pipeline.synth import METADATA_COLUMNS, plan_corpus, synthesize_corpus
from schemas.tables import GROUND_TRUTH_FINDINGS
from schemas.vocab import FRONTAL_VIEWS, LUNG_BY_SIDE, ZONES_BY_SIDE, LesionType, Location, Presence
from transforms.phantom import LesionSpec, draw_frontal, zone_masks

N_STUDIES = 12
SEED = 7
DICOM_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    counts = synthesize_corpus(root, N_STUDIES, seed=SEED)
    assert counts["studies"] == counts["reports"] == N_STUDIES
    return root


@pytest.fixture(scope="module")
def metadata(corpus) -> pd.DataFrame:
    return pd.read_csv(corpus / METADATA_FILE)


@pytest.fixture(scope="module")
def truth(corpus) -> pd.DataFrame:
    return pq.read_table(corpus / "ground_truth" / "findings.parquet").to_pandas()


def image_path(root: Path, row) -> Path:
    subject = f"p{row.subject_id}"
    return root / "files" / subject[:3] / subject / f"s{row.study_id}" / f"{row.dicom_id}.jpg"


def read_mask(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert mask is not None and mask.dtype == np.uint8 and mask.ndim == 2, path
    levels = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    assert set(levels) <= {0, 255}, path
    return mask > 0


def shrink(mask: np.ndarray, factor: int = 4) -> np.ndarray:
    """Every factor-th pixel: enough for brightness statistics, much cheaper than full size."""
    return mask[::factor, ::factor]


def test_physionet_layout_and_csv_columns(corpus, metadata):
    assert tuple(metadata.columns) == METADATA_COLUMNS
    split = pd.read_csv(corpus / SPLIT_FILE)
    assert list(split.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert set(split["dicom_id"]) == set(metadata["dicom_id"])
    assert set(split["split"]) <= {"train", "validate", "test"}
    assert (split.groupby("subject_id")["split"].nunique() == 1).all(), "the split is by subject"

    assert metadata["subject_id"].astype(str).str.fullmatch(r"1\d{7}").all()
    assert metadata["study_id"].astype(str).str.fullmatch(r"5\d{7}").all()
    assert metadata["dicom_id"].map(lambda d: bool(DICOM_ID.match(d))).all()
    assert metadata["StudyDate"].astype(str).str.fullmatch(r"2[12]\d{2}[01]\d[0-3]\d").all()
    assert set(metadata["ViewPosition"]) <= {"PA", "AP", "LATERAL"}
    assert {"PA", "LATERAL"} <= set(metadata["ViewPosition"])
    assert metadata["ViewCodeSequence_CodeMeaning"].isin(["postero-anterior", "antero-posterior", "lateral"]).all()
    assert metadata["PerformedProcedureStepDescription"].isin(["CHEST (PA AND LAT)", "CHEST (PORTABLE AP)"]).all()
    assert metadata.groupby("study_id")["dicom_id"].count().between(1, 3).all()

    for row in metadata.itertuples():
        path = image_path(corpus, row)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.ndim == 2, path
        assert image.shape == (row.Rows, row.Columns)
        assert 1600 <= row.Rows <= 3000 and 1600 <= row.Columns <= 3000
    for study in metadata[["subject_id", "study_id"]].drop_duplicates().itertuples():
        subject = f"p{study.subject_id}"
        assert (corpus / "files" / subject[:3] / subject / f"s{study.study_id}.txt").is_file()


def test_ground_truth_rows_match_the_mask_files(corpus, metadata, truth):
    schema = pq.read_schema(corpus / "ground_truth" / "findings.parquet")
    assert schema.equals(GROUND_TRUTH_FINDINGS, check_metadata=False)
    frontal = set(metadata.loc[metadata["ViewPosition"].isin(FRONTAL_VIEWS), "dicom_id"])
    with_image = truth.dropna(subset=["dicom_id"])
    assert set(with_image["dicom_id"]) <= frontal
    assert not truth.loc[truth["presence"] == Presence.ABSENT, "visible"].any()
    assert set(truth["target"]) <= {t.value for t in LesionType}
    assert all(set(locs) <= {loc.value for loc in Location} for locs in truth["locations"])
    cardiac = truth.loc[truth["target"] == LesionType.CARDIOMEGALY, "locations"]
    assert all(list(locs) == [Location.HEART.value] for locs in cardiac)

    visible = {(r.dicom_id, r.target) for r in with_image.itertuples() if r.visible}
    files = {(p.parent.name, p.stem) for p in (corpus / "ground_truth" / "masks").glob("*/*.png")}
    assert visible and visible == files
    sizes = metadata.set_index("dicom_id")[["Rows", "Columns"]]
    for dicom_id, target in sorted(files):
        mask = read_mask(corpus / "ground_truth" / "masks" / dicom_id / f"{target}.png")
        assert mask.shape == tuple(sizes.loc[dicom_id]) and mask.any()


def test_masks_lie_in_the_lungs_or_are_the_heart(corpus, truth):
    masks_dir, anatomy_dir = corpus / "ground_truth" / "masks", corpus / "ground_truth" / "anatomy"
    for folder in sorted(masks_dir.iterdir()):
        anatomy = anatomy_dir / folder.name
        lungs, heart = read_mask(anatomy / "lung.png"), read_mask(anatomy / "heart.png")
        for path in sorted(folder.glob("*.png")):
            mask = read_mask(path)
            if path.stem == LesionType.CARDIOMEGALY:
                assert np.array_equal(mask, heart)
            else:
                assert not (mask & ~lungs).any(), path


def test_anatomy_masks_partition_each_lung_into_zones(corpus, metadata):
    frontal = metadata[metadata["ViewPosition"].isin(FRONTAL_VIEWS)]
    for dicom_id in frontal["dicom_id"][:3]:
        folder = corpus / "ground_truth" / "anatomy" / dicom_id
        assert {p.stem for p in folder.glob("*.png")} == {loc.value for loc in Location}
        for side, zones in ZONES_BY_SIDE.items():
            lung = read_mask(folder / f"{LUNG_BY_SIDE[side].value}.png")
            parts = [read_mask(folder / f"{zone.value}.png") for zone in zones]
            assert np.array_equal(np.logical_or.reduce(parts), lung)
            assert sum(int(p.sum()) for p in parts) == int(lung.sum()), "zones overlap"
            tops = [np.flatnonzero(p.any(axis=1))[0] for p in parts]
            assert tops == sorted(tops), "zones run from apex to base"


def test_lesions_are_brighter_than_the_lung_around_them(corpus, metadata):
    paths = {r.dicom_id: image_path(corpus, r) for r in metadata.itertuples()}
    checked = 0
    for path in sorted((corpus / "ground_truth" / "masks").glob("*/*.png")):
        if path.stem == LesionType.CARDIOMEGALY:
            continue
        dicom_id = path.parent.name
        anatomy = corpus / "ground_truth" / "anatomy" / dicom_id
        image = shrink(cv2.imread(str(paths[dicom_id]), cv2.IMREAD_GRAYSCALE)).astype(np.float32)
        mask = shrink(read_mask(path))
        aerated = shrink(read_mask(anatomy / "lung.png") & ~read_mask(anatomy / "heart.png"))
        for other in path.parent.glob("*.png"):  # compare with lung that no other lesion fills
            if other != path:
                aerated &= ~shrink(read_mask(other))
        # the aerated lung within about 80 full-size pixels of the lesion
        ring = cv2.dilate(mask.view(np.uint8), np.ones((21, 21), np.uint8)).astype(bool) & ~mask & aerated
        inside = mask & aerated
        if ring.sum() < 50 or inside.sum() < 50:
            continue
        assert image[inside].mean() > image[ring].mean() + 5, path
        checked += 1
    assert checked >= 3


def test_reports_are_shaped_like_mimic_reports(corpus, metadata, truth):
    reports = sorted((corpus / "files").glob("p*/p*/s*.txt"))
    assert len(reports) == N_STUDIES
    both = 0
    for path in reports:
        text = path.read_text()
        lines = text.splitlines()
        assert all(len(line) <= 79 for line in lines), path
        assert all(line.startswith(" ") for line in lines if line), path
        assert "FINAL REPORT" in text and "EXAMINATION:" in text and "___" in text
        both += "FINDINGS:" in text and "IMPRESSION:" in text
        study_id = path.stem[1:]
        present = truth[(truth["study_id"] == study_id) & (truth["presence"] == Presence.PRESENT)]
        if len(present):
            assert "No acute cardiopulmonary process" not in text
    assert both >= N_STUDIES // 2


def test_two_runs_with_one_seed_write_identical_bytes(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    synthesize_corpus(first, 2, seed=11)
    synthesize_corpus(second, 2, seed=11)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    picked = [METADATA_FILE, SPLIT_FILE, "ground_truth/findings.parquet"]
    picked += [str(f) for f in files if f.suffix in (".jpg", ".txt")][:4]
    picked += [str(f) for f in files if f.suffix == ".png"][:2]
    for name in picked:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert [s.study_id for s in plan_corpus(2, 11)] != [s.study_id for s in plan_corpus(2, 12)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_40_study_corpus_reports_and_draws_all_seven_types(seed):
    studies = plan_corpus(40, seed)
    drawn = {
        fact.target
        for study in studies
        for mention, visible in zip(study.mentions, study.visible)
        for fact in mention.facts
        if visible and fact.presence == Presence.PRESENT
    }
    assert drawn == {t.value for t in LesionType}
    normal = [s for s in studies if not any(m.facts[0].presence == Presence.PRESENT for m in s.mentions)]
    assert 4 <= len(normal) <= 16
    hidden = [m for s in studies for m, v in zip(s.mentions, s.visible) if s.frontal and not v
              and m.facts[0].presence == Presence.PRESENT]
    assert hidden, "some reported findings are not drawn"
    assert len({s.subject_id for s in studies}) < len(studies), "some subjects have several studies"


def cardiothoracic_ratio(anatomy: dict[str, np.ndarray]) -> float:
    def width(mask):
        cols = np.flatnonzero(mask.any(axis=0))
        return cols[-1] - cols[0] + 1

    return width(anatomy[Location.HEART.value]) / width(anatomy[Location.LUNG.value])


def test_cardiomegaly_is_drawn_as_an_enlarged_heart():
    ratios = {}
    for enlarged in (False, True):
        heart = LesionType.CARDIOMEGALY.value
        lesions = [LesionSpec((heart,), heart, (Location.HEART.value,), 0.5)]
        image, masks, anatomy = draw_frontal(np.random.default_rng(3), 1800, 1700, lesions if enlarged else [])
        assert image.shape == (1800, 1700) and image.dtype == np.uint8
        ratios[enlarged] = cardiothoracic_ratio(anatomy)
        if enlarged:
            assert np.array_equal(masks[LesionType.CARDIOMEGALY.value], anatomy[Location.HEART.value])
    assert 0.38 < ratios[False] < 0.52 < 0.55 < ratios[True] < 0.75


def test_ground_truth_zones_follow_the_project_zone_rule():
    _, _, anatomy = draw_frontal(np.random.default_rng(5), 1700, 1600, view="AP")
    lungs = {side: anatomy[LUNG_BY_SIDE[side].value] for side in ZONES_BY_SIDE}
    ours = zone_masks(lungs)
    for side, lung in lungs.items():
        for name, mask in lung_zones(lung, side).items():
            assert np.array_equal(ours[name], mask), name
    empty = zone_masks({"right": lungs["right"], "left": np.zeros_like(lungs["left"])})
    assert not any(empty[z.value].any() for z in ZONES_BY_SIDE["left"])
