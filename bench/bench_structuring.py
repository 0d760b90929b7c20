"""Throughput of the rule-based structurer: reports/second on one core over the OpenI reports.

The reports are read and the pipeline is built first (not timed); then `structure` runs over all
reports three times and the median is printed, with a per-stage breakdown of one extra run.

Run: .venv/bin/python bench/bench_structuring.py [--reports PATH] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transforms.report_readers import iter_reports  # noqa: E402
from transforms.sections import parse_sections  # noqa: E402
from transforms.sentences import split_sentences  # noqa: E402
from transforms.structuring import RuleStructurer, _collapsed as collapsed, load_vocabulary  # noqa: E402


def openi_tgz() -> Path:
    import torchxrayvision

    return Path(torchxrayvision.__file__).resolve().parent / "data" / "NLMCXR_reports.tgz"


def pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=Path, default=None, help="OpenI .tgz, XML folder, MIMIC root or CSV")
    parser.add_argument("--vocabulary", default="en_cxr")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    pinning = pin_to_one_core()
    reports = list(iter_reports(args.reports or openi_tgz()))
    started = time.perf_counter()
    structurer = RuleStructurer(load_vocabulary(args.vocabulary))
    load_s = time.perf_counter() - started
    structurer.structure(reports[:200])  # warm the tokenizer cache and the vocabulary's strings

    seconds, cpu_seconds = [], []
    for _ in range(args.runs):
        structurer.clear_cache()  # each run starts cold: no sentence is known from the last run
        started, cpu_started = time.perf_counter(), time.process_time()
        findings = structurer.structure(reports)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    median, cpu_median = statistics.median(seconds), statistics.median(cpu_seconds)
    n_findings = sum(len(f) for f in findings)
    print(f"reports: {len(reports)}  findings: {n_findings}  load: {load_s:.2f} s  ({pinning})"
          f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"runs wall (s): {', '.join(f'{s:.3f}' for s in seconds)}; cpu (s): {', '.join(f'{s:.3f}' for s in cpu_seconds)}")
    print(f"median: {median:.3f} s  ->  {len(reports) / median:,.0f} reports/s on one core"
          f"  (best run {len(reports) / min(seconds):,.0f} reports/s; by process CPU time, median "
          f"{len(reports) / cpu_median:,.0f} reports/s, which a busy machine distorts less)")

    # Where the time goes (one cold run, stage by stage).
    structurer.clear_cache()
    timings = {}
    clock = time.process_time  # CPU time: stages are short and the machine may be shared
    started = clock()
    sections = [parse_sections(r.text) for r in reports]
    timings["sections"] = clock() - started
    started = clock()
    sentences = [split_sentences(r.text, s) for r, s in zip(reports, sections)]
    timings["sentences"] = clock() - started
    started = clock()
    kept = [[s for s in sents if structurer.triggers(s.text)] for sents in sentences]
    timings["trigger filter"] = clock() - started
    texts = [collapsed(s.text) for sents in kept for s in sents]
    started = clock()
    facts = iter(structurer.sentence_facts(texts))
    timings["spaCy on distinct sentences"] = clock() - started
    started = clock()
    for report, sents in zip(reports, kept):
        structurer._findings(report, sents, [next(facts) for _ in sents])
    timings["findings"] = clock() - started
    n_sentences = sum(map(len, sentences))
    print(f"sentences: {n_sentences}; with a trigger word: {len(texts)}; distinct of those (through spaCy): "
          f"{len(set(texts))}")
    print("per report (CPU): " + "  ".join(f"{k} {v * 1e6 / len(reports):.0f} us" for k, v in timings.items()))


if __name__ == "__main__":
    main()
