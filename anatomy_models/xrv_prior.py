"""Lesion prior from a torchxrayvision DenseNet classifier: class activation maps and class probabilities.

The classifier ends in global average pooling and one linear layer, so its logit for a class is the mean
over the 7×7 feature grid of `W_c · relu(A(i, j)) + b_c`. Read per location (the class activation map,
which Grad-CAM reduces to for this head), that is a logit for "the image, if it all looked like here".
It is upsampled to the image, put through the same sigmoid and operating-point normalisation as the
image-level output (0.5 = the model's operating threshold), and restricted to where the lesion can be:
the lungs (a little beyond, for pleural fluid) or the heart.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anatomy_models.base import LesionPriorBackend, register
from anatomy_models.weights import WeightsSpec, pick_device, resolve_weights
from schemas.vocab import LesionType, Location
from transforms.masks import dilate
from transforms.records import AnatomyResult, LesionPrior

# Our lesion types as torchxrayvision names them.
XRV_PATHOLOGY = {
    LesionType.CARDIOMEGALY: "Cardiomegaly",
    LesionType.PNEUMONIA: "Pneumonia",
    LesionType.ATELECTASIS: "Atelectasis",
    LesionType.OPACITY: "Lung Opacity",
    LesionType.CONSOLIDATION: "Consolidation",
    LesionType.EDEMA: "Edema",
    LesionType.EFFUSION: "Effusion",
}


def weights_file(weights: str, weights_dir: str | Path | None) -> Path:
    """Where torchxrayvision keeps `weights` (its own file name, in `weights_dir` or its cache); never downloads."""
    import torchxrayvision as xrv

    if weights not in xrv.models.model_urls or not weights.startswith("densenet"):
        known = sorted(k for k in xrv.models.model_urls if k.startswith("densenet"))
        raise ValueError(f"unknown torchxrayvision DenseNet weights '{weights}' (known: {', '.join(known)})")
    spec = WeightsSpec(f"torchxrayvision DenseNet '{weights}'", xrv.models.model_urls[weights]["weights_url"])
    return resolve_weights(spec, weights_dir)


def padded_model_input(image: np.ndarray, resolution: int) -> tuple[np.ndarray, int]:
    """torchxrayvision's normalisation ([-1024, 1024]) and resizing, after padding to a square.

    Padding (with black) instead of torchxrayvision's centre crop keeps the whole image, so the map covers
    every pixel; returns (1×R×R float32, the padded square's side).
    """
    import torchxrayvision as xrv

    gray = image if image.dtype == np.uint8 else np.clip(image, 0, 255).astype(np.uint8)
    side = max(gray.shape)
    square = np.zeros((side, side), np.uint8)
    square[: gray.shape[0], : gray.shape[1]] = gray
    normalized = xrv.datasets.normalize(square, 255, reshape=True)
    return xrv.datasets.XRayResizer(resolution, engine="cv2")(normalized), side


@register("lesion_prior", "xrv")
class XrvLesionPrior(LesionPriorBackend):
    version = "1"

    def __init__(
        self,
        weights: str = "densenet121-res224-all",
        weights_dir: str | None = None,
        device: str = "auto",  # CUDA when present
        batch_size: int = 8,
        pleural_margin: float = 0.03,  # effusion may lie this far outside the lung outline (of the long side)
        heart_margin: float = 0.01,
    ) -> None:
        self.weights = weights
        self.weights_path = weights_file(weights, weights_dir)
        self.device = device
        self.batch_size = batch_size
        self.pleural_margin = pleural_margin
        self.heart_margin = heart_margin
        self._model = None

    def load(self) -> None:
        if self._model is not None:
            return
        import torch
        import torchxrayvision as xrv

        entry = xrv.models.model_urls[self.weights]
        model = xrv.models.DenseNet(weights=None, num_classes=len(entry["labels"]))
        model.load_state_dict(_state_dict(self.weights_path))
        model.targets = model.pathologies = entry["labels"]
        model.op_threshs = torch.tensor(entry["op_threshs"], dtype=torch.float32)
        model.input_resolution = entry["input_resolution"]
        self._model = model.to(pick_device(self.device)).eval()
        # Lesion types these weights do not predict keep empty maps and probability 0.
        self._lesions = [lesion for lesion, name in XRV_PATHOLOGY.items() if name in entry["labels"]]
        self._indices = [entry["labels"].index(XRV_PATHOLOGY[lesion]) for lesion in self._lesions]

    def predict(self, images: Sequence[np.ndarray], anatomies: Sequence[AnatomyResult]) -> list[LesionPrior]:
        if len(images) != len(anatomies):
            raise ValueError(f"{len(images)} images but {len(anatomies)} anatomies")
        self.load()
        results = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start: start + self.batch_size]
            cams, probabilities = self._activation_maps(batch)
            for offset, image in enumerate(batch):
                results.append(self._to_prior(image, anatomies[start + offset], cams[offset], probabilities[offset]))
        return results

    def _activation_maps(self, images: Sequence[np.ndarray]):
        """Class-activation logits B×C×7×7 with the bias (a tensor on the model's device), and op-normalised
        probabilities B×C (numpy)."""
        import torch
        import torch.nn.functional as F
        import torchxrayvision as xrv

        model = self._model
        inputs = [padded_model_input(image, model.input_resolution)[0] for image in images]
        x = torch.from_numpy(np.stack(inputs)).to(next(model.parameters()).device)
        indices = self._indices
        with torch.inference_mode():
            features = F.relu(model.features(x))
            weight = model.classifier.weight[indices]
            bias = model.classifier.bias[indices]
            cams = torch.einsum("ck,bkhw->bchw", weight, features) + bias[None, :, None, None]
            logits = cams.mean(dim=(2, 3))
            thresholds = model.op_threshs[indices].to(logits.device)
            probabilities = xrv.models.op_norm(torch.sigmoid(logits), thresholds)
        return cams.float(), probabilities.float().cpu().numpy()

    def _calibrated_maps(self, cams, shape: tuple[int, int]) -> np.ndarray:
        """C×H×W in [0, 1]: the activation logits (not probabilities, so outlines are smooth) upsampled bilinearly
        over the padded square and cropped to the image, then the image-level output's own calibration (sigmoid,
        operating points). On the model's device: on a GPU worker these full-size maps were the prior's largest CPU
        cost (op_norm alone 8 of 26 ms per image)."""
        import torch
        import torch.nn.functional as F
        import torchxrayvision as xrv

        height, width = shape
        side = max(height, width)
        upsampled = F.interpolate(cams[None], size=(side, side), mode="bilinear", align_corners=False)[0, :, :height, :width]
        thresholds = self._model.op_threshs[self._indices].to(upsampled.device)
        flat = torch.sigmoid(upsampled.reshape(len(self._indices), -1).T)
        calibrated = xrv.models.op_norm(flat, thresholds).T.reshape(upsampled.shape)
        return calibrated.clamp(0, 1).cpu().numpy()

    def _to_prior(self, image: np.ndarray, anatomy: AnatomyResult, cams, probabilities: np.ndarray) -> LesionPrior:
        height, width = image.shape[:2]
        calibrated = self._calibrated_maps(cams, (height, width))
        regions = self._regions(anatomy, (height, width))
        maps = {lesion.value: np.zeros((height, width), np.float32) for lesion in LesionType}
        image_probabilities = {lesion.value: 0.0 for lesion in LesionType}
        for channel, lesion in enumerate(self._lesions):
            lesion_map = calibrated[channel]
            region = regions[lesion is LesionType.CARDIOMEGALY]
            if region is not None:
                lesion_map = lesion_map * region
            maps[lesion.value] = lesion_map
            image_probabilities[lesion.value] = float(np.clip(probabilities[channel], 0, 1))
        return LesionPrior(maps=maps, probabilities=image_probabilities, backend=self.name, version=self.version)

    def _regions(self, anatomy: AnatomyResult, shape: tuple[int, int]) -> dict[bool, np.ndarray | None]:
        """{False: where lung lesions may be, True: where the heart is}; None where the anatomy lacks the structure."""
        long_side = max(shape)
        lungs = anatomy.masks.get(Location.LUNG.value)
        if lungs is None and Location.RIGHT_LUNG.value in anatomy.masks and Location.LEFT_LUNG.value in anatomy.masks:
            lungs = anatomy.masks[Location.RIGHT_LUNG.value] | anatomy.masks[Location.LEFT_LUNG.value]
        heart = anatomy.masks.get(Location.HEART.value)
        lung_region = dilate(lungs, int(round(self.pleural_margin * long_side))) if lungs is not None and lungs.any() else None
        heart_region = dilate(heart, int(round(self.heart_margin * long_side))) if heart is not None and heart.any() else None
        return {False: lung_region, True: heart_region}


def _state_dict(path: Path) -> dict:
    """The weights in `path`: a plain state dict, or a whole pickled model as torchxrayvision publishes them."""
    import pickle

    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torchxrayvision's release files are pickled modules; its own loader opens them this way too.
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    state = loaded.state_dict() if hasattr(loaded, "state_dict") else loaded
    # op_threshs come from torchxrayvision's table, not from the file (old files lack them).
    return {key: value for key, value in state.items() if key != "op_threshs"}
