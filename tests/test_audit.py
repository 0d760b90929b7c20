"""The audit page on a real run: counts, gallery sample, thumbnails on disk, and a render in headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import asdict

import cv2
import numpy as np
import pytest
from conftest import make_finding
from test_lesion_prior import film_with_right_basal_fluid

from anatomy_models.classical_prior import ClassicalLesionPrior
from pipeline.audit import ACCEPTED, AuditItem, OverlaySource, render_overlay, write_audit, write_thumbnails
from pipeline.config import load_config
from pipeline.writers import read_table


PAGE_SIZE = 4
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)


@pytest.fixture(scope="module")
def audit_page(run_dir):
    return write_audit(run_dir, page_size=PAGE_SIZE)


def articles(page_html: str) -> list[str]:
    return re.findall(r"<article [^>]*>", page_html)


def test_page_counts_every_discarded_finding_and_samples_per_reason(run_dir, audit_page):
    discarded = read_table(str(run_dir), "discarded").to_pylist()
    page = audit_page.read_text()
    assert audit_page == run_dir / "audit" / "index.html"
    assert "<tr class='total'><th>total</th>" in page and f"<td>{len(discarded)}</td></tr></table>" in page
    tags = articles(page)
    by_reason = Counter(re.search(r"data-reason='([^']+)'", t).group(1) for t in tags)
    for reason, n in Counter(r["reason"] for r in discarded).items():
        assert by_reason[reason] == min(n, PAGE_SIZE)
    positives = {(p["finding_id"], p["dicom_id"]) for p in read_table(str(run_dir), "pairs").to_pylist()
                 if p["is_positive"]}
    assert by_reason[ACCEPTED] == min(len(positives), PAGE_SIZE) > 0
    assert "<mark>" in page  # the mention is highlighted in its sentence
    for src in re.findall(r"<img src='([^']+)'", page):
        assert (audit_page.parent / src).is_file(), src


def test_overlay_draws_region_boxes_heat_and_mask():
    image = np.full((100, 120), 90, np.uint8)
    region = np.zeros((100, 120), bool)
    region[20:80, 10:50] = True
    prior = np.zeros((100, 120), np.float32)
    prior[30:50, 60:90] = 1.0
    mask = np.zeros((100, 120), bool)
    mask[60:90, 70:110] = True
    canvas = render_overlay(image, region, prior, [{"box": [60, 30, 30, 20], "rejected_by": "low_confidence"}], mask)
    assert canvas.shape == (100, 120, 3)
    assert not np.array_equal(canvas[20, 30], canvas[50, 30])  # the region's outline is drawn
    assert canvas[40, 75].std() > 20  # the heat map colours the prior
    assert canvas[30, 75, 2] > 150 and canvas[30, 75, 0] < 100  # the rejected box's red edge
    assert canvas[75, 90, 0] > canvas[75, 90, 2]  # the mask's tint


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install -y chromium)")
def test_page_renders_in_headless_chromium_without_console_errors(audit_page, tmp_path):
    url = audit_page.resolve().as_uri()
    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert ":CONSOLE" not in dom.stderr, [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    tags = articles(dom.stdout)
    visible = [t for t in tags if " hidden" not in t]
    assert len(visible) == min(PAGE_SIZE, len(tags)) and len(tags) > PAGE_SIZE
    assert f"items 1–{PAGE_SIZE} of {len(tags)}" in dom.stdout

    accepted = _chromium(tmp_path, "--dump-dom", f"{url}#reason={ACCEPTED}")
    shown = [t for t in articles(accepted.stdout) if " hidden" not in t]
    assert shown and all(f"data-reason='{ACCEPTED}'" in t or f'data-reason="{ACCEPTED}"' in t for t in shown)

    screenshot = tmp_path / "audit.png"
    shot = _chromium(tmp_path, "--window-size=1400,1800", f"--screenshot={screenshot}", url)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000


def test_overlay_shows_the_prior_as_grounding_saw_it_behind_reported_fluid(tmp_path, monkeypatch):
    """A pneumonia discarded at a base where the report names fluid: its overlay must not show the prior that the
    fluid hid from grounding, or the picture contradicts the recorded reason."""
    film, anatomy, fluid = film_with_right_basal_fluid()
    (corpus := tmp_path / "corpus").mkdir()
    cv2.imwrite(str(corpus / "film.png"), film)
    (prior,) = ClassicalLesionPrior().predict([film], [anatomy])
    monkeypatch.setattr(OverlaySource, "maps", lambda self, pixels: (anatomy, prior))
    pneumonia = make_finding("pneumonia", ["right lung base"])
    row = asdict(pneumonia) | {"reported_locations": list(pneumonia.reported_locations)}
    item = AuditItem(kind="discarded", reason="no_prior_signal", target="pneumonia", study_id=pneumonia.study_id,
                     dicom_id="film", finding=row, details={})
    suspected = make_finding("effusion", ["right lung"], certainty="uncertain")
    config = load_config("classical").config
    pictures = {}
    for name, present in (("fluid not reported", {}), ("fluid reported", {pneumonia.study_id: [pneumonia, suspected]})):
        write_thumbnails([item], config, corpus, tmp_path / name, {"film": "film.png"}, {}, present)
        pictures[name] = cv2.imread(str(tmp_path / name / f"{item.key}.jpg")).astype(float)
    change = np.abs(pictures["fluid not reported"] - pictures["fluid reported"]).mean(axis=2)
    plain = cv2.cvtColor(film, cv2.COLOR_GRAY2BGR).astype(float)
    assert change[fluid].mean() > 20  # the heat over the fluid is gone ...
    assert np.abs(pictures["fluid reported"] - plain).mean(axis=2)[fluid].mean() < 10  # ... leaving the film itself
