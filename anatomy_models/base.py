"""The vision interfaces: anatomy, lesion prior, mask refinement. One file per backend, a registry by name.

Shaped after Beam's `ModelHandler`: a backend is built from its config section, loads its model once
(`load`), then processes lists of images. Beam wrappers in `pipeline/` hold one instance per worker.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from schemas.config import describe_validation_error

from transforms.records import AnatomyResult, Box, LesionPrior, RefinedMask


class UnknownBackendError(ValueError):
    """The config names a backend that no module provides."""


# What a backend constructor raises for things the user fixes: a bad option (ValueError), an unknown
# backend, a missing weights file (FileNotFoundError subclasses). Constructors check weights files,
# so building each backend once in the launcher surfaces these before any worker starts.
BACKEND_SETUP_ERRORS = (ValueError, FileNotFoundError)


class AnatomyBackend(ABC):
    name: str
    version: str = "0"

    def load(self) -> None:
        """Load weights; called once per worker before the first batch."""

    @abstractmethod
    def segment(self, images: Sequence[np.ndarray]) -> list[AnatomyResult]:
        """Images are 2-D (uint8 or float, any size); masks come back at each image's own size."""


class LesionPriorBackend(ABC):
    name: str
    version: str = "0"

    def load(self) -> None:
        """Load weights; called once per worker before the first batch."""

    @abstractmethod
    def predict(self, images: Sequence[np.ndarray], anatomies: Sequence[AnatomyResult]) -> list[LesionPrior]:
        """One LesionPrior per image, maps at the image's own size."""


class MaskRefiner(ABC):
    name: str
    version: str = "0"

    def load(self) -> None:
        """Load weights; called once per worker before the first image."""

    @abstractmethod
    def refine(self, image: np.ndarray, boxes: Sequence[Box], seeds: Sequence[np.ndarray]) -> list[RefinedMask]:
        """One mask per box for one image (one image embedding reused for every prompt).

        `seeds[i]` is the candidate's prior component (bool, image size), a hint for refiners that use one.
        """

    def refine_images(self, requests: Sequence[tuple[np.ndarray, Sequence[Box], Sequence[np.ndarray]]]
                      ) -> list[list[RefinedMask]]:
        """`refine` for several images: one list of masks per (image, boxes, seeds). Refiners that share work
        across images (SAM encodes them in batches) override it."""
        return [self.refine(image, boxes, seeds) if boxes else [] for image, boxes, seeds in requests]


def validated_options(model: type[BaseModel], backend: str, options: dict[str, Any]) -> BaseModel:
    """A backend's options checked by its pydantic model; a ValueError naming every bad option otherwise."""
    try:
        return model(**options)
    except ValidationError as error:
        raise ValueError(f"backend '{backend}': invalid options: {describe_validation_error(error)}") from None


_REGISTRIES: dict[str, dict[str, Callable[..., Any]]] = {"anatomy": {}, "lesion_prior": {}, "refiner": {}}


def register(kind: str, name: str):
    """Class decorator: make a backend constructible by name from config."""

    def wrap(cls):
        _REGISTRIES[kind][name] = cls
        cls.name = name
        return cls

    return wrap


def load_backend(kind: str, name: str, **options: Any):
    """`create`, then its weights loaded: ready to run."""
    model = create(kind, name, **options)
    model.load()
    return model


def load_configured(config, kind: str):
    """The backend that a pipeline config's `kind` section ('anatomy', 'lesion_prior', 'refiner') names, loaded with
    that section's options."""
    section = getattr(config, kind)
    return load_backend(kind, section.backend, **section.options)


def create(kind: str, name: str, **options: Any):
    """Build the backend `name` of `kind` ('anatomy', 'lesion_prior', 'refiner') with its config options."""
    from anatomy_models.backends import BACKEND_MODULES

    module = BACKEND_MODULES[kind].get(name)
    if module is None:
        known = ", ".join(sorted(BACKEND_MODULES[kind]))
        raise UnknownBackendError(f"unknown {kind} backend '{name}' (known: {known})")
    importlib.import_module(module)
    return _REGISTRIES[kind][name](**options)
