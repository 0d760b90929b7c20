"""Location coverage of the structurer on the OpenI reports, with a vocabulary and with an overlay of it (the output
of `mimic-ils vocab apply`): what a mined vocabulary adds.

- Location coverage: of the present findings (lesion types whose location is not fixed) in sentences that hold a
  location-like word (the mining config's location words and the base vocabulary's one-word side, zone and place
  words), the share that carry at least one CXAS location.
- MeSH: of the (report, lesion type) pairs whose MeSH major headings name locations (openi-gold dev_mesh_major.csv),
  the share where we find that type present with a location, and among those how often our locations equal or
  overlap the MeSH ones (as bench/eval_nlp.py reads them). The label F1 is bench/eval_nlp.py's
  (`--vocabulary OVERLAY`).

Run: .venv/bin/python bench/eval_vocab.py --overlay OVERLAY.yaml [--vocabulary en_cxr] [--reports PATH] [--changes N]
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.eval_nlp import GOLD_DIR, LOCATED_HEADINGS, mesh_locations, openi_tgz  # noqa: E402
from transforms.report_readers import iter_reports  # noqa: E402
from transforms.structuring import RuleStructurer, load_vocabulary  # noqa: E402
from transforms.vocab_mining import load_mining_config  # noqa: E402


def location_words(vocabulary, mining) -> frozenset[str]:
    words = {w.lower() for w in mining.location_words}
    for table in (vocabulary.sides, vocabulary.zones):
        words.update(w.lower() for ws in table.values() for w in ws if " " not in w)
    words.update(p.lower() for p in vocabulary.location_phrases if " " not in p)
    return frozenset(words)


def coverage(all_findings, vocabulary, words: frozenset[str]) -> tuple[int, int, dict]:
    """(located, total) over present findings in location-like sentences; their locations by finding key."""
    located = total = 0
    by_key = {}
    for findings in all_findings:
        for f in findings:
            if f.presence != "present" or f.entity in vocabulary.fixed_locations:
                continue
            if words.isdisjoint(re.findall(r"[a-z]+", f.sentence.lower())):
                continue
            total += 1
            located += bool(f.reported_locations)
            by_key[(f.report_id, f.sent_idx, f.entity)] = (f.reported_locations, f.sentence)
    return located, total, by_key


def mesh_agreement(all_findings, mesh: dict[tuple[str, str], set[str]]) -> tuple[int, int, int, int]:
    """(pairs with MeSH locations, ours located, exact, overlapping)."""
    ours: dict[tuple[str, str], set[str]] = defaultdict(set)
    for findings in all_findings:
        for f in findings:
            if f.presence == "present":
                ours[(f.report_id, f.entity)].update(f.reported_locations)
    found = [(ours[key], gold) for key, gold in mesh.items() if ours.get(key)]
    return len(mesh), len(found), sum(o == g for o, g in found), sum(bool(o & g) for o, g in found)


def read_mesh(path: Path) -> dict[tuple[str, str], set[str]]:
    union: dict[tuple[str, str], set[str]] = defaultdict(set)
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            entry = [part.strip() for part in row["major"].split("/")]
            entity = LOCATED_HEADINGS.get(entry[0])
            if entity:
                union[(row["id"], entity.value)].update(mesh_locations(entry[1:]))
    return {key: gold for key, gold in union.items() if gold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overlay", required=True, help="vocabulary overlay YAML (mimic-ils vocab apply)")
    parser.add_argument("--vocabulary", default="en_cxr", help="the base vocabulary to compare with")
    parser.add_argument("--reports", type=Path, default=None, help="OpenI .tgz or XML folder")
    parser.add_argument("--gold", type=Path, default=GOLD_DIR)
    parser.add_argument("--mining", default="en_cxr", help="mining config whose location words mark sentences")
    parser.add_argument("--changes", type=int, default=0, help="print up to N findings whose locations changed")
    args = parser.parse_args()

    reports_path = args.reports or openi_tgz()
    if not reports_path.exists():
        sys.exit(f"missing {reports_path}: install torchxrayvision or give --reports")
    reports = list(iter_reports(reports_path))
    base = load_vocabulary(args.vocabulary)
    words = location_words(base, load_mining_config(args.mining))
    mesh_csv = args.gold / "dev_mesh_major.csv"
    mesh = read_mesh(mesh_csv) if mesh_csv.is_file() else {}
    results = {}
    for name, vocabulary in (("base", base), ("overlay", load_vocabulary(args.overlay))):
        all_findings = RuleStructurer(vocabulary).structure(reports)
        results[name] = (coverage(all_findings, vocabulary, words),
                         mesh_agreement(all_findings, mesh) if mesh else None)

    print(f"OpenI reports: {len(reports)}; base vocabulary: {args.vocabulary}; overlay: {args.overlay}\n")
    print(f"{'':<9}{'coverage':>10}{'located':>9}{'of':>7}{'MeSH located':>14}{'exact':>8}{'overlap':>9}")
    for name, ((located, total, _), agreement) in results.items():
        line = f"{name:<9}{located / total if total else 0:>10.4f}{located:>9}{total:>7}"
        if agreement:
            n_mesh, found, exact, overlap = agreement
            line += f"{found / n_mesh:>9.4f} ({found}/{n_mesh}){exact / found:>8.3f}{overlap / found:>9.3f}"
        print(line)
    before, after = results["base"][0][2], results["overlay"][0][2]
    changed = [(key, before[key][0], after[key][0], after[key][1]) for key in sorted(after)
               if key in before and before[key][0] != after[key][0]]
    print(f"\nfindings in location-like sentences whose locations changed: {len(changed)}")
    for (report_id, _, entity), old, new, sentence in changed[: args.changes]:
        print(f"  {report_id} {entity}: {list(old) or 'none'} -> {list(new)}   | {' '.join(sentence.split())[:160]}")


if __name__ == "__main__":
    main()
