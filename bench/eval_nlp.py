"""Score the rule-based structurer on the OpenI reports shipped in torchxrayvision.

- Labels: report-level precision/recall/F1 per label against openi-gold/dev_labels.csv (a report
  is positive for a label when it has a finding of that type with presence 'present' and
  certainty 'definite'; the gold counts pericardial effusion as Effusion).
- Opacity: the same against the MeSH major headings Opacity / Airspace Disease / Infiltrate /
  Density (dev_mesh_major.csv), over the reports listed there.
- Locations: where a MeSH heading of a lesion type carries locations (e.g.
  'Opacity/lung/base/left'), whether the locations of our present findings of that type agree.

Run: .venv/bin/python bench/eval_nlp.py [--gold DIR] [--reports PATH] [--errors N]
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from schemas.vocab import LUNG_BY_SIDE, ZONES_BY_SIDE, LesionType, Location  # noqa: E402
from transforms.report_readers import iter_reports  # noqa: E402
from transforms.structuring import RuleStructurer, load_vocabulary  # noqa: E402

GOLD_DIR = REPO.parent / "shared" / "data" / "openi-gold"
LABELS = {
    "Atelectasis": LesionType.ATELECTASIS,
    "Cardiomegaly": LesionType.CARDIOMEGALY,
    "Effusion": LesionType.EFFUSION,
    "Pneumonia": LesionType.PNEUMONIA,
    "Consolidation": LesionType.CONSOLIDATION,
    "Edema": LesionType.EDEMA,
}
OPACITY_HEADINGS = {"Opacity", "Airspace Disease", "Infiltrate", "Density"}
# MeSH headings whose location modifiers we compare, by lesion type.
LOCATED_HEADINGS = {
    **{h: LesionType.OPACITY for h in OPACITY_HEADINGS},
    "Pulmonary Atelectasis": LesionType.ATELECTASIS,
    "Pleural Effusion": LesionType.EFFUSION,
    "Consolidation": LesionType.CONSOLIDATION,
    "Pneumonia": LesionType.PNEUMONIA,
}
MESH_ZONES = {"base": 3, "lower lobe": 3, "costophrenic angle": 3, "cardiophrenic angle": 3,
              "upper lobe": 1, "middle lobe": 2, "hilum": 2, "apex": 0}


def openi_tgz() -> Path:
    """The OpenI reports that torchxrayvision ships (found without importing it: that would load torch)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        sys.exit("torchxrayvision is not installed: pass --reports PATH")
    return Path(spec.origin).resolve().parent / "data" / "NLMCXR_reports.tgz"


def mesh_locations(modifiers: list[str]) -> set[str]:
    """CXAS locations named by MeSH modifiers ('lung', 'base', 'left', 'lingula', ...)."""
    sides = [s for s in ("right", "left") if s in modifiers] or (
        ["right", "left"] if "bilateral" in modifiers or "lung" in modifiers else []
    )
    result: set[str] = set()
    if "lingula" in modifiers:
        result.add(Location.LEFT_MID.value)
    if "retrocardiac" in modifiers:
        result.add(Location.LEFT_BASE.value)
    zones = [MESH_ZONES[m] for m in modifiers if m in MESH_ZONES]
    for side in sides if zones else []:
        result.update(ZONES_BY_SIDE[side][z].value for z in zones)
    if not result and sides and not zones and ("right" in modifiers or "left" in modifiers or "bilateral" in modifiers):
        result.update(LUNG_BY_SIDE[side].value for side in sides)
    return result


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def side_of(locations: set[str]) -> set[str]:
    return {name.split()[0] for name in locations if name.split()[0] in ("right", "left")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gold", type=Path, default=GOLD_DIR)
    parser.add_argument("--reports", type=Path, default=None, help="OpenI .tgz or XML folder")
    parser.add_argument("--vocabulary", default="en_cxr")
    parser.add_argument("--errors", type=int, default=0, help="print up to N false positives/negatives per label")
    parser.add_argument("--location-errors", type=int, default=0, help="print up to N location disagreements")
    args = parser.parse_args()

    reports_path = args.reports or openi_tgz()
    labels_csv, mesh_csv = args.gold / "dev_labels.csv", args.gold / "dev_mesh_major.csv"
    for path in (reports_path, labels_csv, mesh_csv):
        if not path.exists():
            sys.exit(f"missing {path}: install torchxrayvision / provide the openi-gold folder")

    reports = list(iter_reports(reports_path))
    structurer = RuleStructurer(load_vocabulary(args.vocabulary))
    started = time.perf_counter()
    all_findings = structurer.structure(reports)
    elapsed = time.perf_counter() - started
    positive: dict[str, set[str]] = defaultdict(set)  # report_id -> present+definite types
    present_locations: dict[tuple[str, str], set[str]] = defaultdict(set)
    for findings in all_findings:
        for f in findings:
            if f.presence == "present" and f.certainty == "definite":
                positive[f.report_id].add(f.entity)
            if f.presence == "present":
                present_locations[(f.report_id, f.entity)].update(f.reported_locations)
    texts = {r.report_id: r.text for r in reports}

    with open(labels_csv, newline="") as handle:
        gold_rows = list(csv.DictReader(handle))
    print(f"OpenI reports structured: {len(reports)} in {elapsed:.2f} s; dev labels: {len(gold_rows)} reports\n")
    print(f"{'label':<14}{'n_gold':>7}{'tp':>6}{'fp':>6}{'fn':>6}{'P':>8}{'R':>8}{'F1':>8}")
    totals = [0, 0, 0]
    f1s = []
    for label, entity in LABELS.items():
        tp = fp = fn = 0
        misses: list[tuple[str, str]] = []
        for row in gold_rows:
            gold = row[label] == "1"
            predicted = entity.value in positive.get(row["filename"], ())
            tp += gold and predicted
            fp += predicted and not gold
            fn += gold and not predicted
            if gold != predicted:
                misses.append(("FP" if predicted else "FN", row["filename"]))
        p, r, f = prf(tp, fp, fn)
        f1s.append(f)
        totals = [totals[0] + tp, totals[1] + fp, totals[2] + fn]
        print(f"{label:<14}{tp + fn:>7}{tp:>6}{fp:>6}{fn:>6}{p:>8.3f}{r:>8.3f}{f:>8.3f}")
        for kind, report_id in misses[: args.errors]:
            print(f"    {kind} {report_id}: {' '.join(texts.get(report_id, '').split())[:300]}")
    micro = prf(*totals)
    print(f"{'macro-F1':<14}{'':>31}{sum(f1s) / len(f1s):>24.3f}")
    print(f"{'micro':<14}{'':>7}{totals[0]:>6}{totals[1]:>6}{totals[2]:>6}{micro[0]:>8.3f}{micro[1]:>8.3f}{micro[2]:>8.3f}")

    mesh: dict[str, list[list[str]]] = defaultdict(list)
    with open(mesh_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            mesh[row["id"]].append([part.strip() for part in row["major"].split("/")])
    tp = fp = fn = 0
    opacity_misses = []
    for report_id, entries in mesh.items():
        gold = any(entry[0] in OPACITY_HEADINGS for entry in entries)
        predicted = LesionType.OPACITY.value in positive.get(report_id, ())
        tp += gold and predicted
        fp += predicted and not gold
        fn += gold and not predicted
        if gold != predicted:
            opacity_misses.append(("FP" if predicted else "FN", report_id))
    p, r, f = prf(tp, fp, fn)
    print(f"\nopacity vs MeSH ({len(mesh)} reports): n_gold {tp + fn}  tp {tp}  fp {fp}  fn {fn}  "
          f"P {p:.3f}  R {r:.3f}  F1 {f:.3f}")
    for kind, report_id in opacity_misses[: args.errors]:
        print(f"    {kind} {report_id}: {' '.join(texts.get(report_id, '').split())[:300]}")

    compared = exact = overlap = same_side = missing = 0
    location_misses = []
    for report_id, entries in mesh.items():
        for entry in entries:
            entity = LOCATED_HEADINGS.get(entry[0])
            gold_locations = mesh_locations(entry[1:]) if entity else set()
            if not gold_locations:
                continue
            ours = present_locations.get((report_id, entity.value))
            if not ours:
                missing += 1
                location_misses.append((report_id, "/".join(entry), sorted(gold_locations), []))
                continue
            if ours != gold_locations:
                location_misses.append((report_id, "/".join(entry), sorted(gold_locations), sorted(ours)))
            compared += 1
            exact += ours == gold_locations
            overlap += bool(ours & gold_locations)
            same_side += side_of(ours) == side_of(gold_locations)
    if compared:
        print(f"\nlocation agreement (MeSH entries with locations whose type we found present with a location:"
              f" {compared}; without our location: {missing}):\n"
              f"  exact set {exact / compared:.3f}   overlapping {overlap / compared:.3f}   same sides {same_side / compared:.3f}")
    # The same per (report, lesion type): our findings of a type are merged per report, so compare
    # them with the union of that report's MeSH entries of the type.
    gold_union: dict[tuple[str, str], set[str]] = defaultdict(set)
    for report_id, entries in mesh.items():
        for entry in entries:
            entity = LOCATED_HEADINGS.get(entry[0])
            if entity:
                gold_union[(report_id, entity.value)].update(mesh_locations(entry[1:]))
    pairs = [(key, gold) for key, gold in gold_union.items() if gold]
    found = [(present_locations[key], gold) for key, gold in pairs if present_locations.get(key)]
    if found:
        print(f"  per report and type (MeSH entries of a type united: {len(pairs)}; ours located: {len(found)}):"
              f" exact set {sum(o == g for o, g in found) / len(found):.3f}"
              f"   overlapping {sum(bool(o & g) for o, g in found) / len(found):.3f}"
              f"   same sides {sum(side_of(o) == side_of(g) for o, g in found) / len(found):.3f}")
    for report_id, entry, gold_locations, ours in location_misses[: args.location_errors]:
        print(f"    {report_id} {entry}: gold {gold_locations} ours {ours or 'none'}\n"
              f"        {' '.join(texts.get(report_id, '').split())[:300]}")


if __name__ == "__main__":
    main()
