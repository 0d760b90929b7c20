"""Mask refiners: the GrabCut refiner recovers drawn lesions from loose boxes; the SAM refiner runs its
real checkpoint-loading and batched prompting path with randomly initialised weights."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from anatomy_models.classical_refiner import GrabCutRefiner, iou
from anatomy_models.random_weights import save_random_sam
from transforms.records import Box

from conftest import tiny_sam


def ellipse(shape, cy, cx, ry, rx, angle=0.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    return (v / ry) ** 2 + (u / rx) ** 2 <= 1


def lung_scene(shape=(256, 256), seed=0) -> np.ndarray:
    """A dark lung with rib shadows, vessels-like texture and noise (float, 0–1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = 0.28 + 0.06 * (np.sin(yy / 9.0 + xx / 60.0) > 0.5)
    image += cv2.GaussianBlur(rng.normal(0, 0.05, shape).astype(np.float32), (0, 0), 3) + rng.normal(0, 0.02, shape)
    return image.astype(np.float32)


def draw(image: np.ndarray, lesion: np.ndarray, density: float) -> np.ndarray:
    return np.clip((image + density * cv2.GaussianBlur(lesion.astype(np.float32), (0, 0), 1.5)) * 255, 0, 255).astype(np.uint8)


def prior_component(lesion: np.ndarray, shift=(0, 0), blur=8.0, level=0.5) -> np.ndarray:
    """What a smooth prior's component looks like: the lesion blurred, thresholded and a little off."""
    smooth = cv2.GaussianBlur(np.roll(lesion, shift, axis=(0, 1)).astype(np.float32), (0, 0), blur)
    return smooth >= level * smooth.max()


def loose_box(mask: np.ndarray, pad: float, shape) -> Box:
    ys, xs = np.nonzero(mask)
    py, px = int(pad * (ys.max() - ys.min())), int(pad * (xs.max() - xs.min()))
    return Box(max(0, xs.min() - px), max(0, ys.min() - py), min(shape[1], xs.max() + 1 + px), min(shape[0], ys.max() + 1 + py))


LESIONS = {
    "round": dict(cy=120, cx=110, ry=26, rx=26),
    "oval tilted": dict(cy=140, cx=140, ry=18, rx=40, angle=0.5),
    "small": dict(cy=80, cx=170, ry=11, rx=13),
}


@pytest.mark.parametrize("name", list(LESIONS))
def test_grabcut_recovers_a_drawn_lesion_from_a_loose_box(name):
    shape = (256, 256)
    lesion = ellipse(shape, **LESIONS[name])
    image = draw(lung_scene(shape), lesion, density=0.3)
    seed = prior_component(lesion, shift=(4, -3))
    box = loose_box(seed, pad=0.25, shape=shape)
    (refined,) = GrabCutRefiner().refine(image, [box], [seed])
    assert refined.mask.shape == shape and refined.mask.dtype == bool
    assert iou(refined.mask, lesion) > 0.7
    assert iou(refined.mask, lesion) > iou(seed, lesion) - 0.05
    assert 0 < refined.score <= 1


def test_grabcut_refines_several_boxes_independently():
    shape = (256, 256)
    first, second = ellipse(shape, 70, 70, 20, 24), ellipse(shape, 180, 180, 24, 18)
    image = draw(lung_scene(shape, seed=1), first | second, density=0.3)
    seeds = [prior_component(first), prior_component(second)]
    boxes = [loose_box(s, 0.3, shape) for s in seeds]
    refined = GrabCutRefiner().refine(image, boxes, seeds)
    assert len(refined) == 2
    assert iou(refined[0].mask, first) > 0.7 and not (refined[0].mask & second).any()
    assert iou(refined[1].mask, second) > 0.7 and not (refined[1].mask & first).any()


def test_grabcut_on_flat_lung_keeps_little_and_scores_low():
    shape = (200, 200)
    image = draw(lung_scene(shape, seed=2), np.zeros(shape, bool), density=0.0)
    seed = ellipse(shape, 100, 100, 20, 20)
    (refined,) = GrabCutRefiner().refine(image, [Box(70, 70, 131, 131)], [seed])
    assert refined.mask.shape == shape
    assert refined.score < 0.9


def test_grabcut_with_empty_seed_returns_empty_mask():
    image = draw(lung_scene((128, 128)), np.zeros((128, 128), bool), density=0.0)
    (refined,) = GrabCutRefiner().refine(image, [Box(10, 10, 40, 40)], [np.zeros((128, 128), bool)])
    assert not refined.mask.any() and refined.score == 0.0


@pytest.fixture
def tiny_sam_checkpoint(tmp_path, monkeypatch):
    from segment_anything import sam_model_registry

    monkeypatch.setitem(sam_model_registry, "vit_test", tiny_sam)
    return str(save_random_sam(tmp_path, "vit_test", tiny_sam))


def _refine_two_boxes(refiner):
    shape = (180, 150)
    first, second = ellipse(shape, 60, 50, 18, 20), ellipse(shape, 130, 100, 22, 18)
    image = draw(lung_scene(shape), first | second, density=0.3)
    seeds = [prior_component(first), prior_component(second)]
    boxes = [loose_box(s, 0.2, shape) for s in seeds]
    refined = refiner.refine(image, boxes, seeds)
    assert len(refined) == 2
    for result in refined:
        assert result.mask.shape == shape and result.mask.dtype == bool
        assert 0.0 <= result.score <= 1.0
    return refined


def _encoded_images(refiner) -> list[int]:
    """The batch size of every pass through the refiner's image encoder, from now on."""
    refiner.load()
    passes = []
    refiner._predictor.model.image_encoder.register_forward_hook(lambda module, args, out: passes.append(out.shape[0]))
    return passes


def test_sam_refiner_loads_a_saved_checkpoint_and_prompts_every_box(tiny_sam_checkpoint):
    from anatomy_models.sam_refiner import SamRefiner

    refiner = SamRefiner(checkpoint=tiny_sam_checkpoint, model_type="vit_test", device="cpu")
    passes = _encoded_images(refiner)
    _refine_two_boxes(refiner)
    assert passes == [1]  # one embedding for both prompts
    assert refiner.refine(np.zeros((64, 64), np.uint8), [], []) == []
    assert passes == [1]


def test_sam_encodes_several_images_in_one_pass_and_decodes_each_against_its_own(tiny_sam_checkpoint):
    from anatomy_models.sam_refiner import SamRefiner

    shapes = [(180, 150), (150, 200), (160, 160)]
    requests = []
    for index, shape in enumerate(shapes):
        lesion = ellipse(shape, shape[0] // 2, shape[1] // 2, 20, 18)
        image = draw(lung_scene(shape, seed=index), lesion, density=0.3)
        seed = prior_component(lesion)
        boxes, seeds = ([loose_box(seed, 0.2, shape)], [seed]) if index != 1 else ([], [])
        requests.append((image, boxes, seeds))
    one_by_one = SamRefiner(checkpoint=tiny_sam_checkpoint, model_type="vit_test", device="cpu")
    batched = SamRefiner(checkpoint=tiny_sam_checkpoint, model_type="vit_test", device="cpu", encode_batch=4)
    assert one_by_one.encode_batch == 1  # the CPU default
    single_passes, batched_passes = _encoded_images(one_by_one), _encoded_images(batched)
    expected = one_by_one.refine_images(requests)
    results = batched.refine_images(requests)
    assert single_passes == [1, 1] and batched_passes == [2]  # the image without boxes is not encoded
    assert [len(r) for r in results] == [1, 0, 1]
    for got, want, (image, _, _) in zip(results, expected, requests):
        for a, b in zip(got, want):
            assert a.mask.shape == image.shape and iou(a.mask, b.mask) > 0.99 and abs(a.score - b.score) < 1e-3
    with pytest.raises(ValueError, match="encode_batch"):
        SamRefiner(checkpoint=tiny_sam_checkpoint, model_type="vit_test", device="cpu", encode_batch=0)


def _out_of_memory_above(refiner, most: int) -> list[int]:
    """The refiner's image encoder fails as CUDA does when a pass holds more than `most` images; returns the batch
    size of every pass that ran."""
    import torch

    def check(module, args):
        if args[0].shape[0] > most:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {args[0].shape[0]} images (simulated)")

    refiner.load()
    refiner._predictor.model.image_encoder.register_forward_pre_hook(check)
    return _encoded_images(refiner)


def test_sam_halves_its_encoder_batch_when_the_gpu_runs_out_of_memory(tiny_sam_checkpoint, caplog):
    import torch

    from anatomy_models.sam_refiner import SamRefiner

    requests = []
    for index in range(5):
        shape = (150 + 10 * index, 160)
        lesion = ellipse(shape, shape[0] // 2, 80, 20, 18)
        seed = prior_component(lesion)
        requests.append((draw(lung_scene(shape, seed=index), lesion, density=0.3), [loose_box(seed, 0.2, shape)], [seed]))
    expected = SamRefiner(checkpoint=tiny_sam_checkpoint, model_type="vit_test", device="cpu").refine_images(requests)
    refiner = SamRefiner(checkpoint=tiny_sam_checkpoint, model_type="vit_test", device="cpu", encode_batch=4)
    passes = _out_of_memory_above(refiner, 2)
    with caplog.at_level("WARNING", logger="anatomy_models.sam_refiner"):
        results = refiner.refine_images(requests)
    assert passes == [2, 2, 1] and refiner.encode_batch == 2  # halved once, and it stays so
    assert "out of memory encoding 4 images at once; now 2 at a time" in caplog.text
    for got, want in zip(results, expected):
        assert len(got) == 1 and iou(got[0].mask, want[0].mask) > 0.99 and abs(got[0].score - want[0].score) < 1e-3

    single = SamRefiner(checkpoint=tiny_sam_checkpoint, model_type="vit_test", device="cpu")
    _out_of_memory_above(single, 0)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # one image that does not fit: nothing left to halve
        single.refine_images(requests[:1])


@pytest.mark.parametrize("shape", [(180, 150), (150, 333), (512, 512)])
def test_sam_encoder_input_matches_sams_own_transform(tiny_sam_checkpoint, shape):
    import torch

    from anatomy_models.sam_refiner import SamRefiner

    refiner = SamRefiner(checkpoint=tiny_sam_checkpoint, model_type="vit_test", device="cpu")
    refiner.load()
    gray = draw(lung_scene(shape), ellipse(shape, shape[0] // 2, shape[1] // 2, 30, 30), density=0.3)
    ours = refiner.encoder_input(gray, torch.device("cpu"))
    theirs = refiner._predictor.transform.apply_image(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB))
    assert ours.shape == (1, 3, *theirs.shape[:2]) and max(theirs.shape) == 1024
    difference = np.abs(ours[0].permute(1, 2, 0).numpy() - theirs)
    assert difference.max() <= 2 and difference.mean() < 0.5


def test_sam_encoder_under_bf16_autocast_gives_fp32_decoding(tiny_sam_checkpoint):
    import torch

    from anatomy_models.sam_refiner import SamRefiner

    fp32 = SamRefiner(checkpoint=tiny_sam_checkpoint, model_type="vit_test", device="cpu")
    bf16 = SamRefiner(checkpoint=tiny_sam_checkpoint, model_type="vit_test", device="cpu", precision="bf16")
    assert fp32.precision is None and bf16.precision == torch.bfloat16
    reference, reduced = _refine_two_boxes(fp32), _refine_two_boxes(bf16)
    assert bf16._predictor.features.dtype == torch.float32
    for a, b in zip(reference, reduced):
        assert iou(a.mask, b.mask) > 0.9 and abs(a.score - b.score) < 0.05


def test_sam_precision_is_checked_at_construction(tiny_sam_checkpoint):
    from anatomy_models.sam_refiner import SamRefiner

    with pytest.raises(ValueError, match="refiner 'sam'.*'fp16' needs a CUDA"):
        SamRefiner(checkpoint=tiny_sam_checkpoint, model_type="vit_test", device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        SamRefiner(checkpoint=tiny_sam_checkpoint, model_type="vit_test", device="cpu", precision="fp8")


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="full-size vit_b takes about a minute on a CPU")
def test_sam_refiner_full_vit_b_on_gpu(tmp_path):
    from anatomy_models.sam_refiner import SamRefiner

    checkpoint = save_random_sam(tmp_path, "vit_b")
    _refine_two_boxes(SamRefiner(checkpoint=str(checkpoint), model_type="vit_b"))


def test_missing_sam_checkpoint_names_the_file_and_the_download(tmp_path):
    from anatomy_models.sam_refiner import SamRefiner
    from anatomy_models.weights import MissingWeightsError

    missing = tmp_path / "sam_vit_l.pth"
    with pytest.raises(MissingWeightsError) as error:
        SamRefiner(checkpoint=str(missing), model_type="vit_l")
    assert str(missing) in str(error.value)
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth" in str(error.value)
    with pytest.raises(MissingWeightsError, match="sam_vit_b_01ec64.pth"):
        SamRefiner(checkpoint=None, model_type="vit_b")
    with pytest.raises(ValueError, match="unknown SAM model_type"):
        SamRefiner(checkpoint=str(missing), model_type="vit_xl")
