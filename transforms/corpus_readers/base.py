"""The corpus reader interface: a corpus on disk -> `Study` records (report, images with views, split).

Shaped after the vision backends (`anatomy_models/base.py`): one small abstract class, one file per corpus
format, a registry by name (`corpus.reader` in the config). A reader is built from `corpus.options` and
validates them itself, so a new corpus needs a new file and a line in `READER_MODULES`, not a DAG change.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from schemas.vocab import Stage
from transforms.records import ErrorRecord, ReportText, Study


class CorpusError(ValueError):
    """A corpus a reader cannot index (wrong layout, bad options, unreadable manifest): told in one line."""


def part_of(subject_id: str, n_parts: int) -> int:
    """The partition of a subject: a stable hash, so a patient's studies always land in the same part."""
    digest = hashlib.sha256(subject_id.encode()).digest()
    return int.from_bytes(digest[:8], "little") % n_parts


@dataclass(frozen=True)
class UnlistedImage:
    """An image file on disk that the corpus's own listing does not name: an input that becomes one errors row."""

    subject_id: str
    study_id: str
    dicom_id: str
    path: str  # relative to the corpus root
    listing: str  # the file that should have named it

    def error(self) -> ErrorRecord:
        return ErrorRecord(stage=Stage.READ.value, key=self.dicom_id, study_id=self.study_id, input_path=self.path,
                           error_type="ImageNotInMetadata", message=f"image file has no row in {self.listing}")


@dataclass
class CorpusIndex:
    """What a reader found: every study (sorted by study id) and every image file no study lists.

    `root` is the folder that the studies' relative report and image paths are relative to."""

    studies: list[Study]
    unlisted_images: list[UnlistedImage] = field(default_factory=list)
    root: Path | None = None

    def part(self, index: int, n_parts: int) -> CorpusIndex:
        """The studies and unlisted images whose subject falls in part `index` of `n_parts`."""
        return CorpusIndex([s for s in self.studies if part_of(s.subject_id, n_parts) == index],
                           [u for u in self.unlisted_images if part_of(u.subject_id, n_parts) == index], self.root)


def study_report(root: Path, study: Study) -> ReportText | None:
    """The study's report text (held by the study, or read from its file); None when it has none."""
    if study.report_text is not None:
        text = study.report_text
    elif study.report_path is not None:
        text = (root / study.report_path).read_bytes().decode("utf-8", errors="replace")
    else:
        return None
    return ReportText(report_id=study.report_id or study.study_id, study_id=study.study_id, text=text)


class CorpusReader(ABC):
    """One corpus format. Constructed with the config's `corpus.options` (keyword arguments)."""

    name: str

    def __init__(self, **options):
        if options:
            raise CorpusError(f"corpus reader '{self.name}' takes no options, got: {', '.join(sorted(options))}")

    @classmethod
    def detect(cls, path: Path) -> bool:
        """Whether `path` looks like a corpus of this format (for commands that take any corpus)."""
        return False

    @abstractmethod
    def index(self, path: Path) -> CorpusIndex:
        """Every study of the corpus at `path`, with its report, images (view positions) and split."""

    def reports(self, path: Path) -> Iterator[ReportText]:
        """The corpus's report texts in study order (report structuring and vocabulary mining read only these)."""
        corpus = self.index(path)
        for study in corpus.studies:
            report = study_report(corpus.root or Path(path), study)
            if report is not None:
                yield report


_READERS: dict[str, type[CorpusReader]] = {}


def register(name: str):
    """Class decorator: make a reader constructible by name from config."""

    def wrap(cls):
        _READERS[name] = cls
        cls.name = name
        return cls

    return wrap


def registered(name: str) -> type[CorpusReader] | None:
    return _READERS.get(name)
