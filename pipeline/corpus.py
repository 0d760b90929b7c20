"""Index a corpus in the MIMIC-CXR-JPG layout into `Study` records (metadata, split, report files)."""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pandas as pd

from pipeline.errors import UserError
from transforms.records import ImageRef, Study

METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv.gz"


def image_path(subject_id: str, study_id: str, dicom_id: str) -> str:
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def report_path(subject_id: str, study_id: str) -> str:
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt"


def _report_files(root: Path) -> dict[str, tuple[str, str]]:
    """study_id -> (subject_id, relative path) for every `files/pXX/pSUBJECT/sSTUDY.txt`."""
    found = {}
    files = root / "files"
    for group in sorted(os.scandir(files), key=lambda e: e.name) if files.is_dir() else []:
        if not group.is_dir():
            continue
        for patient in os.scandir(group.path):
            if not patient.is_dir() or not patient.name.startswith("p"):
                continue
            for entry in os.scandir(patient.path):
                if entry.is_file() and entry.name.startswith("s") and entry.name.endswith(".txt"):
                    study_id = entry.name[1:-4]
                    found[study_id] = (patient.name[1:], f"files/{group.name}/{patient.name}/{entry.name}")
    return found


def index_mimic_cxr_jpg(root: Path) -> list[Study]:
    """Every study named by the metadata or by a report file, sorted by study id."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"input folder not found: {root}")
    metadata_path, split_path = root / METADATA_FILE, root / SPLIT_FILE
    reports = _report_files(root)
    if not metadata_path.is_file() and not reports:
        raise UserError(f"{root} is not a MIMIC-CXR-JPG folder: neither {METADATA_FILE} nor files/pXX/pSUBJECT/sSTUDY.txt found")
    images: dict[str, list[ImageRef]] = defaultdict(list)
    subjects: dict[str, str] = {}
    if metadata_path.is_file():
        meta = pd.read_csv(metadata_path, dtype=str, keep_default_na=False)
        for row in meta.itertuples(index=False):
            rows = int(row.Rows) if row.Rows.isdigit() else None
            cols = int(row.Columns) if row.Columns.isdigit() else None
            images[row.study_id].append(ImageRef(row.dicom_id, image_path(row.subject_id, row.study_id, row.dicom_id),
                                                 row.ViewPosition, rows, cols))
            subjects[row.study_id] = row.subject_id
    splits: dict[str, str] = {}
    if split_path.is_file():
        split = pd.read_csv(split_path, dtype=str, keep_default_na=False)
        splits = dict(zip(split["study_id"], split["split"]))
    study_ids = sorted(set(images) | set(reports))
    studies = []
    for study_id in study_ids:
        subject_id = subjects.get(study_id) or reports[study_id][0]
        report = reports.get(study_id, (None, None))[1]
        studies.append(Study(study_id=study_id, subject_id=subject_id, split=splits.get(study_id) or None,
                             report_path=report, images=tuple(sorted(images.get(study_id, []), key=lambda i: i.dicom_id)),
                             report_id=f"s{study_id}"))
    return studies
