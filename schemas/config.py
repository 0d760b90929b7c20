"""Validated run configuration (pydantic). YAML files in `configs/` fill these models.

Each section belongs to one stage; backends receive their `options` dict as keyword arguments and
validate it themselves, so a new backend needs a config line, not a change here.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.vocab import FRONTAL_VIEWS, InstructionType, LesionType, Location, NegativeKind


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each invalid field and why (for errors the user fixes in a config)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in error.errors())


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CorpusConfig(_Section):
    # a name in transforms/corpus_readers/ (mimic-cxr-jpg, openi, manifest); the reader validates its options
    reader: str = "mimic-cxr-jpg"
    options: dict[str, Any] = Field(default_factory=dict)
    frontal_views: list[str] = Field(default_factory=lambda: list(FRONTAL_VIEWS))


class VisionConfig(_Section):
    # Long side, in pixels, that images are decoded to for the models; masks are stored at source size.
    work_size: int = Field(512, ge=64, le=4096)
    batch_size: int = Field(8, ge=1)


class BackendConfig(_Section):
    backend: str
    options: dict[str, Any] = Field(default_factory=dict)


class StructuringConfig(_Section):
    backend: str = "rules"
    vocabulary: str = "en_cxr"  # a name under configs/vocabularies/ or a path to a YAML file
    options: dict[str, Any] = Field(default_factory=dict)


class FusionRule(_Section):
    """How candidates of one lesion type become its mask."""

    # 'reported': the reported locations (dilated); 'lung_base': the bases of the reported sides;
    # 'heart': the heart mask itself (cardiomegaly); 'lungs': anywhere in the lungs (diffuse types).
    region: str = "reported"
    region_dilation: float = Field(0.04, ge=0, le=0.5)  # of the image's long side
    min_cardiothoracic_ratio: float | None = None  # cardiomegaly only
    # cardiomegaly only: the ratio needed on these view positions instead (an AP film magnifies the heart)
    min_cardiothoracic_ratio_by_view: dict[str, float] = Field(default_factory=dict)
    # 'lung_base' only: how far below the lung field the region reaches, as a fraction of the lung's height
    # (fluid fills the costophrenic recess, which the aerated lung field leaves out)
    below_depth: float = Field(0.0, ge=0, le=1)
    # 'lung_base' only: how many zones of each reported side, counted up from the lower zone, the base is
    # (a large effusion climbs into the middle zone, highest against the chest wall)
    base_zones: int = Field(1, ge=1, le=3)
    # False: the mask is the prior's own component, not the refiner's (fluid has no lower edge to refine on)
    refine: bool = True
    # a refined mask that agrees less than this with its candidate (the refiner's score) is replaced by the
    # candidate's prior component: a refiner that drifts onto look-alike tissue is worse than the prior
    min_refine_score: float = Field(0.0, ge=0, le=1)
    # False: the configured lesion prior has no measured skill for this type (bench/eval_grounding.py): its findings
    # are discarded (`prior_not_trusted`) rather than given masks that are likely wrong, and its map verifies no
    # location as empty
    trusted: bool = True
    # True: the map fades where the image's reported pleural fluid is (`GroundingConfig.fluid_hides`): the lung behind
    # fluid is not seen, and the density there is the fluid's
    behind_fluid: bool = False

    def cardiothoracic_threshold(self, view: str) -> float | None:
        return self.min_cardiothoracic_ratio_by_view.get(view, self.min_cardiothoracic_ratio)

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        if value not in {"reported", "lung_base", "heart", "lungs"}:
            raise ValueError(f"unknown fusion region '{value}'")
        return value


class GroundingConfig(_Section):
    prior_threshold: float = Field(0.5, gt=0, lt=1)  # prior map level that outlines candidates
    min_region_overlap: float = Field(0.3, ge=0, le=1)  # c1
    min_confidence: float = Field(0.3, ge=0, le=1)  # c2
    min_prior_mass: float = Field(0.1, ge=0, le=1)  # c3
    min_area_fraction: float = Field(0.005, ge=0, le=1)  # c4, of the lung area
    min_location_coverage: float = Field(0.1, ge=0, le=1)  # verify: share of the mask in a location
    max_empty_location_prior: float = Field(0.2, ge=0, le=1)  # a location is empty below this mean prior
    # effusion map levels over which `behind_fluid` maps fade out, on the sides where the report names effusion
    fluid_hides: tuple[float, float] = (0.3, 0.6)
    fusion: dict[LesionType, FusionRule] = Field(default_factory=dict)


class PairsConfig(_Section):
    seed: int = 0
    templates: dict[InstructionType, list[str]]
    negative_templates: dict[InstructionType, list[str]]
    answers: dict[str, list[str]]
    # Lesion types asked with a location ('basic'); others only 'global' (cardiomegaly: always the heart).
    located_types: list[LesionType]
    # negatives per positive pair, per split; the kinds are drawn with these weights
    negative_ratio: dict[str, float]
    # every usable frontal image gets at least this many negatives (normal studies included)
    min_negatives_per_image: int = Field(2, ge=0)
    negative_kind_weights: dict[NegativeKind, float]
    # location unions asked as one instruction when a lesion is grounded in all of them
    location_unions: list[list[Location]] = Field(default_factory=list)


class OutputConfig(_Section):
    studies_per_shard: int = Field(2000, ge=1)
    row_group_rows: int = Field(50_000, ge=1000)
    compression: str = "zstd"
    check_contract: bool = True  # check the written run against DESIGN.md §3 at the end


class QualityConfig(_Section):
    """Thresholds of the quality gate (`mimic-ils validate`, and the pipeline's last stage)."""

    validate_after_run: bool = True
    # negatives per positive pair, per split (normal images add negatives without positives)
    negative_ratio_band: tuple[float, float] = (0.5, 8.0)
    # distribution checks apply to a split only when it holds at least this many pairs
    min_pairs_for_distribution: int = Field(20, ge=1)
    # a lesion type reported present and definite this many times needs at least one positive pair
    min_findings_for_coverage: int = Field(20, ge=1)
    max_error_study_share: float = Field(0.05, ge=0, le=1)
    # HDBSCAN mask-outlier flagging, per lesion type
    outlier_min_masks: int = Field(10, ge=2)
    outlier_min_cluster_size: int = Field(5, ge=2)
    outlier_min_samples: int | None = Field(None, ge=1)
    outlier_score_threshold: float = Field(0.8, ge=0, le=1)
    outlier_max_masks_per_type: int = Field(2000, ge=1)  # a uniform sample beyond this (decoding is the cost)
    data_docs: bool = True

    @model_validator(mode="after")
    def _band_ordered(self):
        low, high = self.negative_ratio_band
        if low > high:
            raise ValueError(f"negative_ratio_band {self.negative_ratio_band} must be (low, high)")
        return self


class PipelineConfig(_Section):
    name: str
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    structuring: StructuringConfig = Field(default_factory=StructuringConfig)
    vision: VisionConfig = Field(default_factory=VisionConfig)
    anatomy: BackendConfig
    lesion_prior: BackendConfig
    refiner: BackendConfig
    grounding: GroundingConfig
    pairs: PairsConfig
    output: OutputConfig = Field(default_factory=OutputConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)


def quality_config(config: PipelineConfig | QualityConfig | None = None, manifest: dict | None = None) -> QualityConfig:
    """The quality section of a config, else of the config recorded in a run's manifest, else the defaults."""
    if isinstance(config, QualityConfig):
        return config
    if isinstance(config, PipelineConfig):
        return config.quality
    try:
        return QualityConfig.model_validate((manifest or {}).get("config", {}).get("quality", {}))
    except ValidationError:
        return QualityConfig()


class ClusteringConfig(_Section):
    """HDBSCAN over the mined phrases of one kind (transforms/vocab_mining.py)."""

    min_cluster_size: int = Field(2, ge=2)
    min_samples: int | None = Field(1, ge=1)
    cluster_selection_method: str = "leaf"
    # clusters closer than this (euclidean distance of unit vectors, 0..2) are not split further
    cluster_selection_epsilon: float = Field(0.0, ge=0, le=2)

    @field_validator("cluster_selection_method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in {"leaf", "eom"}:
            raise ValueError(f"cluster_selection_method must be 'leaf' or 'eom', got '{value}'")
        return value


class VocabMiningConfig(_Section):
    """What makes a phrase location- or lesion-like for `mimic-ils vocab mine` (configs/mining/<name>.yaml)."""

    name: str
    location_words: list[str]
    location_modifiers: list[str] = Field(default_factory=list)
    lesion_stems: list[str]
    redaction_tokens: list[str] = Field(default_factory=list)
    qualifiers: list[str] = Field(default_factory=list)  # left off the ends of lesion-like phrases ("mild")
    max_phrase_tokens: int = Field(6, ge=1)
    examples_per_group: int = Field(3, ge=0)
    # known words inside unknown ones: endings to strip ("bases" -> "base"), prefix -> the side word it means
    word_endings: list[str] = Field(default_factory=list)
    prefixes: dict[str, str] = Field(default_factory=dict)
    # share of the cosine between location phrases that comes from the CXAS locations of their known words
    profile_weight: float = Field(0.5, ge=0, le=1)
    clustering: ClusteringConfig = Field(default_factory=ClusteringConfig)
