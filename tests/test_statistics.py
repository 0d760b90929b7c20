"""Dataset statistics (the paper's Fig. 4 view) and their chart, on pairs rows shaped like the pipeline's."""
from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pytest

from schemas.tables import PAIRS
from schemas.vocab import InstructionType, LesionType, NegativeKind
from transforms.statistics import dataset_statistics, plot_statistics, render_statistics


def pair(n, study, dicom, split, itype, target, negative_kind=None, locations=()):
    positive = negative_kind is None
    return {"pair_id": f"p{n}", "split": split, "subject_id": "s" + study, "study_id": study, "dicom_id": dicom,
            "image_path": f"files/p10/p10000001/s{study}/{dicom}.jpg", "instruction_type": itype, "target": target,
            "locations": list(locations), "is_positive": positive, "negative_kind": negative_kind,
            "instruction": f"Segment the {target}.", "answer": "[SEG]" if positive else f"[SEG] There is no {target}.",
            "mask_id": f"m-{dicom}-{target}-{','.join(locations)}" if positive else None, "finding_id": None,
            "sent_idx": 0, "reported_locations": [], "grounded_locations": []}


@pytest.fixture
def rows():
    return [
        pair(1, "50000001", "d1", "train", "global", "effusion"),
        pair(2, "50000001", "d1", "train", "basic", "effusion", locations=["left lung base"]),
        pair(3, "50000001", "d1", "train", "basic", "effusion", locations=["right lung base"]),
        pair(4, "50000001", "d1", "train", "global", "edema", "negative_reported_lesion"),
        pair(5, "50000001", "d1", "train", "basic", "effusion", "location_without_lesion", ["left upper zone lung"]),
        pair(6, "50000002", "d2", "train", "lesion_inference", "pneumonia", locations=["right mid zone lung"]),
        pair(7, "50000002", "d2", "train", "global", "cardiomegaly", "not_reported_lesion"),
        pair(8, "50000003", "d3", "validate", "global", "cardiomegaly"),
        pair(9, "50000003", "d4", "validate", "global", "pneumonia", "not_reported_lesion"),
        pair(10, "50000003", "d4", "validate", "basic", "pneumonia", "grounding_no_location_extension",
             ["left lung"]),
    ]


def test_counts_per_lesion_instruction_and_polarity(rows):
    stats = dataset_statistics(rows)
    assert (stats["n_pairs"], stats["n_positive"], stats["n_negative"]) == (10, 5, 5)
    assert (stats["n_studies"], stats["n_images"], stats["n_masks"]) == (3, 4, 5)
    grid = stats["by_lesion_instruction"]
    assert list(grid) == [t.value for t in LesionType]
    assert all(list(by_type) == [t.value for t in InstructionType] for by_type in grid.values())
    assert grid["effusion"]["basic"] == {"positive": 2, "negative": 1}
    assert grid["effusion"]["global"] == {"positive": 1, "negative": 0}
    assert grid["pneumonia"]["lesion_inference"] == {"positive": 1, "negative": 0}
    assert grid["pneumonia"]["global"] == {"positive": 0, "negative": 1}
    assert grid["cardiomegaly"]["global"] == {"positive": 1, "negative": 1}
    assert grid["opacity"]["basic"] == {"positive": 0, "negative": 0}
    assert sum(n for by_type in grid.values() for cell in by_type.values() for n in cell.values()) == 10


def test_counts_per_negative_kind_and_split(rows):
    stats = dataset_statistics(rows)
    assert stats["by_negative_kind"] == {
        NegativeKind.NEGATIVE_REPORTED_LESION.value: 1, NegativeKind.NOT_REPORTED_LESION.value: 2,
        NegativeKind.LOCATION_WITHOUT_LESION.value: 1, NegativeKind.GROUNDING_NO_LOCATION_EXTENSION.value: 1}
    assert stats["by_negative_kind_lesion"]["not_reported_lesion"]["cardiomegaly"] == 1
    assert stats["by_negative_kind_lesion"]["not_reported_lesion"]["pneumonia"] == 1
    assert stats["by_split"]["train"] == {"pairs": 7, "positive": 4, "negative": 3, "studies": 2, "images": 2}
    assert stats["by_split"]["validate"] == {"pairs": 3, "positive": 1, "negative": 2, "studies": 1, "images": 2}
    assert stats["by_split"]["test"] == {"pairs": 0, "positive": 0, "negative": 0, "studies": 0, "images": 0}


def test_a_pyarrow_table_gives_the_same_statistics(rows):
    assert dataset_statistics(pa.Table.from_pylist(rows, schema=PAIRS)) == dataset_statistics(rows)


def test_values_outside_the_vocabulary_are_counted_not_dropped(rows):
    rows.append(pair(11, "50000004", "d5", "extra", "global", "nodule"))
    stats = dataset_statistics(rows)
    assert stats["by_lesion_instruction"]["nodule"]["global"]["positive"] == 1
    assert stats["by_split"]["extra"]["pairs"] == 1


def test_chart_is_a_png_with_every_panel_drawn(rows, tmp_path):
    path = plot_statistics(dataset_statistics(rows), tmp_path / "run" / "statistics.png")
    image = cv2.imread(str(path))
    assert image is not None and image.shape == (1100, 1700, 3)
    ink = (image < 200).any(axis=2)
    for y0, y1, x0, x1 in ((140, 580, 130, 1660), (730, 1000, 130, 940), (730, 1000, 1130, 1660)):
        assert ink[y0:y1, x0:x1].mean() > 0.01, "a panel is empty"
    # bars are coloured, not only black text and axes
    assert (image.max(axis=2).astype(int) - image.min(axis=2) > 60).mean() > 0.01
    assert np.array_equal(render_statistics(dataset_statistics(rows)), image)


def test_chart_of_an_empty_dataset_still_renders(tmp_path):
    image = render_statistics(dataset_statistics([]))
    assert image.shape == (1100, 1700, 3) and (image < 200).any()
