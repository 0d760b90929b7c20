"""Report texts of the corpus readers: MIMIC-CXR layout, OpenI XML (folder and the torchxrayvision .tgz), CSV."""
import csv
import importlib.util
import tarfile
from pathlib import Path

import pytest

from transforms.report_readers import (
    iter_mimic_reports,
    iter_reports,
    openi_report_from_xml,
)
from transforms.sections import parse_sections
from transforms.sentences import split_sentences
from transforms.records import ReportText

OPENI_XML = b"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <uId id="CXR1000"/>
   <MedlineCitation><Article><Abstract>
      <AbstractText Label="COMPARISON">XXXX PA and lateral chest radiographs</AbstractText>
      <AbstractText Label="INDICATION">XXXX-year-old male, XXXX.</AbstractText>
      <AbstractText Label="FINDINGS">The cardiac silhouette is within normal limits. No pleural effusion or pneumothorax.</AbstractText>
      <AbstractText Label="IMPRESSION">1. Increased opacity in the right upper lobe. 2. No effusion.</AbstractText>
   </Abstract></Article></MedlineCitation>
</eCitation>
"""


def _mimic_root(tmp_path: Path) -> Path:
    for subject, study, text in [
        ("10000032", "50414267", " FINDINGS:  No effusion.\n \n IMPRESSION:  Normal chest.\n"),
        ("10000032", "53189527", " IMPRESSION:  Small left effusion.\n"),
        ("11000011", "51234567", " FINDINGS:  Cardiomegaly.\n"),
    ]:
        folder = tmp_path / "files" / f"p{subject[:2]}" / f"p{subject}"
        (folder / f"s{study}").mkdir(parents=True)
        (folder / f"s{study}.txt").write_text(text)
    (tmp_path / "files" / "p10" / "p10000032" / "notes.txt").write_text("not a report")
    return tmp_path


def test_mimic_reader_ids_and_text(tmp_path):
    reports = list(iter_mimic_reports(_mimic_root(tmp_path)))
    assert [(r.report_id, r.study_id) for r in reports] == [
        ("s50414267", "50414267"), ("s53189527", "53189527"), ("s51234567", "51234567")
    ]
    assert reports[1].text == " IMPRESSION:  Small left effusion.\n"
    assert [r.report_id for r in iter_reports(tmp_path)] == [r.report_id for r in reports]
    assert [r.report_id for r in iter_mimic_reports(tmp_path / "files")] == [r.report_id for r in reports]


def test_openi_xml_text_has_findings_and_impression_headers():
    report = openi_report_from_xml(OPENI_XML)
    assert report.report_id == report.study_id == "CXR1000"
    assert "INDICATION" not in report.text and "COMPARISON" not in report.text
    sentences = split_sentences(report.text, parse_sections(report.text))
    assert [(s.section, s.text) for s in sentences] == [
        ("FINDINGS", "The cardiac silhouette is within normal limits."),
        ("FINDINGS", "No pleural effusion or pneumothorax."),
        ("IMPRESSION", "Increased opacity in the right upper lobe."),
        ("IMPRESSION", "No effusion."),
    ]


def test_openi_folder_and_tgz(tmp_path):
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    for number in (10, 2, 1):
        (folder / f"{number}.xml").write_bytes(OPENI_XML.replace(b"CXR1000", f"CXR{number}".encode()))
    assert [r.report_id for r in iter_reports(folder, reader="openi")] == ["CXR1", "CXR2", "CXR10"]
    archive = tmp_path / "reports.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=f"ecgen-radiology/{path.name}")
    assert [r.report_id for r in iter_reports(archive)] == ["CXR1", "CXR2", "CXR10"]
    assert [r.report_id for r in iter_reports(folder)] == ["CXR1", "CXR2", "CXR10"]


def test_csv_reader_with_named_columns(tmp_path):
    path = tmp_path / "reports.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["accession", "study", "report_text"])
        writer.writerow(["A1", "S1", "FINDINGS: Small left effusion.\nIMPRESSION: Effusion, unchanged."])
        writer.writerow(["A2", "S2", "No acute cardiopulmonary process."])
    columns = {"report_id": "accession", "report_text": "report_text", "study_id": "study"}
    reports = list(iter_reports(path, columns=columns))
    assert reports[0] == ReportText("A1", "S1", "FINDINGS: Small left effusion.\nIMPRESSION: Effusion, unchanged.")
    assert [r.report_id for r in iter_reports(path, columns={"report_id": "accession"})] == ["A1", "A2"]
    with pytest.raises(ValueError, match="needs a study_id or report_id column"):
        list(iter_reports(path))
    with pytest.raises(ValueError, match="column.s. report_text=findings not found"):
        list(iter_reports(path, columns={"report_id": "accession", "report_text": "findings"}))


def test_unknown_inputs_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError):
        iter_reports(tmp_path / "missing")
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(ValueError, match="not a report corpus"):
        iter_reports(tmp_path)


def _openi_tgz() -> Path | None:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "NLMCXR_reports.tgz"
    return path if path.exists() else None


@pytest.mark.skipif(_openi_tgz() is None, reason="torchxrayvision's NLMCXR_reports.tgz is not installed")
def test_openi_tgz_shipped_with_torchxrayvision():
    reports = list(iter_reports(_openi_tgz()))
    assert len(reports) == 3955
    by_id = {r.report_id: r for r in reports}
    assert "FINDINGS:" in by_id["CXR1000"].text and "IMPRESSION:" in by_id["CXR1000"].text
    assert len(by_id) == len(reports)
