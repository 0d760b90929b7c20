"""Dataset statistics of the pairs table (the MIMIC-ILS paper's Fig. 4 view) and a PNG bar chart of them.

The chart is drawn with OpenCV (already a dependency) so that no plotting library is needed at run time.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from schemas.vocab import InstructionType, LesionType, NegativeKind, Split

POLARITIES = ("positive", "negative")
_COLUMNS = ("split", "study_id", "dicom_id", "instruction_type", "target", "is_positive", "negative_kind", "mask_id")


def _columns(pairs: pa.Table | list[dict]) -> dict[str, list]:
    if isinstance(pairs, pa.Table):
        return {name: pairs.column(name).to_pylist() for name in _COLUMNS}
    return {name: [row.get(name) for row in pairs] for name in _COLUMNS}


def _ordered(known: list[str], seen) -> list[str]:
    """The vocabulary's order first (zeros included, so charts of two runs line up), then any unknown value."""
    return known + sorted(v for v in set(seen) if v not in known and v is not None)


def dataset_statistics(pairs: pa.Table | list[dict]) -> dict:
    """Counts per lesion type x instruction type x positive/negative, per negative kind and per split.

    `pairs` is the pairs table (a pyarrow Table or its rows). Every vocabulary value appears, with 0 when absent.
    """
    c = _columns(pairs)
    polarity = ["positive" if p else "negative" for p in c["is_positive"]]
    targets = _ordered([t.value for t in LesionType], c["target"])
    itypes = _ordered([t.value for t in InstructionType], c["instruction_type"])
    kinds = _ordered([k.value for k in NegativeKind], c["negative_kind"])
    splits = _ordered([s.value for s in Split], c["split"])

    grid = Counter(zip(c["target"], c["instruction_type"], polarity))
    by_kind = Counter(k for k, p in zip(c["negative_kind"], polarity) if p == "negative")
    by_kind_target = Counter((k, t) for k, t, p in zip(c["negative_kind"], c["target"], polarity) if p == "negative")
    split_polarity = Counter(zip(c["split"], polarity))
    split_studies: dict[str, set] = {s: set() for s in splits}
    split_images: dict[str, set] = {s: set() for s in splits}
    for split, study, dicom in zip(c["split"], c["study_id"], c["dicom_id"]):
        split_studies.setdefault(split, set()).add(study)
        split_images.setdefault(split, set()).add(dicom)

    n_positive = polarity.count("positive")
    return {
        "n_pairs": len(polarity),
        "n_positive": n_positive,
        "n_negative": len(polarity) - n_positive,
        "n_studies": len(set(c["study_id"])),
        "n_images": len(set(c["dicom_id"])),
        "n_masks": len({m for m in c["mask_id"] if m is not None}),
        "by_lesion_instruction": {t: {i: {p: grid[(t, i, p)] for p in POLARITIES} for i in itypes} for t in targets},
        "by_negative_kind": {k: by_kind[k] for k in kinds},
        "by_negative_kind_lesion": {k: {t: by_kind_target[(k, t)] for t in targets} for k in kinds},
        "by_split": {s: {"pairs": split_polarity[(s, "positive")] + split_polarity[(s, "negative")],
                         "positive": split_polarity[(s, "positive")], "negative": split_polarity[(s, "negative")],
                         "studies": len(split_studies.get(s, ())), "images": len(split_images.get(s, ()))}
                     for s in splits},
    }


# --- chart ---------------------------------------------------------------------------------------------------

_WHITE, _BLACK, _GRID, _TEXT = (255, 255, 255), (0, 0, 0), (225, 225, 225), (40, 40, 40)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR: one hue per instruction type, the negative part of a bar in a light tint of the same hue
_ITYPE_COLORS = {"global": (180, 119, 31), "basic": (14, 127, 255), "lesion_inference": (44, 160, 44)}
_FALLBACK_COLORS = [(189, 103, 148), (75, 86, 140), (194, 119, 227), (127, 127, 127)]
_KIND_COLOR, _SPLIT_COLORS = (160, 100, 110), {"positive": (180, 119, 31), "negative": (232, 199, 174)}


def _tint(color: tuple[int, int, int], amount: float = 0.6) -> tuple[int, int, int]:
    return tuple(int(c + (255 - c) * amount) for c in color)


def _nice_step(maximum: float, ticks: int = 5) -> int:
    raw = max(maximum, 1) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return max(1, int(math.ceil(step)))


def _text(img, text: str, org: tuple[int, int], scale: float = 0.5, color=_TEXT, thickness: int = 1,
          anchor: str = "left") -> None:
    """Text with its baseline at org[1]; anchor 'center' / 'right' aligns it horizontally on org[0]."""
    (w, _), _ = cv2.getTextSize(text, _FONT, scale, thickness)
    x = org[0] - (w // 2 if anchor == "center" else w if anchor == "right" else 0)
    cv2.putText(img, text, (int(x), int(org[1])), _FONT, scale, color, thickness, cv2.LINE_AA)


def _vertical_text(img, text: str, center: tuple[int, int], scale: float = 0.55) -> None:
    (w, h), base = cv2.getTextSize(text, _FONT, scale, 1)
    patch = np.full((h + base + 4, w + 4, 3), 255, np.uint8)
    cv2.putText(patch, text, (2, h + 2), _FONT, scale, _TEXT, 1, cv2.LINE_AA)
    patch = cv2.rotate(patch, cv2.ROTATE_90_COUNTERCLOCKWISE)
    y0, x0 = center[1] - patch.shape[0] // 2, center[0] - patch.shape[1] // 2
    region = img[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]]
    np.minimum(region, patch, out=region)


def _axes(img, box: tuple[int, int, int, int], maximum: int, title: str, xlabel: str, ylabel: str) -> float:
    """Frame, horizontal grid with count ticks, labels; returns pixels per count."""
    x0, y0, x1, y1 = box
    step = _nice_step(maximum)
    top = step * max(1, math.ceil(max(maximum, 1) * 1.08 / step))
    scale = (y1 - y0) / top
    for value in range(0, top + 1, step):
        y = int(round(y1 - value * scale))
        cv2.line(img, (x0, y), (x1, y), _GRID, 1)
        _text(img, f"{value:,}", (x0 - 8, y + 5), 0.45, anchor="right")
    cv2.line(img, (x0, y0), (x0, y1), _BLACK, 1)
    cv2.line(img, (x0, y1), (x1, y1), _BLACK, 1)
    _text(img, title, ((x0 + x1) // 2, y0 - 18), 0.65, _BLACK, 2, anchor="center")
    _text(img, xlabel, ((x0 + x1) // 2, y1 + 52), 0.55, anchor="center")
    _vertical_text(img, ylabel, (x0 - 70, (y0 + y1) // 2))
    return scale


def _bar(img, x: int, width: int, base_y: int, scale: float, segments: list[tuple[int, tuple]]) -> None:
    """A stacked bar from the bottom; each segment's count is written inside when it fits, the total on top."""
    y = base_y
    for count, color in segments:
        height = int(round(count * scale))
        if height > 0:
            cv2.rectangle(img, (x, y - height), (x + width, y), color, -1)
            cv2.rectangle(img, (x, y - height), (x + width, y), _TEXT, 1)
            (tw, th), _ = cv2.getTextSize(f"{count:,}", _FONT, 0.38, 1)
            if height >= th + 6 and tw <= width - 2 and len(segments) > 1:
                _text(img, f"{count:,}", (x + width // 2, y - height // 2 + th // 2), 0.38, _BLACK, anchor="center")
        y -= height
    _text(img, f"{sum(c for c, _ in segments):,}", (x + width // 2, y - 5), 0.4, _BLACK, anchor="center")


def _legend(img, origin: tuple[int, int], entries: list[tuple[str, tuple]]) -> None:
    x, y = origin
    for label, color in entries:
        cv2.rectangle(img, (x, y - 12), (x + 18, y + 2), color, -1)
        cv2.rectangle(img, (x, y - 12), (x + 18, y + 2), _TEXT, 1)
        _text(img, label, (x + 26, y), 0.48)
        (w, _), _ = cv2.getTextSize(label, _FONT, 0.48, 1)
        x += w + 56


def render_statistics(stats: dict) -> np.ndarray:
    """The chart as a BGR uint8 image: lesion x instruction type (positive / negative stacked), negative kinds,
    and splits."""
    img = np.full((1100, 1700, 3), 255, np.uint8)
    grid = stats["by_lesion_instruction"]
    targets = list(grid)
    itypes = list(next(iter(grid.values()))) if grid else []
    colors = {t: _ITYPE_COLORS.get(t, _FALLBACK_COLORS[i % len(_FALLBACK_COLORS)]) for i, t in enumerate(itypes)}
    _text(img, f"mimic-ils dataset: {stats['n_pairs']:,} pairs ({stats['n_positive']:,} positive, "
               f"{stats['n_negative']:,} negative), {stats['n_images']:,} images, {stats['n_masks']:,} masks",
          (40, 34), 0.7, _BLACK, 2)

    box = (130, 140, 1660, 580)
    totals = [sum(cell.values()) for row in grid.values() for cell in row.values()]
    scale = _axes(img, box, max(totals, default=0), "Pairs per lesion type and instruction type",
                  "lesion type", "pairs")
    group = (box[2] - box[0]) / max(len(targets), 1)
    bar_w = int(group * 0.78 / max(len(itypes), 1))
    for gi, target in enumerate(targets):
        gx = box[0] + gi * group + group * 0.11
        for ii, itype in enumerate(itypes):
            cell = grid[target][itype]
            _bar(img, int(gx + ii * bar_w), bar_w - 4, box[3], scale,
                 [(cell["positive"], colors[itype]), (cell["negative"], _tint(colors[itype]))])
        _text(img, target, (int(box[0] + (gi + 0.5) * group), box[3] + 24), 0.5, anchor="center")
    legend = [(f"{t} positive", colors[t]) for t in itypes] + [(f"{t} negative", _tint(colors[t])) for t in itypes]
    _legend(img, (box[0] + 10, 66), legend[: len(itypes)])
    _legend(img, (box[0] + 10, 90), legend[len(itypes):])

    kinds = stats["by_negative_kind"]
    kbox = (130, 730, 940, 1000)
    kscale = _axes(img, kbox, max(kinds.values(), default=0), "Negative pairs per kind", "negative kind", "pairs")
    slot = (kbox[2] - kbox[0]) / max(len(kinds), 1)
    for ki, (kind, count) in enumerate(kinds.items()):
        _bar(img, int(kbox[0] + ki * slot + slot * 0.2), int(slot * 0.6), kbox[3], kscale, [(count, _KIND_COLOR)])
        words = kind.split("_")
        half = (len(words) + 1) // 2
        for li, line in enumerate((" ".join(words[:half]), " ".join(words[half:]))):
            _text(img, line, (int(kbox[0] + (ki + 0.5) * slot), kbox[3] + 20 + 16 * li), 0.42, anchor="center")

    splits = stats["by_split"]
    sbox = (1130, 730, 1660, 1000)
    sscale = _axes(img, sbox, max((v["pairs"] for v in splits.values()), default=0), "Pairs per split", "split",
                   "pairs")
    slot = (sbox[2] - sbox[0]) / max(len(splits), 1)
    for si, (split, counts) in enumerate(splits.items()):
        _bar(img, int(sbox[0] + si * slot + slot * 0.2), int(slot * 0.6), sbox[3], sscale,
             [(counts["positive"], _SPLIT_COLORS["positive"]), (counts["negative"], _SPLIT_COLORS["negative"])])
        _text(img, f"{split} ({counts['images']:,} img)", (int(sbox[0] + (si + 0.5) * slot), sbox[3] + 22), 0.45,
              anchor="center")
    _legend(img, (sbox[0] + 10, sbox[1] - 48), [("positive", _SPLIT_COLORS["positive"]),
                                                ("negative", _SPLIT_COLORS["negative"])])
    return img


def plot_statistics(stats: dict, path: Path) -> Path:
    """Write the statistics chart as a PNG (the run directory's `statistics.png`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), render_statistics(stats)):
        raise OSError(f"could not write {path}")
    return path
