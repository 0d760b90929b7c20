"""`mimic-ils audit`: a static HTML report of why findings were dropped, with overlays an auditor can read.

The run directory stores no anatomy or prior maps, so the overlays are recomputed for the sampled
images only, with the run's own backends (the config in manifest.json) at the run's working size:
the same inputs through the same deterministic models give the maps the pipeline decided on, and
the candidate boxes in `discarded.details` are in that working resolution.
"""
from __future__ import annotations

import hashlib
import html
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.corpus import image_path as mimic_image_path
from pipeline.writers import read_table
from schemas.config import FusionRule, PipelineConfig
from schemas.vocab import LesionType, Presence
from transforms.grounding import behind_reported_fluid, reported_region
from transforms.images import decode_for_models
from transforms.masks import decode_rle, resize_mask
from transforms.records import AnatomyResult, Finding, LesionPrior

AUDIT_DIR = "audit"
THUMBS_DIR = "thumbs"
THUMB_LONG_SIDE = 384
ACCEPTED = "accepted"  # the gallery's filter value for positives shown for comparison

# BGR colours of the overlays (the legend in the page names them)
REGION_COLOUR = (60, 200, 60)
KEPT_BOX_COLOUR = (0, 220, 255)
REJECTED_BOX_COLOUR = (40, 40, 230)
MASK_COLOUR = (255, 200, 0)


@dataclass
class AuditItem:
    kind: str  # 'discarded' | 'accepted'
    reason: str  # a DiscardReason value, or 'accepted'
    target: str
    study_id: str
    dicom_id: str | None
    finding: dict | None
    details: dict
    scores: dict = field(default_factory=dict)
    mask: dict | None = None  # masks row of an accepted positive
    thumbnail: str | None = None  # relative to the HTML file
    note: str = ""

    @property
    def key(self) -> str:
        parts = (self.kind, self.finding["finding_id"] if self.finding else "", self.dicom_id or "",
                 self.mask["mask_id"] if self.mask else "")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _stable_rank(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _stratified(rows: list[dict], group: str, limit: int, key) -> list[dict]:
    """Up to `limit` rows, taken in turn from each value of `group` (so rare types are not crowded out)."""
    buckets: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=key):
        buckets[row[group]].append(row)
    chosen, order = [], sorted(buckets)
    while len(chosen) < limit and any(buckets[g] for g in order):
        for g in order:
            if buckets[g] and len(chosen) < limit:
                chosen.append(buckets[g].pop(0))
    return chosen


def select_items(discarded: list[dict], findings: dict[str, dict], pairs: list[dict], masks: dict[str, dict],
                 per_reason: int) -> list[AuditItem]:
    """A sample of discarded findings (up to `per_reason` per reason, spread over lesion types) and of accepted positives."""
    items = []
    by_reason: dict[str, list[dict]] = defaultdict(list)
    for row in discarded:
        by_reason[row["reason"]].append(row)
    for reason in sorted(by_reason):
        for row in _stratified(by_reason[reason], "target", per_reason,
                               key=lambda r: _stable_rank(r["finding_id"], r["dicom_id"])):
            items.append(AuditItem(kind="discarded", reason=reason, target=row["target"], study_id=row["study_id"],
                                   dicom_id=row["dicom_id"], finding=findings.get(row["finding_id"]),
                                   details=json.loads(row["details"] or "{}")))
    # one accepted item per grounded finding and image: the pair asking for the whole mask ('global') if any
    positives: dict[tuple[str, str], dict] = {}
    for pair in sorted(pairs, key=lambda p: (p["instruction_type"] != "global", p["pair_id"])):
        if pair["is_positive"] and pair["mask_id"] in masks:
            positives.setdefault((pair["finding_id"], pair["dicom_id"]), pair)
    for pair in _stratified(list(positives.values()), "target", per_reason, key=lambda p: _stable_rank(p["mask_id"])):
        mask = masks[pair["mask_id"]]
        scores = {k: round(float(mask[k]), 4) for k in ("prior_probability", "region_overlap", "prior_mass",
                                                        "refine_score") if mask.get(k) is not None}
        items.append(AuditItem(kind="accepted", reason=ACCEPTED, target=pair["target"], study_id=pair["study_id"],
                               dicom_id=pair["dicom_id"], finding=findings.get(pair["finding_id"]),
                               details={"instruction": pair["instruction"], "answer": pair["answer"],
                                        "grounded_locations": pair["grounded_locations"]},
                               scores=scores, mask=mask))
    return items


class OverlaySource:
    """Recomputes anatomy and lesion prior for one image at a time with the run's backends (built on first use)."""

    def __init__(self, config: PipelineConfig, corpus_root: Path):
        self.config, self.root = config, corpus_root
        self._models = None
        self.failure: str | None = None

    def _load(self):
        from anatomy_models.base import load_configured

        return load_configured(self.config, "anatomy"), load_configured(self.config, "lesion_prior")

    def maps(self, image: np.ndarray) -> tuple[AnatomyResult | None, LesionPrior | None]:
        if self._models is None and self.failure is None:
            try:
                self._models = self._load()
            except Exception as exc:  # missing weights must not stop the report: overlays degrade to the image
                self.failure = f"overlays unavailable ({type(exc).__name__}: {exc})"
        if self._models is None:
            return None, None
        anatomy_model, prior_model = self._models
        (anatomy,) = anatomy_model.segment([image])
        (prior,) = prior_model.predict([image], [anatomy])
        return anatomy, prior


def _outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, colour, thickness, lineType=cv2.LINE_AA)


def render_overlay(image: np.ndarray, region: np.ndarray | None, prior_map: np.ndarray | None,
                   candidates: list[dict], mask: np.ndarray | None) -> np.ndarray:
    """BGR picture at the image's (working) size: prior heat map, reported region outline, candidate boxes, final mask."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR).astype(np.float32)
    if prior_map is not None:
        heat = cv2.applyColorMap(np.clip(prior_map * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
        alpha = (0.55 * np.clip(prior_map, 0, 1))[..., None]
        canvas = canvas * (1 - alpha) + heat * alpha
    if mask is not None:
        fill = np.zeros_like(canvas)
        fill[mask] = MASK_COLOUR
        canvas = np.where(mask[..., None], canvas * 0.6 + fill * 0.4, canvas)
    canvas = canvas.astype(np.uint8)
    thickness = max(1, round(max(image.shape) / 256))
    if region is not None:
        _outline(canvas, region, REGION_COLOUR, thickness)
    if mask is not None:
        _outline(canvas, mask, MASK_COLOUR, thickness)
    for cand in candidates:
        x, y, w, h = cand["box"]
        colour = KEPT_BOX_COLOUR if cand.get("rejected_by") is None else REJECTED_BOX_COLOUR
        cv2.rectangle(canvas, (int(x), int(y)), (int(x + w - 1), int(y + h - 1)), colour, thickness)
    return canvas


def _finding_record(row: dict) -> Finding:
    return Finding(**{**row, "reported_locations": tuple(row["reported_locations"] or ())})


def _thumbnail(canvas: np.ndarray) -> np.ndarray:
    scale = THUMB_LONG_SIDE / max(canvas.shape[:2])
    if scale >= 1:
        return canvas
    size = (max(1, round(canvas.shape[1] * scale)), max(1, round(canvas.shape[0] * scale)))
    return cv2.resize(canvas, size, interpolation=cv2.INTER_AREA)


def write_thumbnails(items: list[AuditItem], config: PipelineConfig, corpus_root: Path, thumbs_dir: Path,
                     image_paths: dict[str, str], subjects: dict[str, str],
                     present: dict[str, list[Finding]] | None = None) -> None:
    """One JPEG per item with an image; each image decoded and run through the models once. `present`: each study's
    present findings, whose reported fluid hides the lung behind it as it did when the run grounded them."""
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    source = OverlaySource(config, corpus_root)
    by_image: dict[str, list[AuditItem]] = defaultdict(list)
    for item in items:
        if item.dicom_id:
            by_image[item.dicom_id].append(item)
        else:
            item.note = "no frontal image was processed for this finding"
    for dicom_id in sorted(by_image):
        group = by_image[dicom_id]
        study_id = group[0].study_id
        relative = image_paths.get(dicom_id) or mimic_image_path(subjects.get(study_id, ""), study_id, dicom_id)
        try:
            image, _ = decode_for_models(corpus_root / relative, config.vision.work_size)
        except Exception as exc:
            for item in group:
                item.note = f"image {relative} could not be read ({type(exc).__name__})"
            continue
        anatomy, prior = source.maps(image)
        if anatomy is not None and prior is not None:
            prior = behind_reported_fluid((present or {}).get(study_id, []), anatomy, prior, config.grounding)
        for item in group:
            region = None
            if anatomy is not None and item.finding is not None:
                rule = config.grounding.fusion.get(LesionType(item.target), FusionRule())
                region = reported_region(_finding_record(item.finding), anatomy, image.shape, rule)
            prior_map = prior.maps.get(item.target) if prior is not None else None
            mask = None
            if item.mask is not None:
                full = decode_rle(item.mask["rle"], item.mask["height"], item.mask["width"])
                mask = resize_mask(full, *image.shape)
            canvas = render_overlay(image, region, prior_map, item.details.get("candidates", []), mask)
            name = f"{item.key}.jpg"
            cv2.imwrite(str(thumbs_dir / name), _thumbnail(canvas), [cv2.IMWRITE_JPEG_QUALITY, 85])
            item.thumbnail = f"{THUMBS_DIR}/{name}"
            if source.failure:
                item.note = source.failure


# ---------------------------------------------------------------- HTML


def _highlighted_sentence(finding: dict | None) -> str:
    if not finding:
        return "<em>finding not found in the findings table</em>"
    sentence, mention = finding["sentence"] or "", finding["mention"] or ""
    match = re.search(re.escape(mention), sentence, flags=re.IGNORECASE) if mention else None
    if match is None:
        return html.escape(sentence)
    return (html.escape(sentence[:match.start()]) + f"<mark>{html.escape(match.group(0))}</mark>"
            + html.escape(sentence[match.end():]))


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return html.escape(json.dumps(value))
    return html.escape(str(value))


def _scores_html(item: AuditItem) -> str:
    scalars = {k: v for k, v in {**item.scores, **item.details}.items() if k != "candidates"}
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_value(v)}</td></tr>" for k, v in sorted(scalars.items()))
    out = f"<table class='scores'>{rows}</table>" if rows else ""
    candidates = item.details.get("candidates") or []
    if candidates:
        columns = ["region_overlap", "confidence", "prior_mass", "area_fraction", "rejected_by"]
        head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in columns)
        def cell(candidate: dict, column: str) -> str:
            value = candidate.get(column)
            return "kept" if column == "rejected_by" and value is None else _value(value)

        body = "".join("<tr>" + "".join(f"<td>{cell(c, k)}</td>" for k in columns) + "</tr>" for c in candidates)
        out += f"<table class='candidates'><tr>{head}</tr>{body}</table>"
    return out


def _item_html(item: AuditItem) -> str:
    finding = item.finding or {}
    locations = ", ".join(finding.get("reported_locations") or []) or "no location stated"
    picture = (f"<img src='{html.escape(item.thumbnail)}' alt='{html.escape(item.target)} overlay' loading='lazy'>"
               if item.thumbnail else "<div class='noimage'>no image</div>")
    note = f"<p class='note'>{html.escape(item.note)}</p>" if item.note else ""
    return (
        f"<article class='item {item.kind}' data-kind='{item.kind}' data-reason='{html.escape(item.reason)}' "
        f"data-target='{html.escape(item.target)}'>"
        f"{picture}<div class='text'>"
        f"<h3><span class='reason'>{html.escape(item.reason)}</span> · {html.escape(item.target)}</h3>"
        f"<p class='sentence'>{_highlighted_sentence(item.finding)}</p>"
        f"<p class='meta'>study {html.escape(item.study_id)} · image {html.escape(item.dicom_id or '—')} · "
        f"{html.escape(locations)}</p>{note}{_scores_html(item)}</div></article>"
    )


def _counts_html(discarded: list[dict]) -> str:
    counts = Counter((r["reason"], r["target"]) for r in discarded)
    reasons = sorted({r for r, _ in counts})
    targets = [t.value for t in LesionType if any(t.value == tt for _, tt in counts)]
    head = "".join(f"<th>{html.escape(t)}</th>" for t in targets) + "<th>total</th>"
    rows = []
    for reason in reasons:
        cells = "".join(f"<td>{counts.get((reason, t), 0) or ''}</td>" for t in targets)
        rows.append(f"<tr><th>{html.escape(reason)}</th>{cells}<td>{sum(counts[(reason, t)] for t in targets)}</td></tr>")
    totals = "".join(f"<td>{sum(counts[(r, t)] for r in reasons)}</td>" for t in targets)
    rows.append(f"<tr class='total'><th>total</th>{totals}<td>{len(discarded)}</td></tr>")
    return f"<table class='counts'><tr><th>reason \\ lesion type</th>{head}</tr>{''.join(rows)}</table>"


def _options(values: list[str]) -> str:
    return "".join(f"<option value='{html.escape(v)}'>{html.escape(v)}</option>" for v in values)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.5em}
table{border-collapse:collapse;font-size:.85em} td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
table.counts td{text-align:right} tr.total{font-weight:bold}
.controls{position:sticky;top:0;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ddd}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px;margin-top:12px}
.item{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;display:flex;gap:8px}
.item.accepted{border-color:#7c7}
.item[hidden]{display:none}
.item img,.noimage{width:200px;height:auto;flex:none;background:#111;color:#aaa;text-align:center}
.noimage{height:200px;line-height:200px}
.item .text{min-width:0;flex:1}
.candidates{display:block;max-height:12em;overflow:auto;margin-top:4px}
.item h3{margin:0 0 4px;font-size:.95em;overflow-wrap:anywhere} .reason{font-family:monospace}
mark{background:#ffe066;padding:0 2px} .meta,.note{font-size:.75em;color:#666;overflow-wrap:anywhere} .note{color:#a40}
.legend span{display:inline-block;margin-right:1em;font-size:.85em}
.swatch{display:inline-block;width:.9em;height:.9em;vertical-align:middle;margin-right:.3em;border:1px solid #999}
"""

_SCRIPT = """
(function () {
  const pageSize = PAGE_SIZE;
  const items = Array.from(document.querySelectorAll('article.item'));
  const reason = document.getElementById('reason');
  const target = document.getElementById('target');
  const status = document.getElementById('status');
  let page = 0;
  function matching() {
    return items.filter(function (el) {
      return (!reason.value || el.dataset.reason === reason.value) &&
             (!target.value || el.dataset.target === target.value);
    });
  }
  function render() {
    const shown = matching();
    const pages = Math.max(1, Math.ceil(shown.length / pageSize));
    page = Math.min(page, pages - 1);
    const first = page * pageSize, last = Math.min(shown.length, first + pageSize);
    items.forEach(function (el) { el.hidden = true; });
    shown.slice(first, last).forEach(function (el) { el.hidden = false; });
    status.textContent = shown.length ? ('items ' + (first + 1) + '\\u2013' + last + ' of ' + shown.length +
      ' \\u00b7 page ' + (page + 1) + ' of ' + pages) : 'no items match';
    document.getElementById('prev').disabled = page === 0;
    document.getElementById('next').disabled = page >= pages - 1;
  }
  function fromHash() {
    // '#reason=...&target=...&page=N' preselects the view, so a link can point at one slice of the gallery
    const params = new URLSearchParams(window.location.hash.slice(1));
    if (params.has('reason')) reason.value = params.get('reason');
    if (params.has('target')) target.value = params.get('target');
    page = Math.max(0, (parseInt(params.get('page'), 10) || 1) - 1);
  }
  function toHash() {
    const params = new URLSearchParams();
    if (reason.value) params.set('reason', reason.value);
    if (target.value) params.set('target', target.value);
    if (page) params.set('page', String(page + 1));
    history.replaceState(null, '', '#' + params.toString());
  }
  reason.addEventListener('change', function () { page = 0; toHash(); render(); });
  target.addEventListener('change', function () { page = 0; toHash(); render(); });
  document.getElementById('prev').addEventListener('click', function () { page -= 1; toHash(); render(); });
  document.getElementById('next').addEventListener('click', function () { page += 1; toHash(); render(); });
  fromHash();
  render();
})();
"""


def _legend() -> str:
    def swatch(bgr: tuple[int, int, int], label: str) -> str:
        b, g, r = bgr
        return f"<span><i class='swatch' style='background:rgb({r},{g},{b})'></i>{label}</span>"

    return ("<p class='legend'>" + swatch(REGION_COLOUR, "reported region (c1)")
            + swatch(KEPT_BOX_COLOUR, "kept candidate box") + swatch(REJECTED_BOX_COLOUR, "rejected candidate box")
            + swatch(MASK_COLOUR, "final mask") + "<span>heat map: lesion prior of the finding's type</span></p>")


def render_html(manifest: dict, items: list[AuditItem], discarded: list[dict], counts: dict[str, int],
                page_size: int) -> str:
    reasons = sorted({i.reason for i in items if i.kind == "discarded"}) + [ACCEPTED]
    targets = [t.value for t in LesionType if any(i.target == t.value for i in items)]
    n_discarded_shown = sum(1 for i in items if i.kind == "discarded")
    summary = " · ".join(f"{name}: {n}" for name, n in counts.items())
    title = f"mimic-ils audit · {manifest.get('run_id', '')}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<link rel="icon" href="data:,"><meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>config <code>{html.escape(str(manifest.get('config_name', '')))}</code> · corpus
<code>{html.escape(str((manifest.get('inputs') or {}).get('root', '')))}</code> · {html.escape(summary)}</p>
<h2>Discarded findings by reason and lesion type</h2>
{_counts_html(discarded)}
<h2>Gallery</h2>
<p>{n_discarded_shown} discarded findings (up to {page_size} per reason, spread over lesion types) and
{len(items) - n_discarded_shown} accepted positives for comparison.</p>
{_legend()}
<div class="controls">
<label>reason <select id="reason"><option value="">all</option>{_options(reasons)}</select></label>
<label>lesion type <select id="target"><option value="">all</option>{_options(targets)}</select></label>
<button id="prev" type="button">previous</button> <button id="next" type="button">next</button>
<span id="status"></span></div>
<section class="gallery">
{''.join(_item_html(i) for i in items)}
</section>
<script>{_SCRIPT.replace('PAGE_SIZE', str(int(page_size)))}</script>
</body></html>
"""


def write_audit(run_dir: Path, corpus_root: Path | None = None, output: Path | None = None,
                page_size: int = 50) -> Path:
    """Write the audit page (default `run_dir/audit/index.html`) with its thumbnails beside it; returns its path.

    The gallery samples up to `page_size` discarded findings per reason and `page_size` accepted
    positives; overlays are recomputed for those images only.
    """
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    config = PipelineConfig.model_validate(manifest["config"])
    corpus_root = Path(corpus_root or manifest["inputs"]["root"])
    output = Path(output) if output else run_dir / AUDIT_DIR / "index.html"
    output.parent.mkdir(parents=True, exist_ok=True)

    def rows(name: str) -> list[dict]:
        return read_table(str(run_dir), name).to_pylist()

    discarded, pairs, studies = rows("discarded"), rows("pairs"), rows("studies")
    findings = {f["finding_id"]: f for f in rows("findings")}
    masks = {m["mask_id"]: m for m in rows("masks")}
    items = select_items(discarded, findings, pairs, masks, page_size)
    # only the sampled studies' findings are needed for their overlays
    sampled = {item.study_id for item in items}
    present: dict[str, list[Finding]] = defaultdict(list)
    for finding in findings.values():
        if finding["study_id"] in sampled and finding["presence"] == Presence.PRESENT.value:
            present[finding["study_id"]].append(_finding_record(finding))
    write_thumbnails(items, config, corpus_root, output.parent / THUMBS_DIR,
                     {p["dicom_id"]: p["image_path"] for p in pairs},
                     {s["study_id"]: s["subject_id"] for s in studies}, present)
    counts = {"studies": len(studies), "pairs": len(pairs),
              "positive pairs": sum(1 for p in pairs if p["is_positive"]), "masks": len(masks),
              "findings": len(findings), "discarded": len(discarded)}
    output.write_text(render_html(manifest, items, discarded, counts, page_size))
    return output
