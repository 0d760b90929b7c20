"""Corpus readers as plug-ins: the registry, each reader's index, and the pipeline run through a reader named in the
config (a Parquet manifest gives the same tables as the MIMIC-CXR-JPG layout it lists; OpenI reports run alone)."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.config import load_config
from pipeline.contract import check_run
from pipeline.corpus import index_corpus
from pipeline.errors import UserError
from pipeline.run import run_pipeline
from pipeline.synth import synthesize_corpus
from pipeline.writers import read_table
from schemas.config import CorpusConfig
from transforms.corpus_readers import READER_MODULES, CorpusError, create_reader, detect_reader
from transforms.corpus_readers.mimic_cxr import METADATA_FILE, SPLIT_FILE
from transforms.report_readers import iter_reports

OPENI_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR{n}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="INDICATION">Cough.</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation></eCitation>
"""
OPENI_REPORTS = {
    3: ("Heart size is normal. Small right pleural effusion.", "Right pleural effusion."),
    12: ("The lungs are clear.", "No acute cardiopulmonary process."),
    7: ("Patchy opacity in the left lower lobe.", "Left lower lobe pneumonia."),
}
NO_GATE = ["quality.validate_after_run=false"]


def _openi_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    for n, (findings, impression) in OPENI_REPORTS.items():
        (folder / f"{n}.xml").write_text(OPENI_XML.format(n=n, findings=findings, impression=impression))
    return folder


def _manifest_of(root: Path) -> pd.DataFrame:
    """One row per image of a MIMIC-CXR-JPG corpus, columns named as another site might."""
    meta = pd.read_csv(root / METADATA_FILE, dtype=str)
    split = dict(pd.read_csv(root / SPLIT_FILE, dtype=str)[["study_id", "split"]].values)
    corpus = index_corpus(root)
    rows = []
    for study in corpus.studies:
        for image in study.images:
            view = meta.loc[meta.dicom_id == image.dicom_id, "ViewPosition"].item()
            rows.append({"accession": study.study_id, "patient": study.subject_id, "partition": split[study.study_id],
                         "report": study.report_path, "file": image.path, "image_id": image.dicom_id, "view": view,
                         "report_id": study.report_id})
    return pd.DataFrame(rows)


MANIFEST_OPTIONS = {"columns": {"study_id": "accession", "subject_id": "patient", "split": "partition",
                                "report_path": "report", "image_path": "file", "dicom_id": "image_id",
                                "view_position": "view"}}


def test_registry_names_readers_and_refuses_unknown_ones_and_options():
    assert set(READER_MODULES) == {"mimic-cxr-jpg", "openi", "manifest"}
    assert create_reader("mimic-cxr-jpg").name == "mimic-cxr-jpg"
    with pytest.raises(CorpusError, match="unknown corpus reader 'dicomweb' .known: manifest, mimic-cxr-jpg, openi"):
        create_reader("dicomweb")
    with pytest.raises(CorpusError, match="takes no options, got: columns"):
        create_reader("openi", columns={})
    with pytest.raises(CorpusError, match="invalid options: columns.accession"):
        create_reader("manifest", columns={"accession": "id"})


def test_readers_recognise_their_corpora(tmp_path):
    folder = _openi_folder(tmp_path)
    archive = tmp_path / "reports.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="ecgen-radiology")
    (tmp_path / "m.csv").write_text("study_id,report_text\n1,No effusion.\n")
    pd.DataFrame({"study_id": ["1"], "report_text": ["No effusion."]}).to_parquet(tmp_path / "m.parquet")
    mimic = tmp_path / "mimic"
    (mimic / "files" / "p10" / "p10000001").mkdir(parents=True)
    (mimic / "files" / "p10" / "p10000001" / "s50000001.txt").write_text("FINDINGS: No effusion.\n")
    assert detect_reader(folder) == detect_reader(archive) == detect_reader(folder / "3.xml") == "openi"
    assert detect_reader(tmp_path / "m.csv") == detect_reader(tmp_path / "m.parquet") == "manifest"
    assert detect_reader(mimic) == "mimic-cxr-jpg"
    with pytest.raises(CorpusError, match="not a report corpus"):
        detect_reader(tmp_path / "mimic" / "files" / "p10" / "p10000001" / "s50000001.txt")


def test_openi_reader_indexes_reports_as_studies_without_images(tmp_path):
    folder = _openi_folder(tmp_path)
    corpus = create_reader("openi").index(folder)
    assert corpus.root == folder and corpus.unlisted_images == []
    assert [(s.study_id, s.report_id, s.report_path, s.images, s.split) for s in corpus.studies] == [
        ("CXR12", "CXR12", "12.xml", (), None), ("CXR3", "CXR3", "3.xml", (), None),
        ("CXR7", "CXR7", "7.xml", (), None)]
    assert corpus.studies[1].report_text.startswith("FINDINGS: Heart size is normal.")
    assert [r.report_id for r in iter_reports(folder)] == ["CXR3", "CXR7", "CXR12"]  # file order
    (folder / "20.xml").write_text("<eCitation><uId/></eCitation>")
    with pytest.raises(CorpusError, match="OpenI report 20.xml is unreadable"):
        create_reader("openi").index(folder)


def test_manifest_reader_groups_rows_into_studies(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "b.txt").write_text("FINDINGS: Cardiomegaly.\n")
    table = pd.DataFrame([
        {"study_id": "A", "report_text": "FINDINGS: Left effusion.", "image_path": "a1.png", "view_position": "PA",
         "report_path": "", "split": "train"},
        {"study_id": "A", "report_text": "", "image_path": "a2.png", "view_position": "LATERAL", "report_path": "",
         "split": "train"},
        {"study_id": "B", "report_text": "", "image_path": "", "view_position": "", "report_path": "../notes/b.txt",
         "split": ""},
    ])
    table.to_csv(images / "manifest.csv", index=False)
    corpus = create_reader("manifest").index(images / "manifest.csv")
    a, b = corpus.studies
    assert corpus.root == images
    assert (a.study_id, a.subject_id, a.report_id, a.split, a.report_text) == ("A", "A", "A", "train",
                                                                               "FINDINGS: Left effusion.")
    assert [(i.dicom_id, i.path, i.view_position) for i in a.images] == [("a1", "a1.png", "PA"),
                                                                         ("a2", "a2.png", "LATERAL")]
    assert (b.report_text, b.report_path, b.images, b.split) == (None, "../notes/b.txt", (), None)
    assert [(r.report_id, r.text) for r in iter_reports(images / "manifest.csv")] == [
        ("A", "FINDINGS: Left effusion."), ("B", "FINDINGS: Cardiomegaly.\n")]
    reader = create_reader("manifest", image_root="..", default_view="PA")
    assert reader.index(images / "manifest.csv").root == images / ".."
    assert reader.index(images / "manifest.csv").studies[1].images == ()
    with pytest.raises(CorpusError, match="column.s. image_path=file not found"):
        create_reader("manifest", columns={"image_path": "file"}).index(images / "manifest.csv")


def test_index_corpus_turns_reader_errors_into_user_errors(tmp_path):
    with pytest.raises(UserError, match="input folder not found"):
        index_corpus(tmp_path / "missing")
    with pytest.raises(UserError, match="manifest not found or not a table"):
        index_corpus(tmp_path, CorpusConfig(reader="manifest"))


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small-corpus")
    synthesize_corpus(root, 3, seed=11)
    return root


def _config_file(tmp_path: Path, corpus: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"extends": "classical", "corpus": corpus}))
    return path


def test_a_parquet_manifest_runs_through_the_pipeline_like_the_corpus_it_lists(small_corpus, tmp_path):
    manifest = tmp_path / "listing" / "studies.parquet"
    manifest.parent.mkdir()
    _manifest_of(small_corpus).to_parquet(manifest)
    listed = _config_file(tmp_path, {"reader": "manifest", "options": {**MANIFEST_OPTIONS,
                                                                        "image_root": str(small_corpus)}})
    by_manifest = run_pipeline(manifest, tmp_path / "by-manifest", load_config(str(listed), NO_GATE))
    run_pipeline(small_corpus, tmp_path / "by-layout", load_config("classical", NO_GATE))
    assert by_manifest.problems == [] and by_manifest.counts["pairs"] > 0
    for table in ("studies", "pairs", "masks", "findings", "discarded", "errors"):
        assert read_table(str(tmp_path / "by-manifest"), table).equals(read_table(str(tmp_path / "by-layout"), table))


def test_openi_reports_run_through_the_pipeline_and_are_accounted_for(tmp_path):
    folder = _openi_folder(tmp_path)
    out = tmp_path / "run"
    summary = run_pipeline(folder, out, load_config(str(_config_file(tmp_path, {"reader": "openi"})), NO_GATE))
    assert summary.problems == []
    studies = read_table(str(out), "studies").to_pylist()
    assert [(s["study_id"], s["report_path"], s["n_images"]) for s in studies] == [
        ("CXR12", "12.xml", 0), ("CXR3", "3.xml", 0), ("CXR7", "7.xml", 0)]
    findings = read_table(str(out), "findings").to_pylist()
    assert {(f["report_id"], f["entity"]) for f in findings if f["presence"] == "present"} == {
        ("CXR3", "effusion"), ("CXR7", "opacity"), ("CXR7", "pneumonia")}
    assert check_run(out) == []
