"""The controlled vocabularies of the dataset (DESIGN.md §2). Every other module imports these."""
from __future__ import annotations

from enum import Enum

SCHEMA_VERSION = "1.0.0"


class StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value


class LesionType(StrEnum):
    CARDIOMEGALY = "cardiomegaly"
    PNEUMONIA = "pneumonia"
    ATELECTASIS = "atelectasis"
    OPACITY = "opacity"
    CONSOLIDATION = "consolidation"
    EDEMA = "edema"
    EFFUSION = "effusion"


class Location(StrEnum):
    """CXAS class names; left/right are the patient's (patient's left = image right on PA)."""

    RIGHT_LUNG = "right lung"
    LEFT_LUNG = "left lung"
    RIGHT_APICAL = "right apical zone lung"
    LEFT_APICAL = "left apical zone lung"
    RIGHT_UPPER = "right upper zone lung"
    LEFT_UPPER = "left upper zone lung"
    RIGHT_MID = "right mid zone lung"
    LEFT_MID = "left mid zone lung"
    RIGHT_BASE = "right lung base"
    LEFT_BASE = "left lung base"
    LUNG = "lung"
    HEART = "heart"


class Presence(StrEnum):
    PRESENT = "present"
    ABSENT = "absent"


class Certainty(StrEnum):
    DEFINITE = "definite"
    UNCERTAIN = "uncertain"


class InstructionType(StrEnum):
    BASIC = "basic"
    GLOBAL = "global"
    LESION_INFERENCE = "lesion_inference"


class NegativeKind(StrEnum):
    NEGATIVE_REPORTED_LESION = "negative_reported_lesion"
    NOT_REPORTED_LESION = "not_reported_lesion"
    LOCATION_WITHOUT_LESION = "location_without_lesion"
    GROUNDING_NO_LOCATION_EXTENSION = "grounding_no_location_extension"


class DiscardReason(StrEnum):
    """Why a reported (present) finding did not become a positive pair on an image."""

    NO_FRONTAL_IMAGE = "no_frontal_image"
    UNCERTAIN_FINDING = "uncertain_finding"
    ANATOMY_MISSING = "anatomy_missing"
    NO_PRIOR_SIGNAL = "no_prior_signal"
    PRIOR_NOT_TRUSTED = "prior_not_trusted"  # the configured lesion prior has no measured skill for this type
    OUTSIDE_REPORTED_REGION = "outside_reported_region"
    LOW_CONFIDENCE = "low_confidence"
    LOW_PRIOR_MASS = "low_prior_mass"
    BELOW_MIN_AREA = "below_min_area"
    REFINEMENT_EMPTY = "refinement_empty"
    NOT_VERIFIED = "not_verified"
    IMAGE_ERROR = "image_error"
    DUPLICATE_MENTION = "duplicate_mention"  # the same lesion, image and locations as a finding already used


class StudyStatus(StrEnum):
    USED = "used"
    NEGATIVES_ONLY = "negatives_only"
    DISCARDED = "discarded"
    ERROR = "error"


class Stage(StrEnum):
    """Pipeline stages, as named in `errors.stage` and `discarded.stage`."""

    READ = "read"
    STRUCTURE = "structure"
    DECODE = "decode"
    ANATOMY = "anatomy"
    LESION_PRIOR = "lesion_prior"
    CANDIDATES = "candidates"
    REFINE = "refine"
    VERIFY = "verify"
    PAIRS = "pairs"


class Split(StrEnum):
    TRAIN = "train"
    VALIDATE = "validate"
    TEST = "test"


FRONTAL_VIEWS = ("PA", "AP")

# Lung zones from apex to base, per side: the order the zone rule and the report map both use.
ZONES_BY_SIDE: dict[str, tuple[Location, ...]] = {
    "right": (Location.RIGHT_APICAL, Location.RIGHT_UPPER, Location.RIGHT_MID, Location.RIGHT_BASE),
    "left": (Location.LEFT_APICAL, Location.LEFT_UPPER, Location.LEFT_MID, Location.LEFT_BASE),
}
LUNG_BY_SIDE: dict[str, Location] = {"right": Location.RIGHT_LUNG, "left": Location.LEFT_LUNG}

# Lesion types that look alike on a radiograph and are asked as "opacity ... predict its type".
OPACITY_LIKE: tuple[LesionType, ...] = (
    LesionType.PNEUMONIA,
    LesionType.ATELECTASIS,
    LesionType.CONSOLIDATION,
    LesionType.EDEMA,
)


def location_parent(location: Location) -> Location | None:
    """The next larger region: zone -> its lung -> 'lung'; 'lung' and 'heart' have none."""
    for side, zones in ZONES_BY_SIDE.items():
        if location in zones:
            return LUNG_BY_SIDE[side]
    if location in LUNG_BY_SIDE.values():
        return Location.LUNG
    return None


def locations_related(a: Location, b: Location) -> bool:
    """True when one region contains the other (a statement about one says something about the other)."""

    def chain(location: Location | None) -> set[Location]:
        found = set()
        while location is not None:
            found.add(location)
            location = location_parent(location)
        return found

    return a in chain(b) or b in chain(a)


# The regions negatives may name: each lung and each zone (not the whole 'lung', not the heart).
SIDED_LOCATIONS: tuple[Location, ...] = tuple(LUNG_BY_SIDE.values()) + tuple(
    zone for zones in ZONES_BY_SIDE.values() for zone in zones
)
