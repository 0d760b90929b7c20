"""Pipeline benchmark (issue item 6): prints a table and writes bench/results.json.

    .venv/bin/python bench/bench_pipeline.py [--base 100] [--sizes 100 300] [--workers 1 2] [--cache DIR]

- reports/s of the structurer, and ms/image of each vision stage (classical backends, in process, one core),
  each also as a multiple of the JPEG-decode-only baseline (the floor every image pays);
- end-to-end studies/s on the DirectRunner, in process (1 worker) and multi_processing (2 workers), for each
  corpus size, with the peak RSS of every process; each run is a fresh subprocess, so RSS is its own.

A synthetic base corpus of `--base` studies is drawn once (about 1 s/study, cached in `--cache`); larger sizes
tile it with fresh ids (images hard-linked), so every size has the same per-study content and the growth from
one size to the next shows the pipeline's own scaling. The machine may be shared: the load average is recorded
beside every timing.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import base_corpus, bench_finding, load  # noqa: E402

from anatomy_models.base import load_configured  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.corpus import METADATA_FILE, SPLIT_FILE, image_path, index_corpus, report_path  # noqa: E402
from transforms.grounding import ground_findings  # noqa: E402
from transforms.image_results import encode_groundings  # noqa: E402
from transforms.images import decode_for_models  # noqa: E402
from transforms.structuring import ReportText, RuleStructurer, load_vocabulary  # noqa: E402

NO_GATE = ["quality.validate_after_run=false"]


def tile_corpus(base: Path, dest: Path, n_studies: int) -> Path:
    """`n_studies` studies made of copies of the base corpus's studies under fresh ids (images hard-linked)."""
    if (dest / METADATA_FILE).is_file():
        return dest
    meta = pd.read_csv(base / METADATA_FILE, dtype=str, keep_default_na=False)
    split = pd.read_csv(base / SPLIT_FILE, dtype=str, keep_default_na=False)
    studies = sorted(meta["study_id"].unique())
    subjects = dict(zip(meta["study_id"], meta["subject_id"]))
    metas, splits, seen = [], [], set()
    for i in range(n_studies):
        copy, index = divmod(i, len(studies))
        study = studies[index]
        new_study, new_subject = str(int(study) + copy * 1_000_003), str(int(subjects[study]) + copy * 1_000_033)
        assert new_study not in seen, "tiled study ids collide"
        seen.add(new_study)
        rows = meta[meta["study_id"] == study].copy()
        rows["study_id"], rows["subject_id"] = new_study, new_subject
        rows["dicom_id"] = rows["dicom_id"] + (f"-{copy}" if copy else "")
        for old, new in zip(meta.loc[meta["study_id"] == study, "dicom_id"], rows["dicom_id"]):
            target = dest / image_path(new_subject, new_study, new)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(base / image_path(subjects[study], study, old), target)
        shutil.copy(base / report_path(subjects[study], study), dest / report_path(new_subject, new_study))
        metas.append(rows)
        part = split[split["study_id"] == study].copy()
        part["study_id"], part["subject_id"] = new_study, new_subject
        part["dicom_id"] = part["dicom_id"] + (f"-{copy}" if copy else "")
        splits.append(part)
    for frame, name in ((pd.concat(metas), METADATA_FILE), (pd.concat(splits), SPLIT_FILE)):
        with gzip.open(dest / name, "wt", newline="") as handle:
            frame.to_csv(handle, index=False)
    return dest


def stage_timings(root: Path, config, limit: int = 40) -> dict:
    """Reports/s of the structurer; ms/image of decode (the floor), anatomy, lesion prior, ground+refine, and
    encode (the grounded masks and their location parts to source resolution, as RLE)."""
    studies = index_corpus(root).studies
    texts = [ReportText(s.report_id, s.study_id, (root / s.report_path).read_text()) for s in studies if s.report_path]
    structurer = RuleStructurer(load_vocabulary(config.structuring.vocabulary))
    structurer.structure(texts[:5])
    started = time.perf_counter()
    structurer.structure(texts)
    reports_per_second = len(texts) / (time.perf_counter() - started)
    paths = [root / i.path for s in studies for i in s.images if i.view_position in config.corpus.frontal_views][:limit]
    models = {kind: load_configured(config, kind) for kind in ("anatomy", "lesion_prior", "refiner")}
    unions = [[loc.value for loc in u] for u in config.pairs.location_unions]
    times: dict[str, list[float]] = {"decode (floor)": [], "anatomy": [], "lesion prior": [], "ground+refine": [],
                                     "encode": []}
    for path in paths:
        t0 = time.perf_counter()
        pixels, (height, width) = decode_for_models(path, config.vision.work_size)
        t1 = time.perf_counter()
        (anatomy,) = models["anatomy"].segment([pixels])
        t2 = time.perf_counter()
        (prior,) = models["lesion_prior"].predict([pixels], [anatomy])
        t3 = time.perf_counter()
        groundings = ground_findings([bench_finding(t) for t in prior.maps], anatomy, prior, pixels, models["refiner"],
                                     config.grounding)
        t4 = time.perf_counter()
        encode_groundings(groundings, anatomy, height, width, unions)
        t5 = time.perf_counter()
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            times[key].append(value)
    floor = statistics.median(times["decode (floor)"])
    stages = {key: {"backend": "" if key.startswith(("decode", "encode")) else
                    getattr(config, {"anatomy": "anatomy", "lesion prior": "lesion_prior"}.get(key, "refiner")).backend,
                    "ms_per_image": round(statistics.median(v) * 1000, 2),
                    "images_per_second": round(1 / statistics.median(v), 2),
                    "x_decode": round(statistics.median(v) / floor, 1)}
              for key, v in times.items()}
    return {"reports_per_second": round(reports_per_second, 1), "n_reports": len(texts), "n_images": len(paths),
            "work_size": config.vision.work_size, "stages": stages}


def e2e_child(root: str, out: str, workers: int) -> None:
    """One end-to-end run in this (fresh) process; prints a JSON line with its timing and peak RSS."""
    from pipeline.run import run_pipeline

    args = [] if workers == 1 else ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    summary = run_pipeline(Path(root), Path(out), load_config("classical", NO_GATE), args, overwrite=True)
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    print(json.dumps({"studies": summary.n_studies, "seconds": round(summary.seconds, 2),
                      "peak_rss_mb_launcher": round(self_mb), "peak_rss_mb_worker": round(children_mb) if workers > 1
                      else round(self_mb), "stage_ms": manifest["timings"]["stages"],
                      "problems": len(summary.problems)}))


def end_to_end(root: Path, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        before = load()
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--e2e", str(root), str(Path(tmp) / "run"), str(workers)],
                              capture_output=True, text=True, check=True, cwd=REPO)
        wall = time.perf_counter() - started
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(workers=workers, wall_seconds=round(wall, 1), load_before=before, load_after=load(),
                  studies_per_second=round(result["studies"] / result["seconds"], 3))
    return result


def print_table(results: dict) -> None:
    s = results["stages"]
    print(f"\nstructuring: {s['reports_per_second']:.0f} reports/s ({s['n_reports']} reports, one core)")
    print(f"vision stages, classical backends, work size {s['work_size']} px, one core, median of {s['n_images']} images:")
    print(f"  {'stage':<16}{'backend':<11}{'ms/image':>10}{'images/s':>10}{'x decode':>10}")
    for name, row in s["stages"].items():
        print(f"  {name:<16}{row['backend']:<11}{row['ms_per_image']:>10.1f}{row['images_per_second']:>10.2f}"
              f"{row['x_decode']:>10.1f}")
    print("end to end, DirectRunner (Beam), classical backends:")
    print(f"  {'studies':>8}{'workers':>8}{'seconds':>9}{'studies/s':>11}{'peak RSS/worker':>17}  load avg (1, 5, 15 min)")
    for row in results["end_to_end"]:
        print(f"  {row['studies']:>8}{row['workers']:>8}{row['seconds']:>9.1f}{row['studies_per_second']:>11.2f}"
              f"{row['peak_rss_mb_worker']:>14} MB  {row['load_before']} -> {row['load_after']}")
    for line in results["derived"]:
        print("  " + line)


def derived(rows: list[dict]) -> list[str]:
    lines = []
    by = {(r["studies"], r["workers"]): r for r in rows}
    sizes = sorted({r["studies"] for r in rows})
    for workers in sorted({r["workers"] for r in rows}):
        have = [n for n in sizes if (n, workers) in by]
        if len(have) >= 2:
            small, large = by[(have[0], workers)], by[(have[-1], workers)]
            lines.append(f"{workers} worker(s): {have[0]} -> {have[-1]} studies = x{have[-1] / have[0]:.1f} studies, "
                         f"x{large['seconds'] / small['seconds']:.2f} time (linear = same factor)")
    for n in sizes:
        if (n, 1) in by and (n, 2) in by:
            lines.append(f"{n} studies: 2 workers / 1 worker = x{by[(n, 1)]['seconds'] / by[(n, 2)]['seconds']:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=int, default=100, help="studies drawn by the synthesiser (then tiled)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "mimic-ils-bench"))
    parser.add_argument("--output", default=str(REPO / "bench" / "results.json"))
    parser.add_argument("--e2e", nargs=3, metavar=("ROOT", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.e2e:
        e2e_child(args.e2e[0], args.e2e[1], int(args.e2e[2]))
        return
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    base = base_corpus(cache, args.base)
    config = load_config("classical").config
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
               "cpus": os.cpu_count(), "load_at_start": load(), "base_studies": args.base,
               "stages": stage_timings(base, config)}
    rows = []
    for n in args.sizes:
        root = base if n == args.base else tile_corpus(base, cache / f"tiled-{args.base}-to-{n}", n)
        for workers in args.workers:
            rows.append(end_to_end(root, workers))
            print(f"  measured: {rows[-1]['studies']} studies, {workers} worker(s): {rows[-1]['seconds']} s", flush=True)
    results["end_to_end"] = rows
    results["derived"] = derived(rows)
    results["load_at_end"] = load()
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwritten: {args.output}")


if __name__ == "__main__":
    main()
