"""One pipeline run: index the corpus, run the DAG, then finish the run directory (manifest, checks)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from anatomy_models.base import BACKEND_SETUP_ERRORS
from anatomy_models.base import create as create_backend
from pipeline.config import LoadedConfig
from pipeline.contract import check_run
from pipeline.corpus import CorpusIndex, index_corpus
from pipeline.dag import NAMESPACE, TIMING_NAMESPACE, build_pipeline
from pipeline.errors import UserError
from pipeline.writers import read_table, shard_path, shard_prefix, table_to_bytes, write_atomically
from schemas.tables import TABLES
from schemas.vocab import SCHEMA_VERSION
from transforms.statistics import dataset_statistics, plot_statistics

if TYPE_CHECKING:  # pandas and friends: imported only when the gate runs
    from pipeline.quality import PrewarmedGate

MANIFEST = "manifest.json"
STATISTICS_PNG = "statistics.png"
QUALITY_DIR = "quality"
# Bookkeeping of a run's parts: the plan (how many parts, which config and input) and one completion
# marker per part, written last, so that a part without its marker is known to be incomplete.
PARTS_DIR = "_parts"
PLAN_FILE = "plan.json"
RUN_LEVEL_OUTPUTS = (MANIFEST, STATISTICS_PNG, QUALITY_DIR)


@dataclass
class RunSummary:
    out_dir: Path
    counts: dict[str, int]  # rows per table of the whole run ({} until every part is complete)
    seconds: float  # pipeline time of the parts run by this call
    n_studies: int  # studies processed by this call
    problems: list[str]
    quality: object = None  # pipeline.quality.ValidationReport when the quality gate ran
    n_parts: int = 1
    parts_run: list[int] = field(default_factory=list)
    parts_skipped: list[int] = field(default_factory=list)  # complete already (--resume)
    parts_complete: list[int] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)  # Beam counters of the whole run, once complete
    stage_timings: dict[str, dict] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return len(self.parts_complete) == self.n_parts


def parse_partition(text: str) -> tuple[int, int]:
    """`i/n` -> (i, n), 0 <= i < n: part i of a run split in n parts by a stable hash of subject_id."""
    index, sep, count = text.partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()) or not 0 <= int(index) < int(count):
        raise UserError(f"--partition takes I/N with 0 <= I < N (e.g. 0/4 ... 3/4), got '{text}'")
    return int(index), int(count)


def code_version() -> str:
    version = metadata.version("mimic-ils")
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except OSError:
        sha = ""
    return f"{version}+{sha}" if sha else version


def _marker_path(out_dir: Path, part: int, n_parts: int) -> Path:
    return out_dir / PARTS_DIR / f"part-{part:03d}-of-{n_parts:03d}.json"


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _clear_all(out_dir: Path) -> None:
    for name in list(TABLES) + list(RUN_LEVEL_OUTPUTS) + [PARTS_DIR]:
        _remove(out_dir / name)


def _part_files(out_dir: Path, part: int, n_parts: int) -> list[Path]:
    """This part's shards (and temp files of a killed write); for an unsplit run, every shard."""
    prefix = shard_prefix(part, n_parts)
    return [f for name in TABLES for f in sorted((out_dir / name).glob(f"{prefix}*"))]


def _clear_part(out_dir: Path, part: int, n_parts: int) -> None:
    for path in _part_files(out_dir, part, n_parts) + [_marker_path(out_dir, part, n_parts)]:
        _remove(path)


def prepare_output(out_dir: Path, plan: dict, parts: list[int], overwrite: bool = False, resume: bool = False) -> list[int]:
    """Make `out_dir` ready for `parts` of the run described by `plan`; return the parts left to run.

    A directory holding another run (other plan) is refused unless `overwrite` (then cleared). Within the same
    run, a part that already has output is refused unless `overwrite` (re-run it) or `resume` (skip it when its
    completion marker exists, re-run it from scratch when not). Parts with no output yet run without a flag, so
    the parts of one run can be started one after another, or side by side, into the same directory."""
    plan_path = out_dir / PARTS_DIR / PLAN_FILE
    n_parts = plan["n_parts"]
    if out_dir.exists() and any(out_dir.iterdir()):
        existing = json.loads(plan_path.read_text()) if plan_path.is_file() else None
        if existing != plan:
            if not overwrite:
                what = ("a run with another plan (parts, config or input): " + json.dumps(existing)) if existing \
                    else "files that are not a run of this plan"
                raise UserError(f"output folder {out_dir} is not empty (it holds {what}): choose another or pass "
                                f"--overwrite to replace it")
            _clear_all(out_dir)
    todo = []
    for part in parts:
        complete = _marker_path(out_dir, part, n_parts).is_file()
        started = bool(_part_files(out_dir, part, n_parts))
        if (complete or started) and not (overwrite or resume):
            name = "this run" if n_parts == 1 else f"part {part}/{n_parts}"
            raise UserError(f"output folder {out_dir} is not empty ({name} has output already): choose another, "
                            f"pass --resume to skip complete parts, or --overwrite to replace it")
        if complete and resume and not overwrite:
            continue
        _clear_part(out_dir, part, n_parts)
        todo.append(part)
    if todo:
        for name in RUN_LEVEL_OUTPUTS:  # they describe the whole run: stale once any part changes
            _remove(out_dir / name)
    (out_dir / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    write_atomically(str(plan_path), (json.dumps(plan, indent=2) + "\n").encode())
    return todo


def table_counts(out_dir: Path) -> dict[str, int]:
    """Row counts from the shards' footers."""
    return {name: sum(pq.read_metadata(s).num_rows for s in sorted((out_dir / name).glob("part-*.parquet")))
            for name in TABLES}


def _write_empty_shards(out_dir: Path, prefix: str, config) -> None:
    """A table this part wrote no rows to gets one empty shard, so that its schema is on disk."""
    for name in TABLES:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        if not any((out_dir / name).glob(f"{prefix}*.parquet")):
            write_atomically(shard_path(str(out_dir), name, 0, prefix),
                             table_to_bytes(name, [], config.output.row_group_rows, config.output.compression))


def preflight_backends(config) -> None:
    """Build each configured backend once (options validated, weights files found) without loading weights."""
    from transforms.llm_structurer import check_structuring

    try:
        check_structuring(config.structuring)
    except (ValueError, OSError) as exc:
        raise UserError(f"structuring: {exc}".replace("\n", " ")) from None
    for kind in ("anatomy", "lesion_prior", "refiner"):
        section = getattr(config, kind)
        try:
            create_backend(kind, section.backend, **section.options)
        except BACKEND_SETUP_ERRORS as exc:
            raise UserError(f"{kind}: {exc}".replace("\n", " ")) from None


def _in_process(options: PipelineOptions) -> bool:
    direct = options.get_all_options()
    return direct.get("runner") in (None, "DirectRunner", "direct") and direct.get("direct_running_mode") in (
        None, "in_memory") and (direct.get("direct_num_workers") or 1) == 1


def _metrics(result) -> tuple[dict[str, int], dict[str, dict]]:
    """Our counters, and our stage distributions as {stage: {sum_ms, count, max_ms}}."""
    query = result.metrics().query()
    counters, timings = {}, {}
    for c in query["counters"]:
        if c.key.metric.namespace == NAMESPACE:
            counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed
    for d in query["distributions"]:
        if d.key.metric.namespace == TIMING_NAMESPACE and d.committed is not None and d.committed.count:
            timings[d.key.metric.name] = {"sum_ms": d.committed.sum, "count": d.committed.count,
                                          "max_ms": d.committed.max}
    return counters, timings


def _run_part(corpus: CorpusIndex, input_root: Path, out_dir: Path, config, beam_args: list[str], part: int,
              n_parts: int) -> dict:
    """Run one part and write its completion marker last; return the marker's content."""
    options = PipelineOptions(beam_args)
    prefix = shard_prefix(part, n_parts)
    started = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, corpus, str(corpus.root or input_root), str(out_dir), config, prefix=prefix,
                   progress=_in_process(options) and sys.stderr.isatty())
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    _write_empty_shards(out_dir, prefix, config)
    counters, timings = _metrics(result)
    marker = {"part": part, "n_parts": n_parts, "studies": len(corpus.studies),
              "unlisted_images": len(corpus.unlisted_images), "seconds": round(seconds, 3),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "beam_args": beam_args, "counters": dict(sorted(counters.items())), "stage_ms": timings}
    write_atomically(str(_marker_path(out_dir, part, n_parts)), (json.dumps(marker, indent=2) + "\n").encode())
    return marker


def _stage_timings(markers: list[dict]) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for marker in markers:
        for stage, t in marker["stage_ms"].items():
            m = merged.setdefault(stage, {"sum_ms": 0, "count": 0, "max_ms": 0})
            m["sum_ms"] += t["sum_ms"]
            m["count"] += t["count"]
            m["max_ms"] = max(m["max_ms"], t["max_ms"])
    return {stage: {"seconds": round(m["sum_ms"] / 1000, 3), "elements": m["count"],
                    "ms_per_element": round(m["sum_ms"] / m["count"], 2), "max_ms": m["max_ms"]}
            for stage, m in sorted(merged.items())}


def _finish_run(out_dir: Path, input_root: Path, loaded: LoadedConfig, corpus: CorpusIndex, plan: dict,
                beam_args: list[str]) -> dict:
    """Once every part is complete: counts, contract check, statistics, manifest (then the caller's quality gate)."""
    config = loaded.config
    markers = [json.loads(_marker_path(out_dir, i, plan["n_parts"]).read_text()) for i in range(plan["n_parts"])]
    counters: dict[str, int] = {}
    for marker in markers:
        for name, value in marker["counters"].items():
            counters[name] = counters.get(name, 0) + value
    seconds = sum(m["seconds"] for m in markers)
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
        # root: what image and report paths are relative to; input: what the user named (a manifest file, ...)
        "inputs": {"root": str(corpus.root or input_root), "input": str(input_root), "reader": config.corpus.reader,
                   "studies": len(corpus.studies),
                   "images": sum(len(s.images) for s in corpus.studies),
                   "unlisted_images": len(corpus.unlisted_images)},
        "beam_args": beam_args,
        "parts": {"n_parts": plan["n_parts"], "partition_key": "sha256(subject_id) mod n_parts",
                  "parts": [{k: m[k] for k in ("part", "studies", "unlisted_images", "seconds", "finished", "beam_args")}
                            for m in markers]},
        "counts": counts,
        "counters": dict(sorted(counters.items())),
        "timings": {"pipeline_seconds": round(seconds, 3),
                    "studies_per_second": round(len(corpus.studies) / seconds, 3) if seconds else None,
                    "stages": _stage_timings(markers)},
        "statistics": statistics,
        "contract_problems": problems,
    }
    write_atomically(str(out_dir / MANIFEST), (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())
    return manifest


def run_pipeline(input_root: Path, out_dir: Path, loaded: LoadedConfig, beam_args: list[str] | None = None,
                 overwrite: bool = False, resume: bool = False, partition: tuple[int, int] | None = None) -> RunSummary:
    """Run the pipeline, or one part of it (`partition=(i, n)`); finish the run directory when every part is in.

    Without `partition` the parts of the directory's plan are run in turn (one part for a fresh directory)."""
    input_root, out_dir = Path(input_root).resolve(), Path(out_dir).resolve()
    config = loaded.config
    beam_args = [a for a in beam_args or [] if a != "--"]  # Beam's parser would drop every option after a bare --
    corpus = index_corpus(input_root, config.corpus)
    preflight_backends(config)
    plan_path = out_dir / PARTS_DIR / PLAN_FILE
    if partition is not None:
        n_parts, parts = partition[1], [partition[0]]
    else:
        previous = json.loads(plan_path.read_text()) if resume and plan_path.is_file() else {}
        n_parts = previous.get("n_parts", 1)
        parts = list(range(n_parts))
    plan = {"n_parts": n_parts, "config_hash": loaded.config_hash, "input_root": str(input_root)}
    todo = prepare_output(out_dir, plan, parts, overwrite=overwrite, resume=resume)
    gate = None
    if config.quality.validate_after_run and todo and all(
            _marker_path(out_dir, i, n_parts).is_file() for i in range(n_parts) if i not in todo):
        from pipeline.quality import PrewarmedGate  # this call finishes the run: import the gate's libraries meanwhile

        gate = PrewarmedGate()
    try:
        return _run_parts(corpus, input_root, out_dir, loaded, beam_args, plan, parts, todo, gate)
    finally:
        if gate is not None:
            gate.close()


def _report_manifest(summary: RunSummary, manifest: dict) -> None:
    summary.counts, summary.problems = manifest["counts"], manifest["contract_problems"]
    summary.counters, summary.stage_timings = manifest["counters"], manifest["timings"]["stages"]


def _run_parts(corpus: CorpusIndex, input_root: Path, out_dir: Path, loaded: LoadedConfig, beam_args: list[str],
               plan: dict, parts: list[int], todo: list[int], gate: PrewarmedGate | None) -> RunSummary:
    """Run the `todo` parts, then finish the run when every part is in (validated by `gate` when there is one)."""
    config, n_parts = loaded.config, plan["n_parts"]
    seconds, n_studies = 0.0, 0
    for part in todo:
        part_corpus = corpus.part(part, n_parts) if n_parts > 1 else corpus
        marker = _run_part(part_corpus, input_root, out_dir, config, beam_args, part, n_parts)
        seconds += marker["seconds"]
        n_studies += marker["studies"]
    complete = [i for i in range(n_parts) if _marker_path(out_dir, i, n_parts).is_file()]
    summary = RunSummary(out_dir, {}, seconds, n_studies, [], n_parts=n_parts, parts_run=todo,
                         parts_skipped=[p for p in parts if p not in todo], parts_complete=complete)
    if not summary.finished or (not todo and (out_dir / MANIFEST).is_file()):
        if summary.finished:  # everything was complete and finished already: report what is on disk
            _report_manifest(summary, json.loads((out_dir / MANIFEST).read_text()))
        return summary
    _report_manifest(summary, _finish_run(out_dir, input_root, loaded, corpus, plan, beam_args))
    if config.quality.validate_after_run:
        if gate is not None:
            summary.quality = gate.validate(out_dir, config)
        else:
            from pipeline.quality import validate_run  # Great Expectations takes seconds to import: only when asked

            summary.quality = validate_run(out_dir, config)
    return summary
