"""Bad input, nothing lost: a synthetic corpus with deliberate damage runs to the end, and every input is accounted
for exactly once (DESIGN.md §3), each damaged one with a precise errors or discarded row."""
from __future__ import annotations

import gzip
import json
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.contract import check_run
from pipeline.corpus import METADATA_FILE, index_corpus
from pipeline.run import run_pipeline
from pipeline.writers import read_table
from schemas.tables import TABLES
from transforms.images import MAX_IMAGE_PIXELS, ImageDecodeError, ImageTooLarge, decode_for_models
from transforms.sections import LAST_PARAGRAPH

NO_GATE = ["quality.validate_after_run=false"]
FRONTAL = ("PA", "AP")
EFFUSION_REPORT = "FINDINGS: Large right pleural effusion.\n\nIMPRESSION: Right pleural effusion.\n"


def write_dicom(path: Path, pixels: np.ndarray, photometric: str) -> None:
    """A minimal single-frame, uncompressed 16-bit grayscale DICOM file."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_bomb_png(path: Path, width: int, height: int) -> None:
    """A PNG whose header announces width x height pixels but whose data is a few bytes (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def radiograph(height: int = 600, width: int = 500) -> np.ndarray:
    """Dark lungs, bright mediastinum and body edge: enough structure to tell inverted from not."""
    image = np.full((height, width), 200, np.uint8)
    cv2.ellipse(image, (width // 3, height // 2), (width // 7, height // 3), 0, 0, 360, 40, -1)
    cv2.ellipse(image, (2 * width // 3, height // 2), (width // 7, height // 3), 0, 0, 360, 40, -1)
    return image


# --- decoding odd images (pure) -------------------------------------------------------------------------------


def test_sixteen_bit_png_and_rgb_jpeg_decode_as_the_8_bit_original(tmp_path):
    image = radiograph()
    cv2.imwrite(str(tmp_path / "deep.png"), image.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "colour.jpg"), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    for name in ("deep.png", "colour.jpg"):
        pixels, size = decode_for_models(tmp_path / name, 256)
        assert pixels.dtype == np.uint8 and pixels.ndim == 2 and max(pixels.shape) == 256 and size == (600, 500)
        reference = cv2.resize(image, pixels.shape[::-1], interpolation=cv2.INTER_AREA)
        # 16-bit images are stretched by their own range: the same picture, not the same grey levels
        assert np.corrcoef(pixels.ravel(), reference.ravel())[0, 1] > 0.98, name


def test_monochrome1_dicom_is_inverted_to_bone_bright(tmp_path):
    image = radiograph().astype(np.uint16) * 16  # 12-bit values in a 16-bit container, as CR devices write
    write_dicom(tmp_path / "m2.dcm", image, "MONOCHROME2")
    write_dicom(tmp_path / "m1.dcm", image.max() - image, "MONOCHROME1")
    m2, size2 = decode_for_models(tmp_path / "m2.dcm", 300)
    m1, size1 = decode_for_models(tmp_path / "m1.dcm", 300)
    assert size1 == size2 == (600, 500) and m1.shape == m2.shape and max(m1.shape) == 300
    assert np.abs(m1.astype(int) - m2).mean() < 3
    assert m1[300 * 300 // 600, 300 * 100 // 600] < 100 < m1[5, 5]  # lung dark, body edge bright


def test_decompression_bombs_and_truncated_files_are_refused_before_decoding(tmp_path):
    write_bomb_png(tmp_path / "bomb.png", 12_000, 10_000)
    with pytest.raises(ImageTooLarge, match="above the limit"):
        decode_for_models(tmp_path / "bomb.png", 512)
    assert 12_000 * 10_000 > MAX_IMAGE_PIXELS
    write_bomb_png(tmp_path / "small.png", 400, 300)
    with pytest.raises(ImageTooLarge):
        decode_for_models(tmp_path / "small.png", 512, max_pixels=100_000)
    ok, jpeg = cv2.imencode(".jpg", radiograph())
    (tmp_path / "cut.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_for_models(tmp_path / "cut.jpg", 512)
    (tmp_path / "not.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(ImageDecodeError):
        decode_for_models(tmp_path / "not.dcm", 512)


# --- the damaged corpus, end to end -----------------------------------------------------------------------------


def _set_views(root: Path, study_id: str, view: str) -> None:
    meta = pd.read_csv(root / METADATA_FILE, dtype=str, keep_default_na=False)
    meta.loc[meta["study_id"] == study_id, "ViewPosition"] = view
    with gzip.open(root / METADATA_FILE, "wt", newline="") as handle:
        meta.to_csv(handle, index=False)


@pytest.fixture(scope="module")
def damaged(corpus, tmp_path_factory):
    """The shared corpus with one kind of damage per study; returns (root, run dir, what was done to which input)."""
    root = tmp_path_factory.mktemp("damaged") / "corpus"
    shutil.copytree(corpus, root)
    studies = index_corpus(root).studies
    with_lateral = [s for s in studies if any(i.view_position not in FRONTAL for i in s.images)
                    and any(i.view_position in FRONTAL for i in s.images)]
    lateral_study = with_lateral[0]
    others = [s for s in studies if s is not lateral_study and any(i.view_position in FRONTAL for i in s.images)]
    assert len(others) >= 11, "the shared corpus is too small for one damage per study"
    (non_utf8, empty, truncated, missing, deep, colour, dicom, bomb, no_headers, lateral_only, no_report) = others[:11]
    frontal = {s.study_id: next(i for i in s.images if i.view_position in FRONTAL) for s in others}
    damage: dict[str, object] = {}

    def path(image):
        return root / image.path

    (root / non_utf8.report_path).write_bytes(b"\xff\xfe\x00 not utf-8 \xc3\x28")
    (root / empty.report_path).write_text("")
    (root / no_report.report_path).unlink()
    (root / no_headers.report_path).write_text("Large right pleural effusion.\n")
    (root / lateral_only.report_path).write_text(EFFUSION_REPORT)
    _set_views(root, lateral_only.study_id, "LATERAL")
    image = frontal[truncated.study_id]
    path(image).write_bytes(path(image).read_bytes()[:5000])
    path(frontal[missing.study_id]).unlink()
    lateral = next(i for i in lateral_study.images if i.view_position not in FRONTAL)
    path(lateral).unlink()
    original = cv2.imread(str(path(frontal[deep.study_id])), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(path(frontal[deep.study_id]).with_suffix(".png")), original.astype(np.uint16) * 257)
    path(frontal[deep.study_id]).unlink()
    original = cv2.imread(str(path(frontal[colour.study_id])), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(path(frontal[colour.study_id])), cv2.cvtColor(original, cv2.COLOR_GRAY2BGR))
    original = cv2.imread(str(path(frontal[dicom.study_id])), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 16
    write_dicom(path(frontal[dicom.study_id]).with_suffix(".dcm"), original.max() - original, "MONOCHROME1")
    path(frontal[dicom.study_id]).unlink()
    write_bomb_png(path(frontal[bomb.study_id]).with_suffix(".png"), 12_000, 10_000)
    path(frontal[bomb.study_id]).unlink()
    # files without metadata rows: one in a listed study's folder, one in a folder no metadata or report names
    stray = path(frontal[non_utf8.study_id]).with_name("stray-image.jpg")
    shutil.copy(path(frontal[colour.study_id]), stray)
    subject = non_utf8.subject_id
    orphan_folder = root / f"files/p{subject[:2]}/p{subject}/s59999999"
    orphan_folder.mkdir()
    shutil.copy(path(frontal[colour.study_id]), orphan_folder / "orphan-image.jpg")
    # a report file without metadata rows
    report_only = root / "files/p19/p19999999/s59999998.txt"
    report_only.parent.mkdir(parents=True)
    report_only.write_text(EFFUSION_REPORT)

    damage.update(non_utf8=non_utf8, empty=empty, no_report=no_report, no_headers=no_headers,
                  lateral_only=lateral_only, truncated=frontal[truncated.study_id], missing=frontal[missing.study_id],
                  lateral=lateral, deep=frontal[deep.study_id], colour=frontal[colour.study_id],
                  dicom=frontal[dicom.study_id], bomb=frontal[bomb.study_id])
    out = tmp_path_factory.mktemp("damaged-run")
    summary = run_pipeline(root, out, load_config("classical", NO_GATE), overwrite=True)
    return root, out, summary, damage


def _tables(out):
    return {name: read_table(str(out), name).to_pylist() for name in TABLES}


def test_the_run_finishes_and_honours_the_contract(damaged):
    root, out, summary, _ = damaged
    assert summary.finished and summary.problems == [] and check_run(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["unlisted_images"] == 2


def test_every_input_is_accounted_for_exactly_once(damaged):
    root, out, summary, _ = damaged
    t = _tables(out)
    index = index_corpus(root)
    # every study (metadata or report file) has exactly one studies row, and nothing else does
    assert sorted(r["study_id"] for r in t["studies"]) == sorted(s.study_id for s in index.studies)
    assert "59999998" in {r["study_id"] for r in t["studies"]}
    # every error row names one input, once
    keys = [(e["stage"], e["key"]) for e in t["errors"]]
    assert len(keys) == len(set(keys))
    assert all(e["study_id"] and e["message"] and e["input_path"] for e in t["errors"])
    # every frontal image listed in the metadata was either grounded or has exactly one error row
    errors_by_key = {e["key"]: e for e in t["errors"]}
    frontal = [i for s in index.studies for i in s.images if i.view_position in FRONTAL]
    failed = [i for i in frontal if i.dicom_id in errors_by_key]
    assert summary.counters["images_grounded"] + len(failed) == len(frontal)
    # every image file on disk without a metadata row has one error row, keyed by its file name
    assert {u.dicom_id for u in index.unlisted_images} == {"stray-image", "orphan-image"}
    for unlisted in index.unlisted_images:
        row = errors_by_key[unlisted.dicom_id]
        assert (row["stage"], row["error_type"], row["study_id"]) == ("read", "ImageNotInMetadata", unlisted.study_id)
    assert errors_by_key["orphan-image"]["study_id"] == "59999999"
    # counters agree with the tables
    assert summary.counters["studies_read"] == len(index.studies)
    assert sum(v for k, v in summary.counters.items() if k.startswith("errors.")) == len(t["errors"])
    assert sum(v for k, v in summary.counters.items() if k.startswith("discarded.")) == len(t["discarded"])
    assert summary.counters["pairs_positive"] + summary.counters["pairs_negative"] == len(t["pairs"])


def test_each_damaged_input_has_a_precise_reason(damaged):
    root, out, summary, d = damaged
    t = _tables(out)
    by_key = {e["key"]: e for e in t["errors"]}
    studies = {r["study_id"]: r for r in t["studies"]}

    def error(key):
        row = by_key[key]
        return row["stage"], row["error_type"]

    assert error(d["non_utf8"].report_id) == ("read", "UnicodeDecodeError")
    assert error(d["empty"].report_id) == ("read", "ValueError")
    assert error(d["no_report"].report_id) == ("read", "FileNotFoundError")
    assert error(d["truncated"].dicom_id) == ("decode", "ImageDecodeError")
    assert "truncated" in by_key[d["truncated"].dicom_id]["message"]
    assert error(d["missing"].dicom_id) == ("decode", "ImageDecodeError")
    assert error(d["lateral"].dicom_id) == ("read", "FileNotFoundError")
    assert error(d["bomb"].dicom_id) == ("decode", "ImageTooLarge")
    assert by_key[d["bomb"].dicom_id]["input_path"].endswith(".png")
    for study_key in ("non_utf8", "empty", "no_report"):
        assert studies[d[study_key].study_id]["n_findings"] == 0
    # odd but valid images are decoded, not errors
    for name, suffix in (("deep", ".png"), ("colour", ".jpg"), ("dicom", ".dcm")):
        assert d[name].dicom_id not in by_key, name
    assert summary.counters["images_grounded"] >= 3
    # a report without FINDINGS/IMPRESSION is structured from its last paragraph
    no_headers = [f for f in t["findings"] if f["study_id"] == d["no_headers"].study_id]
    assert no_headers and all(f["section"] == LAST_PARAGRAPH for f in no_headers)
    assert any(f["entity"] == "effusion" and f["presence"] == "present" for f in no_headers)
    # a study with lateral views only: its present findings are discarded as no_frontal_image
    lateral_only = studies[d["lateral_only"].study_id]
    assert lateral_only["n_frontal"] == 0 and lateral_only["n_positive_pairs"] == 0
    reasons = {r["reason"] for r in t["discarded"] if r["study_id"] == d["lateral_only"].study_id}
    assert reasons == {"no_frontal_image"}
    # a report without metadata rows is a study with no images
    report_only = studies["59999998"]
    assert report_only["n_images"] == 0 and report_only["status"] == "discarded"
    assert summary.counters["discarded.no_frontal_image"] >= 2
