"""MIMIC-CXR-JPG 2.x (PhysioNet layout): metadata and split tables, `files/pXX/pSUBJECT/sSTUDY/DICOM.<ext>` images,
`files/pXX/pSUBJECT/sSTUDY.txt` reports. DICOM files (`.dcm`, the MIMIC-CXR layout) are found the same way."""
from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from transforms.corpus_readers.base import CorpusError, CorpusIndex, CorpusReader, UnlistedImage, register
from transforms.records import ImageRef, ReportText, Study
from transforms.report_readers import iter_mimic_reports

METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv.gz"
# Image files the indexer recognises in a study folder, in order of preference for one dicom_id.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm")


def image_path(subject_id: str, study_id: str, dicom_id: str, suffix: str = ".jpg") -> str:
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}{suffix}"


def report_path(subject_id: str, study_id: str) -> str:
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt"


@dataclass
class _Disk:
    reports: dict[str, tuple[str, str]] = field(default_factory=dict)  # study_id -> (subject_id, path)
    images: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # (study, dicom) -> (subject, path)


def _scan_files(root: Path) -> _Disk:
    """Report files `files/pXX/pSUBJECT/sSTUDY.txt` and image files `.../sSTUDY/DICOM.<ext>` on disk."""
    disk = _Disk()
    files = root / "files"
    for group in sorted(os.scandir(files), key=lambda e: e.name) if files.is_dir() else []:
        if not group.is_dir():
            continue
        for patient in os.scandir(group.path):
            if not patient.is_dir() or not patient.name.startswith("p"):
                continue
            subject_id = patient.name[1:]
            for entry in os.scandir(patient.path):
                if not entry.name.startswith("s"):
                    continue
                relative = f"files/{group.name}/{patient.name}/{entry.name}"
                if entry.is_file() and entry.name.endswith(".txt"):
                    disk.reports[entry.name[1:-4]] = (subject_id, relative)
                elif entry.is_dir():
                    for image in os.scandir(entry.path):
                        stem, suffix = os.path.splitext(image.name)
                        suffix = suffix.lower()
                        if suffix not in IMAGE_SUFFIXES or not image.is_file():
                            continue
                        key = (entry.name[1:], stem)
                        known = disk.images.get(key)
                        if known is None or IMAGE_SUFFIXES.index(suffix) < IMAGE_SUFFIXES.index(
                                os.path.splitext(known[1])[1].lower()):
                            disk.images[key] = (subject_id, f"{relative}/{image.name}")
    return disk


@register("mimic-cxr-jpg")
class MimicCxrJpgReader(CorpusReader):
    """Every study named by the metadata or by a report file, and every image file the metadata does not name."""

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_dir() and ((path / "files").is_dir() or (path / METADATA_FILE).is_file()
                                  or next(path.glob("p*/p*/s*.txt"), None) is not None)

    def index(self, path: Path) -> CorpusIndex:
        """Studies sorted by study id. A metadata row points at the file on disk for its dicom_id (`.jpg`, `.png` or
        `.dcm`), or at the `.jpg` it should be when there is none (then decoding it records the missing file)."""
        root = Path(path)
        if not root.is_dir():
            raise CorpusError(f"input folder not found: {root}")
        metadata_path, split_path = root / METADATA_FILE, root / SPLIT_FILE
        disk = _scan_files(root)
        if not metadata_path.is_file() and not disk.reports:
            raise CorpusError(f"{root} is not a MIMIC-CXR-JPG folder: neither {METADATA_FILE} nor "
                              "files/pXX/pSUBJECT/sSTUDY.txt found")
        images: dict[str, list[ImageRef]] = defaultdict(list)
        subjects: dict[str, str] = {}
        listed: set[tuple[str, str]] = set()
        if metadata_path.is_file():
            meta = pd.read_csv(metadata_path, dtype=str, keep_default_na=False)
            for row in meta.itertuples(index=False):
                rows = int(row.Rows) if row.Rows.isdigit() else None
                cols = int(row.Columns) if row.Columns.isdigit() else None
                key = (row.study_id, row.dicom_id)
                listed.add(key)
                on_disk = disk.images.get(key)
                relative = on_disk[1] if on_disk else image_path(row.subject_id, row.study_id, row.dicom_id)
                images[row.study_id].append(ImageRef(row.dicom_id, relative, row.ViewPosition, rows, cols))
                subjects[row.study_id] = row.subject_id
        splits: dict[str, str] = {}
        if split_path.is_file():
            split = pd.read_csv(split_path, dtype=str, keep_default_na=False)
            splits = dict(zip(split["study_id"], split["split"]))
        studies = []
        for study_id in sorted(set(images) | set(disk.reports)):
            subject_id = subjects.get(study_id) or disk.reports[study_id][0]
            report = disk.reports.get(study_id, (None, None))[1]
            studies.append(Study(study_id=study_id, subject_id=subject_id, split=splits.get(study_id) or None,
                                 report_path=report,
                                 images=tuple(sorted(images.get(study_id, []), key=lambda i: i.dicom_id)),
                                 report_id=f"s{study_id}"))
        unlisted = [UnlistedImage(subject_id, study_id, dicom_id, relative, METADATA_FILE)
                    for (study_id, dicom_id), (subject_id, relative) in sorted(disk.images.items())
                    if (study_id, dicom_id) not in listed]
        return CorpusIndex(studies, unlisted, root)

    def reports(self, path: Path) -> Iterator[ReportText]:
        """The report files alone (no metadata needed), in path order."""
        return iter_mimic_reports(path)
