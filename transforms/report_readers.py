"""Report texts of the corpus formats: MIMIC-CXR report files, OpenI XML (folder or .tgz).

The corpus readers (`transforms/corpus_readers/`) build on these; `iter_reports` reads any corpus through them.
"""
from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from transforms.records import ReportText

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


def iter_openi_xml(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """(name, XML bytes) of each OpenI report in a folder of XML files or the NLMCXR_reports `.tgz`, in numeric
    file order; names are relative to the folder, or `ARCHIVE:MEMBER` for an archive."""
    path = Path(path)
    if path.is_dir():
        for xml_path in sorted(path.rglob("*.xml"), key=lambda p: _openi_sort_key(p.name)):
            yield xml_path.relative_to(path).as_posix(), xml_path.read_bytes()
        return
    with tarfile.open(path, "r:*") as archive:
        members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".xml")]
        for member in sorted(members, key=lambda m: _openi_sort_key(m.name)):
            handle = archive.extractfile(member)
            if handle is not None:
                yield f"{path.name}:{member.name}", handle.read()


def iter_reports(path: str | Path, reader: str | None = None, **options) -> Iterator[ReportText]:
    """Reports of the corpus at `path`, read by the corpus reader `reader` (built with `options`), or by the first
    reader that recognises the path: a MIMIC-CXR root, an OpenI `.tgz`/XML folder, a CSV/Parquet manifest."""
    from transforms.corpus_readers import create_reader, detect_reader  # the readers build on this module

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such report input: {path}")
    return create_reader(reader or detect_reader(path), **options).reports(path)
