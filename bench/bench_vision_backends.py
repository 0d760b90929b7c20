"""Lesion prior and refinement per backend (issue #5): images/s of each, on CPU here and on CUDA when present.

    .venv/bin/python bench/bench_vision_backends.py [--images 8] [--sam-images 3] [--device auto]

The learned backends run the real architectures with random weights (none can be downloaded here): timings
are real, outputs are not. Every image gets the same candidate boxes (from the classical prior, one finding of
each lung lesion type), and the SAM row counts image-encoder passes, which must be one per image whatever the
number of boxes. Writes bench/results_vision_backends.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_pipeline import _finding, base_corpus, load  # noqa: E402

from anatomy_models.base import create  # noqa: E402
from anatomy_models.random_weights import save_random_densenet, save_random_sam  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.corpus import index_corpus  # noqa: E402
from schemas.vocab import LesionType  # noqa: E402
from transforms.grounding import select_candidates  # noqa: E402
from transforms.images import decode_for_models  # noqa: E402


def _inputs(root: Path, config, limit: int):
    """Decoded frontal images, their classical anatomy and classical prior, and the kept candidates' boxes."""
    paths = [root / i.path for s in index_corpus(root).studies for i in s.images
             if i.view_position in config.corpus.frontal_views][:limit]
    anatomy_model = create("anatomy", "classical")
    prior_model = create("lesion_prior", "classical")
    anatomy_model.load()
    prior_model.load()
    cases = []
    for path in paths:
        pixels, _ = decode_for_models(path, config.vision.work_size)
        (anatomy,) = anatomy_model.segment([pixels])
        (prior,) = prior_model.predict([pixels], [anatomy])
        kept = [c for t in LesionType if t is not LesionType.CARDIOMEGALY
                for c in select_candidates(_finding(t.value), anatomy, prior, config.grounding).kept]
        cases.append((pixels, anatomy, [c.box for c in kept], [c.component for c in kept]))
    return cases


def _time_per_image(run, cases, after_warmup=lambda: None) -> list[float]:
    run(cases[0])  # warm-up: lazy imports, first-call allocations
    after_warmup()
    seconds = []
    for case in cases:
        started = time.perf_counter()
        run(case)
        seconds.append(time.perf_counter() - started)
    return seconds


def _row(stage: str, backend: str, device: str, seconds: list[float], **extra) -> dict:
    median = statistics.median(seconds)
    return {"stage": stage, "backend": backend, "device": device, "n_images": len(seconds),
            "ms_per_image": round(median * 1000, 1), "images_per_second": round(1 / median, 2), **extra}


def _device(requested: str) -> str:
    from anatomy_models.weights import pick_device

    return str(pick_device(requested))


def measure(root: Path, n_images: int, n_sam_images: int, device: str, weights_dir: Path) -> list[dict]:
    config = load_config("classical").config
    cases = _inputs(root, config, n_images)
    rows = []

    classical_prior = create("lesion_prior", "classical")
    classical_prior.load()
    rows.append(_row("lesion prior", "classical", "cpu",
                     _time_per_image(lambda c: classical_prior.predict([c[0]], [c[1]]), cases)))

    save_random_densenet(weights_dir)
    xrv_prior = create("lesion_prior", "xrv", weights_dir=str(weights_dir), device=device)
    xrv_prior.load()
    rows.append(_row("lesion prior", "xrv", _device(device),
                     _time_per_image(lambda c: xrv_prior.predict([c[0]], [c[1]]), cases)))

    boxes_per_image = statistics.mean(len(c[2]) for c in cases)
    grabcut = create("refiner", "classical", **config.refiner.options)
    grabcut.load()
    rows.append(_row("refine", "classical", "cpu", _time_per_image(lambda c: grabcut.refine(c[0], c[2], c[3]), cases),
                     boxes_per_image=round(boxes_per_image, 1)))

    sam = create("refiner", "sam", checkpoint=str(save_random_sam(weights_dir, "vit_b")), model_type="vit_b",
                 device=device)
    sam.load()
    encoder_passes = []
    original = sam._predictor.set_image

    def counted(*args, **kwargs):
        encoder_passes.append(1)
        return original(*args, **kwargs)

    sam._predictor.set_image = counted
    sam_cases = [c for c in cases if c[2]][:n_sam_images]
    seconds = _time_per_image(lambda c: sam.refine(c[0], c[2], c[3]), sam_cases, after_warmup=encoder_passes.clear)
    rows.append(_row("refine", "sam vit_b", _device(device), seconds,
                     boxes_per_image=round(statistics.mean(len(c[2]) for c in sam_cases), 1),
                     encoder_passes_per_image=round(len(encoder_passes) / len(sam_cases), 2)))
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'stage':<14}{'backend':<12}{'device':<8}{'images':>7}{'ms/image':>10}{'images/s':>10}"
          f"{'boxes/img':>10}{'encodes/img':>12}")
    for r in rows:
        print(f"{r['stage']:<14}{r['backend']:<12}{r['device']:<8}{r['n_images']:>7}{r['ms_per_image']:>10.1f}"
              f"{r['images_per_second']:>10.2f}{r.get('boxes_per_image', ''):>10}{r.get('encoder_passes_per_image', ''):>12}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--sam-images", type=int, default=3, help="SAM vit_b is slow on a CPU: time fewer images")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--base", type=int, default=100, help="studies of the cached synthetic corpus")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "mimic-ils-bench"))
    parser.add_argument("--output", default=str(REPO / "bench" / "results_vision_backends.json"))
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    root = base_corpus(cache, args.base)
    load_at_start = load()
    with tempfile.TemporaryDirectory() as weights_dir:
        rows = measure(root, args.images, args.sam_images, args.device, Path(weights_dir))
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
               "load_at_start": load_at_start, "load_at_end": load(), "rows": rows}
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print_table(rows)
    print(f"\nwritten: {args.output}")


if __name__ == "__main__":
    main()
