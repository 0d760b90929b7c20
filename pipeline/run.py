"""One pipeline run: index the corpus, run the DAG, then finish the run directory (manifest, checks)."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from anatomy_models.base import BACKEND_SETUP_ERRORS
from anatomy_models.base import create as create_backend
from pipeline.config import LoadedConfig
from pipeline.contract import check_run
from pipeline.corpus import index_mimic_cxr_jpg
from pipeline.dag import build_pipeline
from pipeline.errors import UserError
from pipeline.writers import read_table, shard_path, table_to_bytes, write_atomically
from schemas.tables import TABLES
from schemas.vocab import SCHEMA_VERSION
from transforms.statistics import dataset_statistics, plot_statistics

MANIFEST = "manifest.json"
STATISTICS_PNG = "statistics.png"


@dataclass
class RunSummary:
    out_dir: Path
    counts: dict[str, int]
    seconds: float
    n_studies: int
    problems: list[str]
    quality: object = None  # pipeline.quality.ValidationReport when the quality gate ran


def code_version() -> str:
    version = metadata.version("mimic-ils")
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except OSError:
        sha = ""
    return f"{version}+{sha}" if sha else version


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserError(f"output folder {out_dir} is not empty: choose another or pass --overwrite")
        for name in list(TABLES) + ["quality", MANIFEST, STATISTICS_PNG]:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def table_counts(out_dir: Path) -> dict[str, int]:
    """Row counts from the shards' footers; a table with no rows gets an empty shard so its schema is on disk."""
    counts = {}
    for name in TABLES:
        shards = sorted((out_dir / name).glob("part-*.parquet"))
        if not shards:
            (out_dir / name).mkdir(parents=True, exist_ok=True)
            write_atomically(shard_path(str(out_dir), name, 0), table_to_bytes(name, [], 1000, "zstd"))
            shards = sorted((out_dir / name).glob("part-*.parquet"))
        counts[name] = sum(pq.read_metadata(s).num_rows for s in shards)
    return counts


def preflight_backends(config) -> None:
    """Build each configured backend once (options validated, weights files found) without loading weights."""
    for kind in ("anatomy", "lesion_prior", "refiner"):
        section = getattr(config, kind)
        try:
            create_backend(kind, section.backend, **section.options)
        except BACKEND_SETUP_ERRORS as exc:
            raise UserError(f"{kind}: {exc}".replace("\n", " ")) from None


def run_pipeline(input_root: Path, out_dir: Path, loaded: LoadedConfig, beam_args: list[str] | None = None,
                 overwrite: bool = False) -> RunSummary:
    input_root, out_dir = Path(input_root).resolve(), Path(out_dir).resolve()
    config = loaded.config
    studies = index_mimic_cxr_jpg(input_root)
    preflight_backends(config)
    prepare_output(out_dir, overwrite)
    started = time.perf_counter()
    options = PipelineOptions(beam_args or [])
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, studies, str(input_root), str(out_dir), config)
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    counts = table_counts(out_dir)
    problems = check_run(out_dir) if config.output.check_contract else []
    statistics = dataset_statistics(read_table(str(out_dir), "pairs"))
    plot_statistics(statistics, out_dir / STATISTICS_PNG)
    manifest = {
        "run_id": f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{loaded.config_hash}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "schema_version": SCHEMA_VERSION,
        "config_name": config.name,
        "config_source": loaded.source,
        "config_hash": loaded.config_hash,
        "config": loaded.as_dict(),
        "inputs": {"root": str(input_root), "reader": config.corpus.reader, "studies": len(studies),
                   "images": sum(len(s.images) for s in studies)},
        "beam_args": beam_args or [],
        "counts": counts,
        "counters": dict(sorted(counters.items())),
        "timings": {"pipeline_seconds": round(seconds, 3),
                    "studies_per_second": round(len(studies) / seconds, 3) if seconds else None},
        "statistics": statistics,
        "contract_problems": problems,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    quality = None
    if config.quality.validate_after_run:
        from pipeline.quality import validate_run  # Great Expectations takes seconds to import: only when asked

        quality = validate_run(out_dir, config)
    return RunSummary(out_dir, counts, seconds, len(studies), problems, quality)
