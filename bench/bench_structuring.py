"""Throughput of the rule-based structurer: reports/second on one core over the OpenI reports.

The reports are read and the pipeline is built first (not timed); then `structure` runs over all
reports `--runs` times, each run cold (the sentence and section caches emptied), and the median and
best are printed: first with the process heap as it is, then with the startup heap frozen (gc.freeze,
as a long-running worker does after loading; without it the cyclic collector's full passes rescan the
few hundred thousand objects that importing spaCy, which imports torch, leaves). A per-stage breakdown
follows. The process is pinned to the least busy core.

Run: .venv/bin/python bench/bench_structuring.py [--reports PATH] [--runs 3]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.eval_nlp import openi_tgz  # noqa: E402
from transforms.report_readers import iter_reports  # noqa: E402
from transforms.sections import parse_sections, sentence_sections  # noqa: E402
from transforms.sentences import sentence_spans  # noqa: E402
from transforms.structuring import RuleStructurer, load_vocabulary  # noqa: E402


def _busy_ticks() -> dict[int, tuple[int, int]]:
    """{core: (busy, total) jiffies} from /proc/stat (Linux); {} elsewhere."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    ticks = {}
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            numbers = list(map(int, values))
            ticks[int(name[3:])] = (sum(numbers) - numbers[3] - numbers[4], sum(numbers))  # minus idle, iowait
    return ticks


def pin_to_one_core() -> str:
    """Pin the process to the core that was least busy over the last half second (the machine may be
    shared: the other jobs' core is the worse one to measure on)."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    allowed = sorted(os.sched_getaffinity(0))
    before = _busy_ticks()
    time.sleep(0.5)
    after = _busy_ticks()

    def busy_share(core: int) -> float:
        if core not in before or core not in after:
            return 0.0
        total = after[core][1] - before[core][1]
        return (after[core][0] - before[core][0]) / total if total else 0.0

    core = min(allowed, key=busy_share)
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core}, the least busy ({busy_share(core):.0%} busy before the runs)"


def timed_runs(structurer: RuleStructurer, reports: list, runs: int) -> tuple[list[float], list[float], list[float]]:
    """Wall and CPU seconds of `runs` cold runs over all reports, and the cyclic GC's pauses in each."""
    pause = [0.0, 0.0]  # pause start, seconds paused

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            pause[0] = time.perf_counter()
        else:
            pause[1] += time.perf_counter() - pause[0]

    gc.callbacks.append(on_gc)
    seconds, cpu_seconds, pauses = [], [], []
    for _ in range(runs):
        structurer.clear_cache()  # each run starts cold: no sentence is known from the last run
        pause[1] = 0.0
        started, cpu_started = time.perf_counter(), time.process_time()
        structurer.structure(reports)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
        pauses.append(pause[1])
    gc.callbacks.remove(on_gc)
    return seconds, cpu_seconds, pauses


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

    print(f"reports: {len(reports)}  load: {load_s:.2f} s  ({pinning})"
          f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for heap in ("as is", "frozen"):
        if heap == "frozen":
            # What a long-running worker does once its models are loaded: the startup heap (the pipeline,
            # and torch and pandas, which spaCy's thinc and the readers import) is moved out of the cyclic
            # collector's reach, so that its full passes stop rescanning a few hundred thousand objects.
            gc.collect()
            gc.freeze()
        seconds, cpu_seconds, pauses = timed_runs(structurer, reports, args.runs)
        median = statistics.median(seconds)
        print(f"startup heap {heap}: runs wall (s) {', '.join(f'{s:.3f}' for s in seconds)}; cpu (s) "
              f"{', '.join(f'{s:.3f}' for s in cpu_seconds)}; cyclic GC pauses (s) "
              f"{', '.join(f'{s:.3f}' for s in pauses)}")
        print(f"  median {median:.3f} s  ->  {len(reports) / median:,.0f} reports/s on one core  (best run "
              f"{len(reports) / min(seconds):,.0f} reports/s; median by process CPU time "
              f"{len(reports) / statistics.median(cpu_seconds):,.0f} reports/s, which a busy machine distorts less)")

    # Where the time goes: each stage on its own, cold caches, best of `--runs` (CPU time: stages are
    # short and the machine may be shared).
    sections = [sentence_sections(parse_sections(r.text)) for r in reports]
    texts = [[r.text[s.start : s.end] for s in secs] for r, secs in zip(reports, sections)]
    distinct = list(dict.fromkeys(t for ts in texts for t in ts))
    spans = [sentence_spans(t, 0, len(t)) for t in distinct]
    sentences = [t[s:e] for t, ss in zip(distinct, spans) for s, e in ss]
    distinct_sentences = list(dict.fromkeys(sentences))
    kept = [s for s in distinct_sentences if structurer.triggers(s)]

    def cold_sentence_facts(texts):
        structurer.clear_cache()
        return structurer.sentence_facts(texts)

    def cold_section_facts():
        structurer.clear_cache()
        return structurer.section_facts(distinct)

    known = cold_section_facts()
    stages = {
        "sections": lambda: [sentence_sections(parse_sections(r.text)) for r in reports],
        "sentence split (distinct sections)": lambda: [sentence_spans(t, 0, len(t)) for t in distinct],
        "trigger filter (distinct sentences)": lambda: [structurer.triggers(s) for s in distinct_sentences],
        "spaCy and facts (distinct triggered sentences)": lambda: cold_sentence_facts(kept),
        "section facts (all of the above but sections)": cold_section_facts,
        "findings": lambda: [structurer._findings(r, [(s, known[t]) for s, t in zip(secs, ts)])
                             for r, secs, ts in zip(reports, sections, texts)],
    }
    print(f"section texts: {sum(map(len, texts))}, distinct: {len(distinct)}; their sentences: {len(sentences)}, "
          f"distinct: {len(distinct_sentences)}, with a trigger word (through spaCy): {len(kept)}")
    print("per report (CPU, best of runs):")
    for name, stage in stages.items():
        times = []
        for _ in range(args.runs):
            started = time.process_time()
            stage()
            times.append(time.process_time() - started)
        print(f"  {name:<48}{min(times) * 1e6 / len(reports):>7.1f} us")


if __name__ == "__main__":
    main()
