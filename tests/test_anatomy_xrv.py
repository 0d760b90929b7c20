"""cxas and pspnet backends through their real loading path, with random weights in a temporary cache.

The architectures are torchxrayvision's own, built without weights; their random state dicts are saved
under the file name (and in the format) of the published checkpoints, then loaded by the backends.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from anatomy_models.cxas import CxasAnatomy
from anatomy_models.pspnet import PspnetAnatomy
from anatomy_models.random_weights import save_random_cxas, save_random_pspnet
from anatomy_models.weights import CXAS_WEIGHTS, PSPNET_WEIGHTS, MissingWeightsError, pick_precision, resolve_weights
from schemas.vocab import Location

EXPECTED_LOCATIONS = {location.value for location in Location}


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    portrait = rng.integers(0, 256, (300, 240), dtype=np.uint8)
    landscape = rng.random((200, 330), dtype=np.float32) * 4095  # e.g. a 12-bit film as float
    return [portrait, landscape]


def _check_results(results, images, backend: str, extras: set[str]) -> None:
    assert len(results) == len(images)
    for result, image in zip(results, images):
        assert result.backend == backend
        assert set(result.masks) >= EXPECTED_LOCATIONS | extras
        for name, mask in result.masks.items():
            assert mask.shape == image.shape and mask.dtype == bool, name
            assert 0.0 <= result.confidence[name] <= 1.0
            if not mask.any():
                assert result.confidence[name] == 0.0


@pytest.fixture(scope="module")
def cxas_cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cxas")
    return directory, torch.load(save_random_cxas(directory))


@pytest.fixture(scope="module")
def pspnet_cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pspnet")
    # The published file is a DataParallel state dict; torchxrayvision's loader strips 'module.'.
    saved = torch.load(save_random_pspnet(directory))
    return directory, {key.removeprefix("module."): value for key, value in saved.items()}


def test_cxas_loads_saved_weights_and_segments_images_of_any_size(cxas_cache):
    directory, reference = cxas_cache
    backend = CxasAnatomy(weights_dir=str(directory), device="cpu", batch_size=2)
    backend.load()
    key = "head.out.conv.weight"
    assert torch.equal(backend.model.state_dict()[key], reference[key])
    assert not backend.model.training
    images = _images()
    _check_results(backend.segment(images), images, "cxas", {"mediastinum", "diaphragm"})


def test_pspnet_loads_saved_weights_and_derives_zones(pspnet_cache):
    directory, reference = pspnet_cache
    backend = PspnetAnatomy(weights_dir=str(directory), device="cpu")
    backend.load()
    key = "classification.weight"
    assert torch.equal(backend.model.model.state_dict()[key], reference[key])
    images = _images()[1:]  # one non-square float image: a PSPNet forward takes ~25 s on 2 CPU cores
    results = backend.segment(images)
    _check_results(results, images, "pspnet", {"mediastinum", "diaphragm"})
    for result in results:  # zones come from the lung masks: they partition each lung
        for side in ("right", "left"):
            zones = [result.masks[name] for name in result.masks if name.startswith(side) and ("zone" in name or "base" in name)]
            assert (np.sum(zones, axis=0) == result.masks[f"{side} lung"]).all()


@pytest.mark.parametrize(("backend", "spec"), [(CxasAnatomy, CXAS_WEIGHTS), (PspnetAnatomy, PSPNET_WEIGHTS)])
def test_missing_weights_name_the_file_and_the_url(tmp_path, backend, spec):
    with pytest.raises(MissingWeightsError) as raised:
        backend(weights_dir=str(tmp_path))
    message = str(raised.value)
    assert str(tmp_path / spec.filename) in message
    assert spec.url in message and spec.url.startswith("https://github.com/mlmed/torchxrayvision/releases/")
    assert not (tmp_path / spec.filename).exists()  # nothing was downloaded


def test_weights_resolve_in_the_named_folder(tmp_path):
    (tmp_path / CXAS_WEIGHTS.filename).write_bytes(b"")
    assert resolve_weights(CXAS_WEIGHTS, tmp_path) == tmp_path / CXAS_WEIGHTS.filename


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="cxas.*treshold"):
        CxasAnatomy(treshold=0.4)
    with pytest.raises(ValueError, match="pspnet.*thresholds"):
        PspnetAnatomy(thresholds={"spleen": 0.3})


@pytest.mark.parametrize(("requested", "bf16_supported", "expected"), [
    ("auto", True, torch.bfloat16), ("auto", False, torch.float16), ("fp16", True, torch.float16),
    ("bf16", True, torch.bfloat16), ("fp32", True, None),
])
def test_cuda_precision_follows_the_gpu(monkeypatch, requested, bf16_supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    assert pick_precision(requested, torch.device("cuda")) == expected


def test_cpu_runs_fp32_unless_bf16_is_asked_for(monkeypatch):
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu) is None and pick_precision("fp32", cpu) is None
    assert pick_precision("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        pick_precision("fp16", cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(ValueError, match="bfloat16"):
        pick_precision("bf16", torch.device("cuda"))


def test_auto_device_is_cpu_here_and_cuda_when_present(monkeypatch, cxas_cache):
    directory, _ = cxas_cache
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    backend = CxasAnatomy(weights_dir=str(directory))
    assert backend.device == torch.device("cpu") and backend.precision is None
    with pytest.raises(ValueError, match="cxas.*fp16"):
        CxasAnatomy(weights_dir=str(directory), precision="fp16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    backend = CxasAnatomy(weights_dir=str(directory))  # nothing touches the GPU before load()
    assert backend.device == torch.device("cuda") and backend.precision == torch.bfloat16


def test_reduced_precision_forward_gives_fp32_probabilities_at_input_size(cxas_cache):
    directory, _ = cxas_cache
    image = _images()[0]
    reference = CxasAnatomy(weights_dir=str(directory), device="cpu").segment([image])[0]
    backend = CxasAnatomy(weights_dir=str(directory), device="cpu", precision="bf16")
    backend.load()
    seen = []
    backend.model.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    (result,) = backend.segment([image])
    assert seen == [torch.bfloat16]  # the forward ran under autocast
    _check_results([result], [image], "cxas", {"mediastinum"})
    lung, expected = result.masks[Location.LUNG.value], reference.masks[Location.LUNG.value]
    assert (lung == expected).mean() > 0.95  # bf16 rounding moves only pixels at the threshold
