"""SAM's image-encoder memory and speed per batch size on a GPU, and its fallback when the GPU runs out of memory.

    .venv/bin/python bench/bench_sam_memory.py [--types vit_b vit_h] [--batches 1 2 4 8] [--images 16]

Sizing a GPU worker: each Beam worker process holds its own SAM, and `refiner.options.encode_batch` images go
through the encoder at once, so the peak memory of that batch times the processes per GPU must fit the card.
Random weights of the real architectures (none can be downloaded here); random 512×420 images, one box each; bf16
autocast (`precision: auto`); each batch size timed after a warm-up. Last, with the process capped between the
memory of a batch of 2 and a batch of 8 of the first type, a refiner set to 8 must halve its batch on the real
CUDA out-of-memory and give the masks one image at a time gives. Needs CUDA; on a machine without it, says so.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anatomy_models.random_weights import save_random_sam  # noqa: E402
from anatomy_models.sam_refiner import SamRefiner  # noqa: E402
from transforms.records import Box  # noqa: E402

SHAPE = (512, 420)  # the pipeline's working size for a portrait film


def requests(n_images: int) -> list:
    rng = np.random.default_rng(0)
    seed = np.zeros(SHAPE, bool)
    seed[120:200, 120:180] = True
    return [(rng.integers(0, 255, SHAPE).astype(np.uint8), [Box(100, 100, 200, 220)], [seed]) for _ in range(n_images)]


def peak_per_batch(checkpoint: Path, model_type: str, batch: int, images: list) -> tuple[float, int, int]:
    """(ms per image, peak bytes allocated, peak bytes reserved) of refining `images`, `batch` at a time."""
    import torch

    refiner = SamRefiner(checkpoint=str(checkpoint), model_type=model_type, encode_batch=batch)
    refiner.refine_images(images[:batch])  # warm-up: cuDNN and the allocator's first blocks
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    refiner.refine_images(images)
    torch.cuda.synchronize()
    ms = (time.perf_counter() - started) * 1000 / len(images)
    peaks = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    del refiner
    torch.cuda.empty_cache()
    return ms, *peaks


def fallback_under_cap(checkpoint: Path, model_type: str, cap: float, images: list) -> None:
    import torch

    reference = SamRefiner(checkpoint=str(checkpoint), model_type=model_type, encode_batch=1).refine_images(images)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(cap / total)
    refiner = SamRefiner(checkpoint=str(checkpoint), model_type=model_type, encode_batch=8)
    refiner.load()
    passes = []
    refiner._predictor.model.image_encoder.register_forward_hook(lambda module, args, out: passes.append(out.shape[0]))
    results = refiner.refine_images(images)
    ious = [float((a[0].mask & b[0].mask).sum() / max((a[0].mask | b[0].mask).sum(), 1)) for a, b in zip(results, reference)]
    print(f"\ncapped at {cap / 2**30:.2f} GiB ({cap / total:.3f} of the card), {model_type} asked for 8 images a pass:")
    print(f"  encoder passes {passes}, encode_batch now {refiner.encode_batch}, "
          f"mask IoU with one image at a time: min {min(ious):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--types", nargs="+", default=["vit_b", "vit_h"], choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_sam_memory: no CUDA device here; nothing measured")
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    images = requests(args.images)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {args.images} images of {SHAPE[0]}×{SHAPE[1]}")
    print(f"{'model':<7}{'batch':>6}{'ms/image':>10}{'allocated GiB':>15}{'reserved GiB':>14}")
    peaks = {}
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = {t: save_random_sam(Path(folder), t) for t in args.types}
        for model_type in args.types:
            for batch in args.batches:
                ms, allocated, reserved = peak_per_batch(checkpoints[model_type], model_type, batch, images)
                peaks[(model_type, batch)] = allocated
                print(f"{model_type:<7}{batch:>6}{ms:>10.1f}{allocated / 2**30:>15.2f}{reserved / 2**30:>14.2f}")
        first = args.types[0]
        if (first, 2) in peaks and (first, 8) in peaks:
            fallback_under_cap(checkpoints[first], first, (peaks[(first, 2)] + peaks[(first, 8)]) / 2, images[:8])


if __name__ == "__main__":
    main()
