"""Corpus readers by name: `create_reader(config.corpus.reader, **config.corpus.options)`.

A new corpus format is one file in this package (a `CorpusReader` subclass decorated with `@register(name)`)
plus one line in `READER_MODULES`; `detect_reader` tries the readers in that order for commands that take
any corpus (`mimic-ils structure`, `mimic-ils vocab mine`).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from transforms.corpus_readers.base import CorpusError, CorpusReader, registered

READER_MODULES: dict[str, str] = {
    "manifest": "transforms.corpus_readers.manifest",
    "openi": "transforms.corpus_readers.openi",
    "mimic-cxr-jpg": "transforms.corpus_readers.mimic_cxr",
}


def reader_class(name: str) -> type[CorpusReader]:
    module = READER_MODULES.get(name)
    if module is None:
        raise CorpusError(f"unknown corpus reader '{name}' (known: {', '.join(sorted(READER_MODULES))})")
    importlib.import_module(module)
    return registered(name)


def create_reader(name: str, **options: Any) -> CorpusReader:
    """The reader `name` built with its options (a CorpusError names every bad option)."""
    return reader_class(name)(**options)


def detect_reader(path: Path) -> str:
    """The name of the first reader that recognises `path`."""
    for name in READER_MODULES:
        if reader_class(name).detect(Path(path)):
            return name
    raise CorpusError(
        f"{path}: not a report corpus that a reader recognises (expected a MIMIC-CXR root with "
        "files/pXX/pSUBJECT/sSTUDY.txt, an OpenI XML folder or .tgz, or a .csv/.parquet manifest); name one with "
        f"--reader ({', '.join(READER_MODULES)})"
    )
