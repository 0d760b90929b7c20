"""Plain records that flow between stages. Pure data: no Beam, no models."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ReportText:
    """One report's raw text, as a corpus reader yields it."""

    report_id: str  # the corpus's own id ('s50414267' for MIMIC-CXR, 'CXR1000' for OpenI)
    study_id: str
    text: str


@dataclass(frozen=True)
class ImageRef:
    dicom_id: str
    path: str  # relative to the corpus root
    view_position: str  # as in the metadata ('PA', 'AP', 'LATERAL', '' when unknown)
    rows: int | None = None
    columns: int | None = None


@dataclass(frozen=True)
class ErrorRecord:
    """One input element a stage could not process (a row of the `errors` table)."""

    stage: str
    key: str
    study_id: str | None
    input_path: str | None
    error_type: str
    message: str

    def as_row(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Study:
    """One study as a corpus reader sees it, before any processing."""

    study_id: str
    subject_id: str
    split: str | None
    report_path: str | None  # relative to the corpus root; None when the study has no report file
    images: tuple[ImageRef, ...] = ()
    report_id: str | None = None  # the corpus's own report id (`s50414267` for MIMIC-CXR)
    report_text: str | None = None  # the report itself when it is no file of its own (OpenI, manifests)


@dataclass(frozen=True)
class Sentence:
    section: str
    sent_idx: int
    text: str
    char_start: int  # offset of the sentence in the report text
    char_end: int


@dataclass(frozen=True)
class Finding:
    """One structured mention (a row of the `findings` table)."""

    finding_id: str
    report_id: str
    study_id: str
    section: str
    sent_idx: int
    sentence: str
    entity: str  # a LesionType value
    presence: str  # a Presence value
    certainty: str  # a Certainty value
    reported_locations: tuple[str, ...]  # Location values
    mention: str
    char_start: int  # offsets of the mention in the report text
    char_end: int
    structurer: str

    def as_row(self) -> dict:
        row = dict(self.__dict__)
        row["reported_locations"] = list(self.reported_locations)
        return row


@dataclass
class AnatomyResult:
    """Anatomical regions of one image, at the resolution of the image given to the backend."""

    masks: dict[str, np.ndarray]  # bool HxW, keyed by Location value (+ extra structures, e.g. 'mediastinum')
    confidence: dict[str, float]
    backend: str
    version: str


@dataclass
class LesionPrior:
    """Per-lesion-type evidence maps of one image, at the resolution of the image given to the backend."""

    maps: dict[str, np.ndarray]  # float32 HxW in [0, 1], keyed by LesionType value
    probabilities: dict[str, float]  # image-level probability per LesionType value
    backend: str
    version: str


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int  # exclusive
    y1: int  # exclusive

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)

    def as_xywh(self) -> list[int]:
        return [self.x0, self.y0, self.x1 - self.x0, self.y1 - self.y0]


@dataclass
class RefinedMask:
    mask: np.ndarray  # bool HxW
    score: float  # the refiner's own quality estimate in [0, 1]


@dataclass
class Candidate:
    """A connected region of a lesion prior map, with the c1–c4 scores the filter decides on."""

    box: Box
    component: np.ndarray  # bool HxW, the prior's connected component
    confidence: float  # c2
    region_overlap: float = 0.0  # c1: fraction of the component inside the reported region
    prior_mass: float = 0.0  # c3: fraction of the map's mass inside the box
    area_fraction: float = 0.0  # c4: component area / lung area
    rejected_by: str | None = None  # a DiscardReason value, None when kept
    scores: dict = field(default_factory=dict)
