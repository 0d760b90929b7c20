"""Corpus readers that yield report texts: MIMIC-CXR layout, OpenI XML (folder or .tgz), CSV.

A new corpus comes in as one more reader here; `iter_reports` picks the reader by what the path is.
"""
from __future__ import annotations

import csv
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from transforms.structuring import ReportText

_MIMIC_REPORT = re.compile(r"s(\d+)\.txt")
_MIMIC_SUBJECT_DIR = re.compile(r"p\d+")
# OpenI sections that hold what the radiologist saw, in report order.
OPENI_SECTIONS = ("FINDINGS", "IMPRESSION")


def iter_mimic_reports(root: str | Path) -> Iterator[ReportText]:
    """Reports `files/pXX/pSUBJECT/sSTUDY.txt` under a MIMIC-CXR(-JPG) root, in path order."""
    root = Path(root)
    base = root / "files" if (root / "files").is_dir() else root
    for path in sorted(base.glob("p*/p*/s*.txt")):
        match = _MIMIC_REPORT.fullmatch(path.name)
        if match is None or not _MIMIC_SUBJECT_DIR.fullmatch(path.parent.name):
            continue
        yield ReportText(
            report_id=path.stem,
            study_id=match.group(1),
            text=path.read_text(encoding="utf-8", errors="replace"),
        )


def openi_report_from_xml(xml_bytes: bytes) -> ReportText:
    """One OpenI report: id from `<uId>`, text = FINDINGS and IMPRESSION under their headers."""
    root = ET.fromstring(xml_bytes)
    uid = root.find("uId")
    if uid is None or not uid.get("id"):
        raise ValueError("OpenI XML without <uId id=...>")
    report_id = uid.get("id")
    texts = {
        node.get("Label", "").upper(): (node.text or "").strip()
        for node in root.iter("AbstractText")
    }
    parts = [f"{label}: {texts[label]}" for label in OPENI_SECTIONS if texts.get(label)]
    return ReportText(report_id=report_id, study_id=report_id, text="\n\n".join(parts) + "\n")


def _openi_sort_key(name: str) -> tuple[int, str]:
    stem = Path(name).stem
    return (int(stem), stem) if stem.isdigit() else (1 << 62, stem)


def iter_openi_reports(path: str | Path) -> Iterator[ReportText]:
    """OpenI reports from a folder of XML files or the NLMCXR_reports `.tgz`, in numeric file order."""
    path = Path(path)
    if path.is_dir():
        for xml_path in sorted(path.rglob("*.xml"), key=lambda p: _openi_sort_key(p.name)):
            yield openi_report_from_xml(xml_path.read_bytes())
        return
    with tarfile.open(path, "r:*") as archive:
        members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".xml")]
        for member in sorted(members, key=lambda m: _openi_sort_key(m.name)):
            handle = archive.extractfile(member)
            if handle is not None:
                yield openi_report_from_xml(handle.read())


def iter_csv_reports(
    path: str | Path, id_column: str = "report_id", text_column: str = "text", study_column: str | None = None
) -> Iterator[ReportText]:
    """One report per CSV row; `study_id` is `study_column` when given, else the report id."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {id_column, text_column, *( [study_column] if study_column else [])} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; columns are {reader.fieldnames}")
        for row in reader:
            report_id = row[id_column]
            yield ReportText(
                report_id=report_id,
                study_id=row[study_column] if study_column else report_id,
                text=row[text_column] or "",
            )


def iter_reports(path: str | Path, **csv_columns: str) -> Iterator[ReportText]:
    """Reports from a CSV file, an OpenI `.tgz`/XML folder, or a MIMIC-CXR layout root."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such report input: {path}")
    name = path.name.lower()
    if path.is_file() and name.endswith(".csv"):
        return iter_csv_reports(path, **csv_columns)
    if path.is_file() and name.endswith((".tgz", ".tar.gz", ".tar")):
        return iter_openi_reports(path)
    if path.is_file() and name.endswith(".xml"):
        return iter([openi_report_from_xml(path.read_bytes())])
    if path.is_dir():
        if (path / "files").is_dir() or next(path.glob("p*/p*/s*.txt"), None) is not None:
            return iter_mimic_reports(path)
        if next(path.rglob("*.xml"), None) is not None:
            return iter_openi_reports(path)
    raise ValueError(
        f"{path}: not a report corpus (expected a MIMIC-CXR root with files/pXX/pSUBJECT/sSTUDY.txt, "
        "an OpenI XML folder or .tgz, or a .csv of reports)"
    )
