"""Anatomy, lesion prior and refinement per backend (issue #5): images/s of each, on CPU here and on CUDA when present.

    .venv/bin/python bench/bench_vision_backends.py [--images 8] [--sam-images 3] [--sam-types vit_b] [--device auto] [--precision auto]

The learned backends run the real architectures with random weights (none can be downloaded here): timings
are real, outputs are not. Anatomy and prior get the images in batches of the pipeline's `vision.batch_size`
(as the Beam DAG gives them), so their ms/image is a batch's time over its size; refinement is per image.
Every image gets the same candidate boxes (from the classical prior, one finding of each lung lesion type),
and the SAM row counts image-encoder passes, which must be one per image whatever the number of boxes.
Writes bench/results_vision_backends.json.
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
from typing import get_args
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import base_corpus, bench_finding, load  # noqa: E402

from anatomy_models.base import load_backend  # noqa: E402
from anatomy_models.weights import Precision  # noqa: E402
from anatomy_models.random_weights import (  # noqa: E402
    save_random_cxas, save_random_densenet, save_random_pspnet, save_random_sam)
from pipeline.config import load_config  # noqa: E402
from pipeline.corpus import index_corpus  # noqa: E402
from schemas.vocab import LesionType  # noqa: E402
from transforms.grounding import select_candidates  # noqa: E402
from transforms.images import decode_for_models  # noqa: E402


def _inputs(root: Path, config, limit: int):
    """Decoded frontal images, their classical anatomy and classical prior, and the kept candidates' boxes."""
    paths = [root / i.path for s in index_corpus(root).studies for i in s.images
             if i.view_position in config.corpus.frontal_views][:limit]
    anatomy_model = load_backend("anatomy", "classical")
    prior_model = load_backend("lesion_prior", "classical")
    cases = []
    for path in paths:
        pixels, _ = decode_for_models(path, config.vision.work_size)
        (anatomy,) = anatomy_model.segment([pixels])
        (prior,) = prior_model.predict([pixels], [anatomy])
        kept = [c for t in LesionType if t is not LesionType.CARDIOMEGALY
                for c in select_candidates(bench_finding(t.value), anatomy, prior, config.grounding).kept]
        cases.append((pixels, anatomy, [c.box for c in kept], [c.component for c in kept]))
    return cases


def _time_per_batch(run, cases, batch_size: int, after_warmup=lambda: None) -> list[float]:
    """Seconds per image of each batch (a batch's time over its size), after one warm-up batch."""
    batches = [cases[i:i + batch_size] for i in range(0, len(cases), batch_size)]
    run(batches[0])  # warm-up: lazy imports, first-call allocations
    after_warmup()
    seconds = []
    for batch in batches:
        started = time.perf_counter()
        run(batch)
        seconds += [(time.perf_counter() - started) / len(batch)] * len(batch)
    return seconds


def _time_per_image(run, cases, after_warmup=lambda: None) -> list[float]:
    return _time_per_batch(lambda batch: run(batch[0]), cases, 1, after_warmup)


def _row(stage: str, backend: str, device: str, seconds: list[float], **extra) -> dict:
    median = statistics.median(seconds)
    return {"stage": stage, "backend": backend, "device": device, "n_images": len(seconds),
            "ms_per_image": round(median * 1000, 1), "images_per_second": round(1 / median, 2), **extra}


def _device(requested: str) -> str:
    from anatomy_models.weights import pick_device

    return str(pick_device(requested))


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def _dtype_name(autocast_dtype) -> str:
    """A learned backend's resolved precision: its autocast dtype, or fp32 when it runs without autocast."""
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(autocast_dtype), "fp32")


def measure(root: Path, n_images: int, n_sam_images: int, sam_types: list[str], device: str, precision: str,
            weights_dir: Path, batch_size: int | None = None) -> list[dict]:
    config = load_config("classical").config
    cases = _inputs(root, config, n_images)
    batch = batch_size or config.vision.batch_size
    rows = []

    save_random_cxas(weights_dir)
    save_random_pspnet(weights_dir)
    learned = {"weights_dir": str(weights_dir), "device": device, "precision": precision}
    for backend, options in (("classical", {}), ("cxas", learned), ("pspnet", learned)):
        anatomy = load_backend("anatomy", backend, **options)
        rows.append(_row("anatomy", backend, "cpu" if backend == "classical" else _device(device),
                         _time_per_batch(lambda b: anatomy.segment([c[0] for c in b]), cases, batch), batch=batch,
                         precision=_dtype_name(getattr(anatomy, "precision", None))))

    classical_prior = load_backend("lesion_prior", "classical")
    rows.append(_row("lesion prior", "classical", "cpu",
                     _time_per_batch(lambda b: classical_prior.predict([c[0] for c in b], [c[1] for c in b]),
                                     cases, batch), batch=batch))

    save_random_densenet(weights_dir)
    xrv_prior = load_backend("lesion_prior", "xrv", weights_dir=str(weights_dir), device=device)
    rows.append(_row("lesion prior", "xrv", _device(device),
                     _time_per_batch(lambda b: xrv_prior.predict([c[0] for c in b], [c[1] for c in b]),
                                     cases, batch), batch=batch))

    boxes_per_image = statistics.mean(len(c[2]) for c in cases)
    grabcut = load_backend("refiner", "classical", **config.refiner.options)
    rows.append(_row("refine", "classical", "cpu", _time_per_image(lambda c: grabcut.refine(c[0], c[2], c[3]), cases),
                     boxes_per_image=round(boxes_per_image, 1)))

    sam_cases = [c for c in cases if c[2]][:n_sam_images]
    if not sam_cases:
        print("refine sam: no image with a kept candidate among those timed (raise --images)")
    for model_type in sam_types if sam_cases else ():
        sam = load_backend("refiner", "sam", checkpoint=str(save_random_sam(weights_dir, model_type)),
                           model_type=model_type, device=device, precision=precision)
        encoded = []  # images through the image encoder
        sam._predictor.model.image_encoder.register_forward_hook(lambda module, args, out: encoded.append(out.shape[0]))
        boxes_per_image = round(statistics.mean(len(c[2]) for c in sam_cases), 1)
        seconds = _time_per_image(lambda c: sam.refine(c[0], c[2], c[3]), sam_cases, after_warmup=encoded.clear)
        rows.append(_row("refine", f"sam {model_type}", _device(device), seconds, precision=_dtype_name(sam.precision),
                         boxes_per_image=boxes_per_image, encoder_passes_per_image=round(sum(encoded) / len(sam_cases), 2)))
        if sam.encode_batch > 1:  # as the DAG gives them: a batch of images, encoded `encode_batch` at a time
            seconds = _time_per_batch(lambda b: sam.refine_images([(c[0], c[2], c[3]) for c in b]), sam_cases,
                                      sam.encode_batch, after_warmup=encoded.clear)
            rows.append(_row("refine", f"sam {model_type}", _device(device), seconds,
                             precision=_dtype_name(sam.precision), batch=sam.encode_batch,
                             boxes_per_image=boxes_per_image,
                             encoder_passes_per_image=round(sum(encoded) / len(sam_cases), 2)))
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'stage':<14}{'backend':<12}{'device':<8}{'dtype':<6}{'batch':>6}{'images':>7}{'ms/image':>10}"
          f"{'images/s':>10}{'boxes/img':>10}{'encodes/img':>12}")
    for r in rows:
        print(f"{r['stage']:<14}{r['backend']:<12}{r['device']:<8}{r.get('precision', 'fp32'):<6}{r.get('batch', 1):>6}"
              f"{r['n_images']:>7}{r['ms_per_image']:>10.1f}{r['images_per_second']:>10.2f}"
              f"{r.get('boxes_per_image', ''):>10}{r.get('encoder_passes_per_image', ''):>12}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8, help="images timed (anatomy and prior: in batches)")
    parser.add_argument("--batch-size", type=int, default=None, help="anatomy/prior batch (default: vision.batch_size)")
    parser.add_argument("--sam-images", type=int, default=3, help="SAM vit_b is slow on a CPU: time fewer images")
    parser.add_argument("--sam-types", nargs="+", default=["vit_b"], choices=["vit_b", "vit_l", "vit_h"],
                        help="SAM image encoders to time (vit_h is the realistic one on a GPU)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--precision", default="auto", choices=get_args(Precision),
                        help="cxas, pspnet and SAM's autocast dtype (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--base", type=int, default=100, help="studies of the cached synthetic corpus")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "mimic-ils-bench"))
    parser.add_argument("--output", default=str(REPO / "bench" / "results_vision_backends.json"))
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    root = base_corpus(cache, args.base)
    load_at_start = load()
    with tempfile.TemporaryDirectory() as weights_dir:
        rows = measure(root, args.images, args.sam_images, args.sam_types, args.device, args.precision,
                       Path(weights_dir), args.batch_size)
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
               "load_at_start": load_at_start, "load_at_end": load(), "gpu": _gpu_name(), "rows": rows}
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print_table(rows)
    print(f"\nwritten: {args.output}")


if __name__ == "__main__":
    main()
