"""Randomly initialised weights of the real architectures, saved under the names the loaders look for.

No weights can be downloaded on our build machines, so tests and benchmarks exercise the real loading and
inference code with these (outputs are meaningless, shapes, dtypes, devices and timings are not).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def save_random_densenet(folder: Path, weights: str = "densenet121-res224-all", as_module: bool = True) -> Path:
    """A DenseNet saved as torchxrayvision publishes `weights` (a whole pickled model, or a state dict)."""
    import torch
    import torchxrayvision as xrv

    torch.manual_seed(0)
    spec = xrv.models.model_urls[weights]
    model = xrv.models.DenseNet(weights=None, num_classes=len(spec["labels"]))
    path = Path(folder) / Path(spec["weights_url"]).name
    torch.save(model if as_module else model.state_dict(), path)
    return path


def save_random_sam(folder: Path, model_type: str = "vit_b", builder: Callable | None = None) -> Path:
    """A SAM state dict of `model_type` (built by segment-anything's registry unless `builder` is given)."""
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    build = builder or sam_model_registry[model_type]
    path = Path(folder) / f"sam_{model_type}_random.pth"
    torch.save(build(checkpoint=None).state_dict(), path)
    return path


def save_random_cxas(folder: Path) -> Path:
    """torchxrayvision's CXAS UNet (ResNet-50) state dict, under the published checkpoint's file name."""
    import torch
    from torchxrayvision.baseline_models import chestx_anatomy

    from anatomy_models.weights import CXAS_WEIGHTS

    torch.manual_seed(0)
    path = Path(folder) / CXAS_WEIGHTS.filename
    torch.save(chestx_anatomy.UNetResNet50(weights=False).state_dict(), path)
    return path


def save_random_pspnet(folder: Path) -> Path:
    """torchxrayvision's 14-structure PSPNet, saved as published: a DataParallel state dict ('module.' keys)."""
    import torch
    from torchxrayvision.baseline_models.chestx_det.ptsemseg.pspnet import pspnet

    from anatomy_models.weights import PSPNET_WEIGHTS

    torch.manual_seed(0)
    path = Path(folder) / PSPNET_WEIGHTS.filename
    torch.save({f"module.{key}": value for key, value in pspnet(14).state_dict().items()}, path)
    return path
