"""The output contract of DESIGN.md §3, checked on a written run directory: schemas, vocabularies, references, accounting."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from schemas.tables import SCHEMA_METADATA_KEY, TABLES
from schemas.vocab import (
    SCHEMA_VERSION,
    DiscardReason,
    InstructionType,
    LesionType,
    Location,
    NegativeKind,
    Presence,
    StudyStatus,
)
from pipeline.writers import read_table


def _values(enum) -> set[str]:
    return {e.value for e in enum}


def _check_schemas(out_dir: Path) -> list[str]:
    problems = []
    for name, schema in TABLES.items():
        shards = sorted((out_dir / name).glob("part-*.parquet"))
        if not shards:
            problems.append(f"{name}: no part-*.parquet shard")
        for shard in shards:
            written = pq.read_schema(shard)
            if not written.equals(schema, check_metadata=False):
                problems.append(f"{name}: {shard.name} schema differs from schemas.tables.{name.upper()}")
            version = (written.metadata or {}).get(SCHEMA_METADATA_KEY, b"").decode()
            if version != SCHEMA_VERSION:
                problems.append(f"{name}: {shard.name} has schema version '{version}', expected {SCHEMA_VERSION}")
    return problems


def check_run(out_dir: Path) -> list[str]:
    """Every violated rule as one line; an empty list means the run honours the contract."""
    out_dir = Path(out_dir)
    problems = _check_schemas(out_dir)
    if problems:
        return problems
    t = {name: read_table(str(out_dir), name).to_pylist() for name in TABLES}
    targets, locations = _values(LesionType), _values(Location)

    def bad(table: str, column: str, allowed: set[str], rows: list[dict], is_list: bool = False) -> None:
        seen = {v for r in rows for v in (r[column] or [] if is_list else [r[column]]) if v is not None}
        for value in sorted(seen - allowed):
            problems.append(f"{table}.{column}: '{value}' is not in the vocabulary")

    for name, key in (("pairs", "pair_id"), ("masks", "mask_id"), ("findings", "finding_id"), ("studies", "study_id")):
        dupes = [k for k, n in Counter(r[key] for r in t[name]).items() if n > 1]
        if dupes:
            problems.append(f"{name}.{key}: {len(dupes)} duplicated values, e.g. {dupes[0]}")
    bad("pairs", "target", targets, t["pairs"])
    bad("pairs", "locations", locations, t["pairs"], is_list=True)
    bad("pairs", "instruction_type", _values(InstructionType), t["pairs"])
    bad("pairs", "negative_kind", _values(NegativeKind), t["pairs"])
    bad("masks", "target", targets, t["masks"])
    bad("findings", "entity", targets, t["findings"])
    bad("findings", "reported_locations", locations, t["findings"], is_list=True)
    bad("discarded", "reason", _values(DiscardReason), t["discarded"])
    bad("studies", "status", _values(StudyStatus), t["studies"])

    mask_ids = {r["mask_id"] for r in t["masks"]}
    for pair in t["pairs"]:
        if pair["is_positive"] != (pair["mask_id"] is not None) or pair["is_positive"] != (pair["negative_kind"] is None):
            problems.append(f"pairs: {pair['pair_id']} breaks 'mask_id and no negative_kind iff positive'")
        elif pair["mask_id"] is not None and pair["mask_id"] not in mask_ids:
            problems.append(f"pairs: {pair['pair_id']} references mask_id {pair['mask_id']} missing from masks")
    for mask in t["masks"]:
        x, y, w, h = mask["bbox"]
        if not 0 < mask["area"] <= mask["height"] * mask["width"]:
            problems.append(f"masks: {mask['mask_id']} area {mask['area']} outside (0, image area]")
        if x < 0 or y < 0 or x + w > mask["width"] or y + h > mask["height"]:
            problems.append(f"masks: {mask['mask_id']} bbox {mask['bbox']} outside the image")

    finding_ids = {r["finding_id"] for r in t["findings"]}
    used = {r["finding_id"] for r in t["pairs"] if r["is_positive"]}
    discarded = {r["finding_id"] for r in t["discarded"]}
    for row in t["discarded"]:
        if row["finding_id"] not in finding_ids:
            problems.append(f"discarded: finding {row['finding_id']} is not in findings")
    for f in t["findings"]:
        if f["presence"] == Presence.PRESENT.value and f["finding_id"] not in used | discarded:
            problems.append(f"findings: present finding {f['finding_id']} ({f['entity']}) is neither in a positive pair nor discarded")

    per_study = {name: Counter(r["study_id"] for r in t[name]) for name in ("findings", "discarded", "errors")}
    positives = Counter(r["study_id"] for r in t["pairs"] if r["is_positive"])
    negatives = Counter(r["study_id"] for r in t["pairs"] if not r["is_positive"])
    study_ids = {r["study_id"] for r in t["studies"]}
    for s in t["studies"]:
        sid = s["study_id"]
        expected = {"n_findings": per_study["findings"][sid], "n_discarded": per_study["discarded"][sid],
                    "n_errors": per_study["errors"][sid], "n_positive_pairs": positives[sid],
                    "n_negative_pairs": negatives[sid]}
        for column, value in expected.items():
            if s[column] != value:
                problems.append(f"studies: {sid} {column}={s[column]} but the tables hold {value}")
    for name in ("pairs", "findings", "discarded"):
        orphans = {r["study_id"] for r in t[name]} - study_ids
        if orphans:
            problems.append(f"{name}: rows of {len(orphans)} studies missing from studies, e.g. {sorted(orphans)[0]}")
    return problems
