"""Pipeline throughput on a synthetic corpus: per-stage ms/image (in process) and the whole Beam run.

    .venv/bin/python bench/bench_pipeline.py [--studies 40] [--config classical]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from anatomy_models.base import create
from pipeline.config import load_config
from pipeline.corpus import index_mimic_cxr_jpg
from pipeline.run import run_pipeline
from pipeline.synth import synthesize_corpus
from transforms.grounding import ground_findings
from transforms.images import decode_for_models
from transforms.records import Finding


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:8.1f} ms/image (median of {len(samples)})"


def _finding(target: str) -> Finding:
    """A fixed workload for the grounding timing: one unlocated, present, definite finding per lesion type."""
    return Finding(f"bench-{target}", "bench", "bench", "FINDINGS", 0, target, target, "present", "definite", (),
                   target, 0, len(target), "bench")


def stage_timings(root: Path, config, limit: int = 20) -> None:
    studies = index_mimic_cxr_jpg(root)
    paths = [root / i.path for s in studies for i in s.images if i.view_position in config.corpus.frontal_views][:limit]
    anatomy = create("anatomy", config.anatomy.backend, **config.anatomy.options)
    prior = create("lesion_prior", config.lesion_prior.backend, **config.lesion_prior.options)
    refiner = create("refiner", config.refiner.backend, **config.refiner.options)
    for model in (anatomy, prior, refiner):
        model.load()
    times = {"decode": [], "anatomy": [], "lesion prior": [], "ground+refine": []}
    for path in paths:
        t0 = time.perf_counter()
        pixels, _ = decode_for_models(path, config.vision.work_size)
        t1 = time.perf_counter()
        (anat,) = anatomy.segment([pixels])
        t2 = time.perf_counter()
        (pri,) = prior.predict([pixels], [anat])
        t3 = time.perf_counter()
        findings = [_finding(t) for t in pri.maps]
        ground_findings(findings, anat, pri, pixels, refiner, config.grounding)
        t4 = time.perf_counter()
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key].append(value)
    print(f"per-stage, {config.name} backends, work size {config.vision.work_size} px, one core:")
    for key, samples in times.items():
        print(f"  {key:<14} {_ms(samples)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--config", default="classical")
    args = parser.parse_args()
    loaded = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        root, out = Path(tmp) / "corpus", Path(tmp) / "run"
        t0 = time.perf_counter()
        counts = synthesize_corpus(root, args.studies, seed=0)
        print(f"synth: {args.studies} studies, {counts.get('images')} images in {time.perf_counter() - t0:.1f} s")
        stage_timings(root, loaded.config)
        summary = run_pipeline(root, out, loaded, overwrite=True)
        frontal = counts.get("frontal") or 0
        print(f"pipeline (DirectRunner, in process): {summary.n_studies} studies in {summary.seconds:.1f} s = "
              f"{summary.n_studies / summary.seconds:.2f} studies/s, {frontal / summary.seconds:.2f} frontal images/s")
        print("rows: " + ", ".join(f"{k}={v}" for k, v in summary.counts.items()))


if __name__ == "__main__":
    main()
