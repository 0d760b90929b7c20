"""Arrow schemas of every output table (DESIGN.md §3) and of the synthetic ground truth (§6)."""
from __future__ import annotations

import pyarrow as pa

from schemas.vocab import SCHEMA_VERSION

_str_list = pa.list_(pa.string())

STUDIES = pa.schema(
    [
        ("study_id", pa.string()),
        ("subject_id", pa.string()),
        ("split", pa.string()),
        ("report_path", pa.string()),
        ("n_images", pa.int32()),
        ("n_frontal", pa.int32()),
        ("n_findings", pa.int32()),
        ("n_positive_pairs", pa.int32()),
        ("n_negative_pairs", pa.int32()),
        ("n_discarded", pa.int32()),
        ("n_errors", pa.int32()),
        ("status", pa.string()),
    ]
)

PAIRS = pa.schema(
    [
        ("pair_id", pa.string()),
        ("split", pa.string()),
        ("subject_id", pa.string()),
        ("study_id", pa.string()),
        ("dicom_id", pa.string()),
        ("image_path", pa.string()),
        ("instruction_type", pa.string()),
        ("target", pa.string()),
        ("locations", _str_list),
        ("is_positive", pa.bool_()),
        ("negative_kind", pa.string()),
        ("instruction", pa.string()),
        ("answer", pa.string()),
        ("mask_id", pa.string()),
        ("finding_id", pa.string()),
        ("sent_idx", pa.int32()),
        ("reported_locations", _str_list),
        ("grounded_locations", _str_list),
    ]
)

MASKS = pa.schema(
    [
        ("mask_id", pa.string()),
        ("study_id", pa.string()),
        ("dicom_id", pa.string()),
        ("target", pa.string()),
        ("locations", _str_list),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("rle", pa.string()),
        ("area", pa.int64()),
        ("bbox", pa.list_(pa.int32(), 4)),
        ("source", pa.string()),
        ("prior_probability", pa.float32()),
        ("region_overlap", pa.float32()),
        ("prior_mass", pa.float32()),
        ("refine_score", pa.float32()),
    ]
)

FINDINGS = pa.schema(
    [
        ("finding_id", pa.string()),
        ("report_id", pa.string()),
        ("study_id", pa.string()),
        ("section", pa.string()),
        ("sent_idx", pa.int32()),
        ("sentence", pa.string()),
        ("entity", pa.string()),
        ("presence", pa.string()),
        ("certainty", pa.string()),
        ("reported_locations", _str_list),
        ("mention", pa.string()),
        ("char_start", pa.int32()),
        ("char_end", pa.int32()),
        ("structurer", pa.string()),
    ]
)

DISCARDED = pa.schema(
    [
        ("finding_id", pa.string()),
        ("study_id", pa.string()),
        ("dicom_id", pa.string()),
        ("target", pa.string()),
        ("reported_locations", _str_list),
        ("reason", pa.string()),
        ("stage", pa.string()),
        ("details", pa.string()),
    ]
)

ERRORS = pa.schema(
    [
        ("stage", pa.string()),
        ("key", pa.string()),
        ("study_id", pa.string()),
        ("input_path", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "studies": STUDIES,
    "pairs": PAIRS,
    "masks": MASKS,
    "findings": FINDINGS,
    "discarded": DISCARDED,
    "errors": ERRORS,
}

# Sort keys that make every written table deterministic whatever the worker order.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "studies": ("study_id",),
    "pairs": ("study_id", "pair_id"),
    "masks": ("study_id", "mask_id"),
    "findings": ("study_id", "finding_id"),
    "discarded": ("study_id", "finding_id", "dicom_id"),
    "errors": ("study_id", "stage", "key", "message"),
}

GROUND_TRUTH_FINDINGS = pa.schema(
    [
        ("study_id", pa.string()),
        ("dicom_id", pa.string()),
        ("target", pa.string()),
        ("locations", _str_list),
        ("presence", pa.string()),
        ("certainty", pa.string()),
        ("visible", pa.bool_()),
    ]
)

SCHEMA_METADATA_KEY = b"mimic_ils_schema_version"


def with_version(schema: pa.Schema, table_name: str) -> pa.Schema:
    """The schema with the project's schema version and the table name in its metadata."""
    return schema.with_metadata({SCHEMA_METADATA_KEY: SCHEMA_VERSION.encode(), b"mimic_ils_table": table_name.encode()})
