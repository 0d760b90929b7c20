"""`mimic-ils validate`: Great Expectations (1.x) suites over a run directory, results JSON and Data Docs.

Where each rule lives:
- Per-table rules (column set and order, column types, vocabularies, nullability, value ranges,
  uniqueness, row counts against the manifest, distributions) are GE expectations, one suite per
  output table, plus two derived views: `mask_geometry` (bbox and area against the image and the
  RLE) and `list_values` (one row per element of the list columns, so list entries are vocabulary
  checked like scalars).
- Cross-table rules (every mask_id in pairs exists in masks, every discarded finding exists in
  findings, every present finding is used or discarded, the studies counts match the tables) are
  written once, in `pipeline.contract.check_run`, the fast check every run already ends with. Its
  problems become the `contract` view, one row per problem, under one GE expectation (no problem
  rows), so they land in the same results and Data Docs.
- Mask outliers (HDBSCAN, `transforms.mask_outliers`) are a `warning`-severity expectation: they
  surface odd masks for review without failing the run.
"""
from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as coco_mask

from pipeline.contract import check_run
from schemas.config import QualityConfig, quality_config
from schemas.tables import TABLES
from schemas.vocab import (
    Certainty,
    DiscardReason,
    InstructionType,
    LesionType,
    Location,
    NegativeKind,
    Presence,
    Split,
    Stage,
    StudyStatus,
)
from transforms.mask_outliers import OutlierScore, flag_mask_outliers

QUALITY_DIR = "quality"
RESULTS_FILE = "results.json"
INDEX_FILE = "index.html"
OUTLIERS_FILE = "mask_outliers.json"
GE_RESULTS_DIR = "great_expectations"
DATA_DOCS_DIR = "data_docs"
MANIFEST = "manifest.json"

# The column that names a row in failure messages, per validated frame.
ROW_ID: dict[str, str] = {
    "studies": "study_id", "pairs": "pair_id", "masks": "mask_id", "findings": "finding_id",
    "discarded": "finding_id", "errors": "key", "mask_geometry": "mask_id", "list_values": "row_id",
    "mask_outliers": "mask_id",
}
LIST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("pairs", "locations"), ("pairs", "reported_locations"), ("pairs", "grounded_locations"),
    ("masks", "locations"), ("findings", "reported_locations"), ("discarded", "reported_locations"),
)


@dataclass
class ExpectationOutcome:
    suite: str
    expectation: str  # GE expectation type
    rule: str  # what the expectation says, in words
    success: bool
    severity: str  # critical | warning
    message: str  # empty when it passed; otherwise names the problem and the offending rows/values
    column: str | None = None


@dataclass
class ValidationReport:
    run_dir: Path
    outcomes: list[ExpectationOutcome]
    mask_outliers: list[OutlierScore]
    results_path: Path
    data_docs_index: Path | None
    seconds: float
    suites: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "critical"]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity != "critical"]

    @property
    def success(self) -> bool:
        return not self.failures

    def format_table(self, max_messages: int = 20) -> str:
        """Per suite: expectations passed / failed / warned; then one line per failure and warning."""
        lines = [f"{'suite':<15} {'passed':>6} {'failed':>6} {'warned':>6}"]
        for suite in self.suites:
            mine = [o for o in self.outcomes if o.suite == suite]
            failed = sum(1 for o in mine if not o.success and o.severity == "critical")
            warned = sum(1 for o in mine if not o.success and o.severity != "critical")
            lines.append(f"{suite:<15} {len(mine) - failed - warned:>6} {failed:>6} {warned:>6}")
        flagged = self.failures + self.warnings
        for outcome in flagged[:max_messages]:
            tag = "FAIL" if outcome.severity == "critical" else "WARN"
            lines.append(f"{tag} {outcome.message}")
        if len(flagged) > max_messages:
            lines.append(f"... {len(flagged) - max_messages} more in {self.results_path}")
        verdict = "PASS" if self.success else f"FAIL ({len(self.failures)} expectations failed)"
        lines.append(f"{verdict}; results: {self.results_path}")
        lines.append(f"report: {self.results_path.parent / INDEX_FILE}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "run_dir": str(self.run_dir), "success": self.success, "seconds": round(self.seconds, 3),
            "n_expectations": len(self.outcomes), "n_failed": len(self.failures), "n_warnings": len(self.warnings),
            "data_docs_index": str(self.data_docs_index) if self.data_docs_index else None,
            "expectations": [asdict(o) for o in self.outcomes],
            "mask_outliers": [asdict(o) for o in self.mask_outliers],
        }


# ---------------------------------------------------------------- frames


def _read_as_written(run_dir: Path, name: str) -> pa.Table | None:
    """A table with the types its shards were written with (not cast to the contract): None when it has no shard."""
    shards = sorted((run_dir / name).glob("part-*.parquet"))
    if not shards:
        return None
    parts = [pq.read_table(s) for s in shards]
    return pa.concat_tables([p.replace_schema_metadata(None) for p in parts], promote_options="permissive")


def _frame(table: pa.Table) -> pd.DataFrame:
    # Arrow-backed columns keep the written types (int32 stays int32 even with nulls) for the type checks.
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def _mask_geometry(masks: pa.Table) -> pd.DataFrame:
    rows = masks.select(["mask_id", "height", "width", "area", "bbox", "rle"]).to_pylist()
    bbox = np.array([r["bbox"] or [0, 0, 0, 0] for r in rows], np.int64).reshape(-1, 4)
    rles = [{"size": [r["height"], r["width"]], "counts": r["rle"].encode("ascii")} for r in rows
            if r["rle"] is not None]
    rle_area = np.asarray(coco_mask.area(rles), np.int64) if rles else np.zeros(0, np.int64)
    height = np.array([r["height"] for r in rows], np.int64)
    width = np.array([r["width"] for r in rows], np.int64)
    return pd.DataFrame({
        "mask_id": [r["mask_id"] for r in rows], "height": height, "width": width,
        "image_area": height * width, "area": np.array([r["area"] for r in rows], np.int64),
        "rle_area": rle_area if len(rle_area) == len(rows) else np.full(len(rows), -1),
        "bbox_x": bbox[:, 0], "bbox_y": bbox[:, 1], "bbox_w": bbox[:, 2], "bbox_h": bbox[:, 3],
        "bbox_right": bbox[:, 0] + bbox[:, 2], "bbox_bottom": bbox[:, 1] + bbox[:, 3],
    })


def _list_values(tables: dict[str, pa.Table]) -> pd.DataFrame:
    ids, columns, values = [], [], []
    for table_name, column in LIST_COLUMNS:
        table = tables.get(table_name)
        if table is None or column not in table.column_names:
            continue
        id_column = ROW_ID[table_name]
        for row_id, items in zip(table[id_column].to_pylist(), table[column].to_pylist()):
            for item in items or []:
                ids.append(row_id)
                columns.append(f"{table_name}.{column}")
                values.append(item)
    return pd.DataFrame({"row_id": ids, "column": columns, "value": values}, dtype=object)


# ---------------------------------------------------------------- expectations


def _values(enum) -> list[str]:
    return [e.value for e in enum]


def _arrow_type_name(data_type: pa.DataType) -> str | None:
    """The pandas dtype name GE compares against; None for nested types (their elements are checked in list_values)."""
    if pa.types.is_list(data_type) or pa.types.is_fixed_size_list(data_type):
        return None
    return str(pd.ArrowDtype(data_type))


class _Suite:
    """Collects (expectation, rule in words) pairs for one frame."""

    def __init__(self, name: str):
        self.name = name
        self.items: list[tuple[Any, str]] = []

    def add(self, expectation, rule: str) -> None:
        expectation.meta = {"notes": rule}
        self.items.append((expectation, rule))


def _table_suite(gxe, name: str, frame: pd.DataFrame, manifest: dict | None) -> _Suite:
    suite = _Suite(name)
    schema = TABLES[name]
    suite.add(gxe.ExpectTableColumnsToMatchOrderedList(column_list=schema.names),
              f"columns are exactly {', '.join(schema.names)} (schemas.tables.{name.upper()})")
    for column in schema:
        type_name = _arrow_type_name(column.type)
        if type_name is not None and column.name in frame.columns:
            suite.add(gxe.ExpectColumnTypeToBe(column=column.name, type_=type_name),
                      f"{column.name} is {column.type}")
    if manifest is not None and name in (manifest.get("counts") or {}):
        suite.add(gxe.ExpectTableRowCountToEqual(value=int(manifest["counts"][name])),
                  f"row count equals the manifest's counts.{name}")
    return suite


def _not_null(suite: _Suite, gxe, columns: list[str], condition=None, when: str = "") -> None:
    for column in columns:
        suite.add(gxe.ExpectColumnValuesToNotBeNull(column=column, row_condition=condition),
                  f"{column} is never null{when}")


def _in_set(suite: _Suite, gxe, column: str, vocabulary, vocab_name: str) -> None:
    suite.add(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=_values(vocabulary)),
              f"{column} is in the {vocab_name} vocabulary")


def build_suites(gxe, Column, frames: dict[str, pd.DataFrame], manifest: dict | None,
                 settings: QualityConfig) -> list[_Suite]:
    """Every expectation of the gate, per frame (GE modules are passed in: importing GE takes seconds)."""
    suites: dict[str, _Suite] = {}
    for name in TABLES:
        if name in frames:
            suites[name] = _table_suite(gxe, name, frames[name], manifest)

    if "studies" in suites:
        s = suites["studies"]
        if manifest is not None:
            expected = int(manifest["inputs"]["studies"])
            s.add(gxe.ExpectTableRowCountToEqual(value=expected),
                  f"one row per input study ({expected} in the manifest's inputs.studies): no study is lost")
        _not_null(s, gxe, ["study_id", "subject_id", "status"])
        s.add(gxe.ExpectColumnValuesToBeUnique(column="study_id"), "study_id is unique")
        _in_set(s, gxe, "status", StudyStatus, "StudyStatus")
        _in_set(s, gxe, "split", Split, "Split")
        for column in ("n_images", "n_frontal", "n_findings", "n_positive_pairs", "n_negative_pairs",
                       "n_discarded", "n_errors"):
            s.add(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0), f"{column} ≥ 0")
        s.add(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="n_images", column_B="n_frontal", or_equal=True),
              "n_frontal ≤ n_images")
        s.add(gxe.ExpectColumnValuesToNotBeInSet(column="status", value_set=[StudyStatus.ERROR.value],
                                                 mostly=1 - settings.max_error_study_share),
              f"at most {settings.max_error_study_share:.0%} of studies end with status 'error'")

    if "pairs" in suites:
        s = suites["pairs"]
        positive, negative = Column("is_positive") == True, Column("is_positive") == False  # noqa: E712
        _not_null(s, gxe, ["pair_id", "split", "study_id", "dicom_id", "image_path", "instruction_type", "target",
                           "is_positive", "instruction", "answer"])
        s.add(gxe.ExpectColumnValuesToBeUnique(column="pair_id"), "pair_id is unique")
        _in_set(s, gxe, "target", LesionType, "LesionType")
        _in_set(s, gxe, "instruction_type", InstructionType, "InstructionType")
        _in_set(s, gxe, "negative_kind", NegativeKind, "NegativeKind")
        _in_set(s, gxe, "split", Split, "Split")
        _not_null(s, gxe, ["mask_id", "finding_id"], positive, " for positive pairs")
        s.add(gxe.ExpectColumnValuesToBeNull(column="negative_kind", row_condition=positive),
              "negative_kind is null for positive pairs")
        s.add(gxe.ExpectColumnValuesToBeNull(column="mask_id", row_condition=negative),
              "mask_id is null for negative pairs (a negative has no mask)")
        _not_null(s, gxe, ["negative_kind"], negative, " for negative pairs")
        s.add(gxe.ExpectColumnValuesToMatchRegex(column="answer", regex=r"\[SEG\]"), "every answer holds [SEG]")
        s.add(gxe.ExpectColumnValuesToBeBetween(column="sent_idx", min_value=0), "sent_idx ≥ 0")
        low, high = settings.negative_ratio_band
        pairs = frames["pairs"]
        for split in sorted(pairs["split"].dropna().unique()):
            if int((pairs["split"] == split).sum()) < settings.min_pairs_for_distribution:
                continue
            s.add(gxe.ExpectColumnMeanToBeBetween(column="is_positive", row_condition=Column("split") == split,
                                                  min_value=1 / (1 + high), max_value=1 / (1 + low)),
                  f"negatives per positive in split '{split}' within [{low}, {high}]")
        findings = frames.get("findings")
        if findings is not None and {"entity", "presence", "certainty"} <= set(findings.columns):
            reported = findings[(findings["presence"] == Presence.PRESENT.value)
                                & (findings["certainty"] == Certainty.DEFINITE.value)]["entity"].value_counts()
            expected = sorted(t for t, n in reported.items() if n >= settings.min_findings_for_coverage)
            if expected:
                s.add(gxe.ExpectColumnDistinctValuesToContainSet(column="target", value_set=expected,
                                                                 row_condition=positive),
                      f"every lesion type reported ≥ {settings.min_findings_for_coverage} times has a positive pair")

    if "masks" in suites:
        s = suites["masks"]
        _not_null(s, gxe, ["mask_id", "study_id", "dicom_id", "target", "height", "width", "rle", "area", "bbox",
                           "source"])
        s.add(gxe.ExpectColumnValuesToBeUnique(column="mask_id"), "mask_id is unique")
        _in_set(s, gxe, "target", LesionType, "LesionType")
        for column in ("height", "width", "area"):
            s.add(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=1), f"{column} > 0")
        for column in ("prior_probability", "region_overlap", "prior_mass", "refine_score"):
            s.add(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0, max_value=1),
                  f"{column} is a probability in [0, 1]")

    if "mask_geometry" in frames:
        s = suites["mask_geometry"] = _Suite("mask_geometry")
        s.add(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="image_area", column_B="area", or_equal=True),
              "mask area ≤ image area (height × width)")
        s.add(gxe.ExpectColumnPairValuesToBeEqual(column_A="area", column_B="rle_area"),
              "area equals the pixel count of the RLE")
        for column in ("bbox_x", "bbox_y"):
            s.add(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0), f"{column} ≥ 0 (bbox inside the image)")
        for column in ("bbox_w", "bbox_h"):
            s.add(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=1), f"{column} > 0")
        s.add(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="width", column_B="bbox_right", or_equal=True),
              "bbox x + w ≤ width (bbox inside the image)")
        s.add(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="height", column_B="bbox_bottom", or_equal=True),
              "bbox y + h ≤ height (bbox inside the image)")

    if "findings" in suites:
        s = suites["findings"]
        _not_null(s, gxe, ["finding_id", "report_id", "study_id", "section", "sent_idx", "sentence", "entity",
                           "presence", "certainty", "mention", "char_start", "char_end", "structurer"])
        s.add(gxe.ExpectColumnValuesToBeUnique(column="finding_id"), "finding_id is unique")
        _in_set(s, gxe, "entity", LesionType, "LesionType")
        _in_set(s, gxe, "presence", Presence, "Presence")
        _in_set(s, gxe, "certainty", Certainty, "Certainty")
        for column in ("sent_idx", "char_start"):
            s.add(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0), f"{column} ≥ 0")
        s.add(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="char_end", column_B="char_start"),
              "char_end > char_start (the mention is not empty)")

    if "discarded" in suites:
        s = suites["discarded"]
        _not_null(s, gxe, ["finding_id", "study_id", "target", "reason", "stage", "details"])
        _in_set(s, gxe, "reason", DiscardReason, "DiscardReason")
        _in_set(s, gxe, "stage", Stage, "Stage")
        _in_set(s, gxe, "target", LesionType, "LesionType")
        s.add(gxe.ExpectColumnValuesToBeJsonParseable(column="details"), "details is JSON")

    if "errors" in suites:
        s = suites["errors"]
        _not_null(s, gxe, ["stage", "key", "error_type", "message"])
        _in_set(s, gxe, "stage", Stage, "Stage")

    if "list_values" in frames:
        s = suites["list_values"] = _Suite("list_values")
        locations = _values(Location)
        for table_name, column in LIST_COLUMNS:
            name = f"{table_name}.{column}"
            s.add(gxe.ExpectColumnValuesToBeInSet(column="value", value_set=locations,
                                                  row_condition=Column("column") == name),
                  f"every entry of {name} is in the Location vocabulary")

    if "contract" in frames:
        s = suites["contract"] = _Suite("contract")
        s.add(gxe.ExpectColumnValuesToBeNull(column="problem"),
              "references between tables and the accounting invariant hold (pipeline.contract.check_run)")

    if "mask_outliers" in frames:
        s = suites["mask_outliers"] = _Suite("mask_outliers")
        s.add(gxe.ExpectColumnValuesToBeBetween(column="outlier_score", max_value=settings.outlier_score_threshold,
                                                severity="warning"),
              f"HDBSCAN outlier score of each mask within its lesion type < {settings.outlier_score_threshold}")
    return list(suites.values())


# ---------------------------------------------------------------- messages


def _short(values: list, limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def _message(suite: str, rule: str, result: dict, id_column: str | None) -> str:
    """Names the broken rule and the offending rows (by id) or values."""
    if result.get("exception"):
        return f"{rule}: could not be checked ({result['exception']})"
    details = result["result"]
    if suite == "contract":
        problems = details.get("partial_unexpected_list") or []
        return f"{details.get('unexpected_count', len(problems))} contract problems: {_short(problems, 8)}"
    if "unexpected_count" in details and details.get("unexpected_count"):
        values = sorted({str(v) for v in details.get("partial_unexpected_list") or []})
        ids = [next(iter(i.values())) if isinstance(i, dict) and len(i) == 1 else i.get(id_column, i)
               if isinstance(i, dict) else i for i in details.get("partial_unexpected_index_list") or []]
        where = f" ({id_column} {_short(ids, 3)})" if ids and id_column else ""
        shown = f": unexpected values {_short(values)}" if values and values != ["None"] else ""
        return f"{rule} — {details['unexpected_count']} rows break it{shown}{where}"
    if details.get("partial_missing_list"):
        return f"{rule} — missing: {_short(details['partial_missing_list'])}"
    observed = details.get("observed_value")
    if isinstance(observed, dict) and "values" in observed:
        observed = observed["values"]
    if "details" in details and isinstance(details["details"], dict) and "mismatched" in details["details"]:
        observed = f"{observed} (mismatched: {details['details']['mismatched']})"
    return f"{rule} — observed {observed}"


def _split_negative_ratio(message: str, result: dict) -> str:
    """Mean of is_positive → negatives per positive, the number the band is stated in."""
    observed = result["result"].get("observed_value")
    if observed is None or "negatives per positive" not in message:
        return message
    ratio = float("inf") if observed == 0 else (1 - observed) / observed
    return message.split(" — ")[0] + f" — observed {ratio:.2f} negatives per positive"


# ---------------------------------------------------------------- runner


def _ge_context(docs_dir: Path | None):
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites["local_site"] = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                               analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False),
                               data_docs_sites=sites)
    return gx, gx.get_context(project_config=config, mode="ephemeral")


def _outlier_frame(scores: list[OutlierScore]) -> pd.DataFrame:
    scored = [s for s in scores if s.score is not None]
    return pd.DataFrame({"mask_id": [s.mask_id for s in scored], "target": [s.target for s in scored],
                         "outlier_score": np.array([s.score for s in scored], np.float64)})


def _load_frames(run_dir: Path, settings: QualityConfig) -> tuple[dict[str, pd.DataFrame], list[str], list[OutlierScore]]:
    tables = {name: _read_as_written(run_dir, name) for name in TABLES}
    missing = [name for name, table in tables.items() if table is None]
    present = {name: table for name, table in tables.items() if table is not None}
    frames = {name: _frame(table) for name, table in present.items()}
    outliers: list[OutlierScore] = []
    masks = present.get("masks")
    if masks is not None and {"mask_id", "height", "width", "area", "bbox", "rle", "target"} <= set(masks.column_names):
        frames["mask_geometry"] = _mask_geometry(masks)
        rows = [r for r in masks.select(["mask_id", "target", "rle", "height", "width"]).to_pylist()
                if r["rle"] and r["height"] and r["width"]]
        outliers = flag_mask_outliers(rows, settings.outlier_min_masks, settings.outlier_min_cluster_size,
                                      settings.outlier_min_samples, settings.outlier_score_threshold,
                                      settings.outlier_max_masks_per_type)
        frames["mask_outliers"] = _outlier_frame(outliers)
    frames["list_values"] = _list_values(present)
    frames["contract"] = pd.DataFrame({"problem": pd.Series(check_run(run_dir), dtype=object)})
    return frames, missing, outliers


def validate_run(run_dir: Path, config=None) -> ValidationReport:
    """Run every suite on a run directory; write `quality/results.json`, raw GE results and Data Docs.

    `config`: a PipelineConfig or its QualityConfig; None reads the section from the config stored in
    the run's manifest (defaults when absent).
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    settings = quality_config(config, manifest)
    quality_dir = run_dir / QUALITY_DIR
    quality_dir.mkdir(parents=True, exist_ok=True)
    docs_dir = quality_dir / DATA_DOCS_DIR if settings.data_docs else None
    if (quality_dir / DATA_DOCS_DIR).is_dir():
        shutil.rmtree(quality_dir / DATA_DOCS_DIR)  # the folder shows the latest validation only

    frames, missing, outliers = _load_frames(run_dir, settings)
    outcomes = [ExpectationOutcome(name, "table_exists", f"{name} has part-*.parquet shards", False, "critical",
                                   f"{name}: no part-*.parquet shard under {run_dir / name}") for name in missing]
    if manifest is None:
        outcomes.append(ExpectationOutcome("manifest", "manifest_exists", "the run has a manifest.json", False,
                                           "critical", f"manifest.json is missing from {run_dir}"))

    _quiet_ge()
    gx, context = _ge_context(docs_dir)
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    source = context.data_sources.add_pandas("mimic_ils_run")
    ge_dir = quality_dir / GE_RESULTS_DIR
    ge_dir.mkdir(exist_ok=True)
    suite_names = list(missing) + (["manifest"] if manifest is None else [])
    for spec in build_suites(gxe, Column, frames, manifest, settings):
        suite_names.append(spec.name)
        batch = source.add_dataframe_asset(spec.name).add_batch_definition_whole_dataframe("whole run")
        # one store write per suite (adding expectations one by one rewrites the suite each time)
        suite = context.suites.add(gx.ExpectationSuite(name=f"mimic_ils.{spec.name}",
                                                       expectations=[e for e, _ in spec.items]))
        rule_by_id = {e.id: rule for e, (_, rule) in zip(suite.expectations, spec.items)}
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate {spec.name}", data=batch, suite=suite))
        id_column = ROW_ID.get(spec.name)
        result_format = {"result_format": "SUMMARY", "partial_unexpected_count": 20}
        if id_column and id_column in frames[spec.name].columns:
            result_format["unexpected_index_column_names"] = [id_column]
        result = definition.run(batch_parameters={"dataframe": frames[spec.name]}, result_format=result_format)
        payload = result.to_json_dict()
        (ge_dir / f"{spec.name}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
        for item in payload["results"]:
            config_dict = item["expectation_config"]
            rule = rule_by_id[config_dict["id"]]
            ok = bool(item["success"])
            flat = {"result": item.get("result") or {},
                    "exception": (item.get("exception_info") or {}).get("exception_message")
                    if (item.get("exception_info") or {}).get("raised_exception") else None}
            message = "" if ok else _split_negative_ratio(_message(spec.name, rule, flat, id_column), flat)
            outcomes.append(ExpectationOutcome(
                suite=spec.name, expectation=config_dict["type"], rule=rule, success=ok,
                severity=config_dict.get("severity") or "critical",
                message=f"{spec.name}: {message}" if message and not message.startswith(spec.name) else message,
                column=config_dict["kwargs"].get("column")))
    docs_index = None
    if docs_dir is not None:
        context.build_data_docs(site_names=["local_site"])
        docs_index = docs_dir / "index.html"
    report = ValidationReport(run_dir=run_dir, outcomes=outcomes, mask_outliers=outliers,
                              results_path=quality_dir / RESULTS_FILE, data_docs_index=docs_index,
                              seconds=time.perf_counter() - started, suites=list(dict.fromkeys(suite_names)))
    (quality_dir / OUTLIERS_FILE).write_text(json.dumps([asdict(o) for o in outliers], indent=1) + "\n")
    report.results_path.write_text(json.dumps(report.as_dict(), indent=1, default=str) + "\n")
    write_index(report, quality_dir / INDEX_FILE)
    return report


def _quiet_ge() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)


def _serve_gate(connection) -> None:
    """Child of `PrewarmedGate`: import the gate's libraries, then validate the one run it is sent."""
    _quiet_ge()
    for library in ("great_expectations", "hdbscan"):  # the slow imports, done while the pipeline runs
        importlib.import_module(library)
    try:
        run_dir, config = connection.recv()
    except EOFError:  # the run ended without asking for the gate
        return
    try:
        report = validate_run(run_dir, config)
    except Exception:  # the parent validates again in its own process, where the error surfaces with its traceback
        report = None
    connection.send(report)


class PrewarmedGate:
    """The quality gate in a child process started before the pipeline runs.

    Importing Great Expectations and HDBSCAN takes about 7 s of one core; in the child it overlaps the run (an
    in-process run leaves the second core idle) instead of following it. `validate` gives the same report as
    `validate_run`, which it falls back to when the child is gone. Spawned, not forked: the launcher holds
    gRPC threads."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe()
        self._process = context.Process(target=_serve_gate, args=(child_end,), name="mimic-ils quality gate",
                                        daemon=True)
        self._process.start()
        child_end.close()

    def validate(self, run_dir: Path, config=None) -> ValidationReport:
        try:
            self._connection.send((Path(run_dir), config))
            report = self._connection.recv()
        except (EOFError, OSError):
            report = None
        finally:
            self.close()
        return report if report is not None else validate_run(run_dir, config)

    def close(self) -> None:
        """End the child now: its report is in, or no longer wanted (waiting for it to exit costs seconds)."""
        self._connection.close()
        self._process.terminate()
        self._process.join()


def write_index(report: ValidationReport, path: Path) -> None:
    """A self-contained landing page: GE's own index lists results with CDN-loaded scripts, blank when offline."""
    import html

    def link(suite: str) -> str:
        if report.data_docs_index is None:
            return ""
        pages = sorted((report.data_docs_index.parent / "validations" / "mimic_ils" / suite).rglob("*.html"))
        return f"<a href='{pages[-1].relative_to(path.parent).as_posix()}'>Data Docs</a>" if pages else ""

    rows = []
    for suite in report.suites:
        mine = [o for o in report.outcomes if o.suite == suite]
        failed = sum(1 for o in mine if not o.success and o.severity == "critical")
        warned = sum(1 for o in mine if not o.success and o.severity != "critical")
        status = "FAIL" if failed else "WARN" if warned else "PASS"
        rows.append(f"<tr class='{status.lower()}'><td>{status}</td><td>{html.escape(suite)}</td>"
                    f"<td>{len(mine) - failed - warned}</td><td>{failed}</td><td>{warned}</td><td>{link(suite)}</td></tr>")
    problems = "".join(f"<li class='{'fail' if o.severity == 'critical' else 'warn'}'>{html.escape(o.message)}</li>"
                       for o in report.failures + report.warnings)
    flagged = [o for o in report.mask_outliers if o.flagged]
    outliers = "".join(f"<tr><td>{html.escape(o.mask_id)}</td><td>{html.escape(o.target)}</td><td>{o.score}</td></tr>"
                       for o in sorted(flagged, key=lambda o: -(o.score or 0)))
    verdict = "PASS" if report.success else f"FAIL: {len(report.failures)} expectations failed"
    path.write_text(f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>mimic-ils quality · {html.escape(report.run_dir.name)}</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}} .fail{{color:#b00}} .warn{{color:#a60}}
tr.pass td:first-child{{color:#070}}</style></head><body>
<h1>Quality of {html.escape(str(report.run_dir))}</h1><p><strong>{verdict}</strong> · {len(report.outcomes)} expectations ·
<a href="{RESULTS_FILE}">results.json</a></p>
<table><tr><th>status</th><th>suite</th><th>passed</th><th>failed</th><th>warned</th><th></th></tr>{''.join(rows)}</table>
<h2>Problems</h2>{f"<ul>{problems}</ul>" if problems else "<p>none</p>"}
<h2>Masks flagged for review (HDBSCAN outliers)</h2>
{f"<table><tr><th>mask_id</th><th>lesion type</th><th>outlier score</th></tr>{outliers}</table>" if outliers else "<p>none</p>"}
<p>{len([o for o in report.mask_outliers if o.score is not None])} of {len(report.mask_outliers)} masks scored
(lesion types with enough masks); details in <a href="{OUTLIERS_FILE}">{OUTLIERS_FILE}</a>.</p>
</body></html>
""")
