"""The Beam DAG (DESIGN.md §1): thin DoFns around the pure functions of `transforms/` and `anatomy_models/`."""
from __future__ import annotations

import math
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from anatomy_models.base import load_backend
from schemas.config import PipelineConfig, StructuringConfig
from schemas.vocab import Certainty, Presence, Stage
from transforms.grounding import ImageToGround, empty_locations, ground_images
from transforms.image_results import ImageResult, encode_groundings
from transforms.images import MAX_IMAGE_PIXELS, decode_for_models
from transforms.pairs import build_study_outputs
from transforms.records import ErrorRecord, Finding, ImageRef, ReportText, Study
from transforms.llm_structurer import build_structurer
from pipeline.corpus import CorpusIndex, report_path
from pipeline.writers import shard_of, write_shard

ERRORS = "errors"
FINDINGS = "findings"
NAMESPACE = "mimic_ils"  # counters: studies_read, findings, images_grounded, pairs_*, discarded.<reason>, ...
TIMING_NAMESPACE = "mimic_ils_stage_ms"  # distributions: milliseconds per element, one per stage


@contextmanager
def timed(stage: str, n_elements: int = 1):
    """Adds the block's wall time to the stage's distribution, split evenly over the elements it handled."""
    started = time.perf_counter()
    yield
    if n_elements:
        per_element = round((time.perf_counter() - started) * 1000 / n_elements)
        timing = Metrics.distribution(TIMING_NAMESPACE, stage)
        for _ in range(n_elements):
            timing.update(per_element)


def error_record(stage: Stage, key: str, study_id: str | None, input_path: str | None, exc: BaseException) -> ErrorRecord:
    return ErrorRecord(stage=stage.value, key=key, study_id=study_id, input_path=input_path,
                       error_type=type(exc).__name__, message=str(exc) or traceback.format_exception_only(exc)[-1].strip())


@dataclass
class ImageTask:
    study_id: str
    image: ImageRef
    findings: list[Finding]  # the study's present, definite findings: what this image should ground
    suspected: list[Finding] = field(default_factory=list)  # its present, uncertain ones: context for grounding
    pixels: np.ndarray | None = None
    source_size: tuple[int, int] = (0, 0)
    anatomy: object = None
    prior: object = None
    result: ImageResult | None = field(default=None)


class ReadReports(beam.DoFn):
    """Study -> (study, report text or None); missing or unreadable reports go to the errors output."""

    def __init__(self, root: str):
        self._root = root
        self._read = Metrics.counter(NAMESPACE, "studies_read")

    def process(self, study: Study):
        self._read.inc()
        try:
            with timed(Stage.READ.value):
                if study.report_path is None and study.report_text is None:
                    raise FileNotFoundError("the corpus has no report for this study (for MIMIC-CXR: "
                                            "files/pXX/pSUBJECT/sSTUDY.txt)")
                text = study.report_text if study.report_text is not None else (
                    Path(self._root) / study.report_path).read_bytes().decode("utf-8")
            if not text.strip():
                raise ValueError("report file is empty")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            path = study.report_path or report_path(study.subject_id, study.study_id)  # where it should be
            yield beam.pvalue.TaggedOutput(ERRORS, error_record(Stage.READ, study.report_id or study.study_id,
                                                                study.study_id, path, exc))
            yield study, None
            return
        yield study, text


class StructureReports(beam.DoFn):
    """Batches of (study, text) -> (study, findings), the structurer loaded once per worker."""

    def __init__(self, structuring: StructuringConfig, handle: shared.Shared):
        self._structuring, self._handle = structuring, handle
        self._findings = Metrics.counter(NAMESPACE, "findings")

    def setup(self):
        # the backend (rules, or a transformers model with the rules behind it) comes from the config
        self._structurer = self._handle.acquire(lambda: build_structurer(self._structuring),
                                                tag=f"structurer:{self._structuring.model_dump_json()}")

    def process(self, batch):
        readable = [(s, t) for s, t in batch if t is not None]
        try:
            with timed(Stage.STRUCTURE.value, len(readable)):
                results, fallbacks = self._structurer.structure_with_fallbacks(
                    [ReportText(report_id=s.report_id or s.study_id, study_id=s.study_id, text=t) for s, t in readable])
        except Exception:  # one bad report must not sink the batch: retry one by one
            results, fallbacks = [], {}
            for study, text in readable:
                try:
                    found, fell_back = self._structurer.structure_with_fallbacks(
                        [ReportText(study.report_id or study.study_id, study.study_id, text)])
                    fallbacks.update({len(results): exc for exc in fell_back.values()})
                    results += found
                except Exception as exc:
                    yield beam.pvalue.TaggedOutput(ERRORS, error_record(Stage.STRUCTURE, study.report_id or study.study_id,
                                                                        study.study_id, study.report_path, exc))
                    results.append(None)
        for index, exc in fallbacks.items():  # the model's answer was unusable: the rules' findings stand
            study = readable[index][0]
            yield beam.pvalue.TaggedOutput(ERRORS, error_record(Stage.STRUCTURE, study.report_id or study.study_id,
                                                                study.study_id, study.report_path, exc))
        by_study = {s.study_id: r for (s, _), r in zip(readable, results)}
        for study, _ in batch:
            findings = by_study.get(study.study_id) or []
            self._findings.inc(len(findings))
            for finding in findings:
                yield beam.pvalue.TaggedOutput(FINDINGS, finding)
            yield study, findings


class ImageTasks(beam.DoFn):
    """One task per frontal image; other views are only checked to exist (a missing file is an error row)."""

    def __init__(self, root: str, frontal_views: list[str]):
        self._root, self._frontal_views = root, frontal_views

    def process(self, item):
        study, findings = item
        present = [f for f in findings if f.presence == Presence.PRESENT.value]
        groundable = [f for f in present if f.certainty == Certainty.DEFINITE.value]
        suspected = [f for f in present if f.certainty == Certainty.UNCERTAIN.value]
        for image in study.images:
            if image.view_position in self._frontal_views:
                yield ImageTask(study_id=study.study_id, image=image, findings=groundable, suspected=suspected)
            elif not (Path(self._root) / image.path).is_file():
                missing = FileNotFoundError(f"image file listed in the metadata is missing: {image.path}")
                yield beam.pvalue.TaggedOutput(ERRORS, error_record(Stage.READ, image.dicom_id, study.study_id,
                                                                    image.path, missing))


class _BackendStage(beam.DoFn):
    """Holds one backend per worker process (shared across threads), built from its config section."""

    kind: str
    stage: Stage

    def __init__(self, backend: str, options: dict, handle: shared.Shared):
        self._backend, self._options, self._handle = backend, options, handle

    def setup(self):
        def build():
            return load_backend(self.kind, self._backend, **self._options)

        self._model = self._handle.acquire(build, tag=f"{self.kind}:{self._backend}:{sorted(self._options.items())}")

    def _fail(self, task: ImageTask, exc: BaseException):
        task.result = ImageResult(task.study_id, task.image.dicom_id, task.image.path,
                                  error=error_record(self.stage, task.image.dicom_id, task.study_id, task.image.path, exc))
        return task


class DecodeImages(beam.DoFn):
    def __init__(self, root: str, work_size: int, max_pixels: int):
        self._root, self._work_size, self._max_pixels = root, work_size, max_pixels

    def process(self, task: ImageTask):
        try:
            with timed(Stage.DECODE.value):
                task.pixels, task.source_size = decode_for_models(Path(self._root) / task.image.path, self._work_size,
                                                                  self._max_pixels)
        except Exception as exc:
            task.result = ImageResult(task.study_id, task.image.dicom_id, task.image.path,
                                      error=error_record(Stage.DECODE, task.image.dicom_id, task.study_id, task.image.path, exc))
        yield task


def _pending(batch: list[ImageTask]) -> list[ImageTask]:
    return [t for t in batch if t.result is None]


class SegmentAnatomy(_BackendStage):
    kind, stage = "anatomy", Stage.ANATOMY

    def process(self, batch: list[ImageTask]):
        todo = _pending(batch)
        try:
            with timed(Stage.ANATOMY.value, len(todo)):
                anatomies = self._model.segment([t.pixels for t in todo]) if todo else []
            for task, anatomy in zip(todo, anatomies):
                task.anatomy = anatomy
        except Exception as exc:
            for task in todo:
                self._fail(task, exc)
        yield batch


class PredictLesionPrior(_BackendStage):
    kind, stage = "lesion_prior", Stage.LESION_PRIOR

    def process(self, batch: list[ImageTask]):
        todo = _pending(batch)
        try:
            with timed(Stage.LESION_PRIOR.value, len(todo)):
                priors = self._model.predict([t.pixels for t in todo], [t.anatomy for t in todo]) if todo else []
            for task, prior in zip(todo, priors):
                task.prior = prior
        except Exception as exc:
            for task in todo:
                self._fail(task, exc)
        yield batch


class GroundAndVerify(_BackendStage):
    """Candidates, c1–c4, refinement (a batch of images at once: SAM encodes them together, each once), fusion,
    verification, source-size encoding. Yields (study_id, result) per image."""

    kind, stage = "refiner", Stage.REFINE

    def __init__(self, backend: str, options: dict, handle: shared.Shared, config: PipelineConfig):
        super().__init__(backend, options, handle)
        self._config = config
        self._unions = [[loc.value for loc in union] for union in config.pairs.location_unions]
        self._images = Metrics.counter(NAMESPACE, "images_grounded")

    def _ground(self, tasks: list[ImageTask]) -> list[list]:
        items = [ImageToGround(t.findings, t.anatomy, t.prior, t.pixels, t.image.view_position, t.suspected) for t in tasks]
        with timed(Stage.REFINE.value, len(tasks)):  # candidates, c1-c4, refinement, verification
            return ground_images(items, self._model, self._config.grounding)

    def process(self, batch: list[ImageTask]):
        todo = _pending(batch)
        try:
            grounded = self._ground(todo) if todo else []
        except Exception:  # one bad image must not sink the batch: ground one by one, each failure its own error
            grounded = []
            for task in todo:
                try:
                    grounded += self._ground([task])
                except Exception as exc:
                    self._fail(task, exc)
                    grounded.append(None)
        for task, groundings in zip(todo, grounded):
            if groundings is not None:
                self._finish(task, groundings)
        for task in batch:
            yield task.study_id, task.result

    def _finish(self, task: ImageTask, groundings: list) -> None:
        try:
            empty = empty_locations(task.prior, task.anatomy, self._config.grounding)
            height, width = task.source_size
            with timed("encode"):  # masks back to source resolution, as RLE
                encoded = encode_groundings(groundings, task.anatomy, height, width, self._unions)
            task.result = ImageResult(task.study_id, task.image.dicom_id, task.image.path, height, width,
                                      findings=encoded, empty_locations=empty)
            self._images.inc()
        except Exception as exc:
            self._fail(task, exc)


class _Progress:
    """`studies done/total` on stderr, at most once a second: for in-process local runs on a terminal."""

    done = 0
    last = 0.0

    @classmethod
    def advance(cls, total: int) -> None:
        cls.done += 1
        now = time.monotonic()
        if now - cls.last >= 1.0 or cls.done >= total:
            cls.last = now
            end = "\n" if cls.done >= total else ""
            print(f"\rstudies done: {cls.done}/{total}", end=end, file=sys.stderr, flush=True)


class BuildStudyOutputs(beam.DoFn):
    def __init__(self, config: PipelineConfig, progress_total: int | None = None):
        self._config, self._progress_total = config, progress_total
        self._pairs = {True: Metrics.counter(NAMESPACE, "pairs_positive"),
                       False: Metrics.counter(NAMESPACE, "pairs_negative")}

    def setup(self):
        _Progress.done = 0

    def process(self, item):
        _, grouped = item
        # errors of inputs that belong to no study (e.g. an image without metadata) are written as they are
        for study in grouped["study"]:
            findings = grouped["findings"][0] if grouped["findings"] else []
            n_frontal = sum(1 for i in study.images if i.view_position in self._config.corpus.frontal_views)
            with timed(Stage.PAIRS.value):
                out = build_study_outputs(study, findings, list(grouped["images"]), list(grouped["errors"]), n_frontal,
                                          self._config.pairs)
            for row in out.pairs:
                self._pairs[row["is_positive"]].inc()
            for row in out.discarded:
                Metrics.counter(NAMESPACE, f"discarded.{row['reason']}").inc()
            Metrics.counter(NAMESPACE, f"studies.{out.study_row['status']}").inc()
            for table, rows in (("pairs", out.pairs), ("masks", out.masks), ("discarded", out.discarded),
                                ("studies", [out.study_row])):
                for row in rows:
                    yield beam.pvalue.TaggedOutput(table, row)
            if self._progress_total:
                _Progress.advance(self._progress_total)


def error_row(error: ErrorRecord) -> dict:
    Metrics.counter(NAMESPACE, f"errors.{error.stage}").inc()
    return error.as_row()


class WriteTable(beam.PTransform):
    """Rows -> `OUT/<table>/<prefix>NNNNN.parquet`, shard chosen by a stable hash of study_id, rows sorted."""

    def __init__(self, table: str, out_dir: str, n_shards: int, row_group_rows: int, compression: str,
                 prefix: str = "part-"):
        super().__init__(label=f"Write {table}")
        self._table, self._out, self._n = table, out_dir, n_shards
        self._row_group_rows, self._compression, self._prefix = row_group_rows, compression, prefix

    def expand(self, rows):
        table, out, n, rg, comp, prefix = (self._table, self._out, self._n, self._row_group_rows, self._compression,
                                           self._prefix)
        return (rows
                | "Shard" >> beam.Map(lambda r: (shard_of(r.get("study_id"), n), r))
                | "Group" >> beam.GroupByKey()
                | "Write" >> beam.MapTuple(lambda shard, group: write_shard(out, table, shard, list(group), rg, comp,
                                                                            prefix)))


def build_pipeline(p: beam.Pipeline, corpus: CorpusIndex | list[Study], root: str, out_dir: str, config: PipelineConfig,
                   prefix: str = "part-", max_pixels: int = MAX_IMAGE_PIXELS, progress: bool = False) -> None:
    """The whole DAG on `p`; `prefix` names this run's (or this part's) shard files."""
    if not isinstance(corpus, CorpusIndex):
        corpus = CorpusIndex(list(corpus))
    studies = corpus.studies
    n_shards = max(1, math.ceil(len(studies) / config.output.studies_per_shard))
    batch = {"min_batch_size": 1, "max_batch_size": config.vision.batch_size}

    read = (p | "Studies" >> beam.Create(studies, reshuffle=False)
              | "Spread" >> beam.Reshuffle()
              | "Read reports" >> beam.ParDo(ReadReports(root)).with_outputs(ERRORS, main="reports"))
    structured = (read.reports
                  | "Batch reports" >> beam.BatchElements(min_batch_size=1, max_batch_size=256)
                  | "Structure" >> beam.ParDo(StructureReports(config.structuring, shared.Shared()))
                  .with_outputs(ERRORS, FINDINGS, main="structured"))
    tasks = (structured.structured
             | "Image tasks" >> beam.ParDo(ImageTasks(root, config.corpus.frontal_views)).with_outputs(ERRORS, main="tasks"))
    images = (tasks.tasks
              | "Decode" >> beam.ParDo(DecodeImages(root, config.vision.work_size, max_pixels))
              | "Batch images" >> beam.BatchElements(**batch)
              | "Anatomy" >> beam.ParDo(SegmentAnatomy(config.anatomy.backend, config.anatomy.options, shared.Shared()))
              | "Lesion prior" >> beam.ParDo(PredictLesionPrior(config.lesion_prior.backend, config.lesion_prior.options,
                                                                shared.Shared()))
              | "Ground" >> beam.ParDo(GroundAndVerify(config.refiner.backend, config.refiner.options, shared.Shared(),
                                                       config)))
    image_errors = (images | "Image errors" >> beam.FlatMap(lambda kv: [kv[1].error] if kv[1].error else []))
    unlisted = p | "Unlisted images" >> beam.Create([u.error() for u in corpus.unlisted_images], reshuffle=False)
    errors = ((read[ERRORS], structured[ERRORS], tasks[ERRORS], image_errors, unlisted) | "All errors" >> beam.Flatten())
    outputs = ({
        "study": read.reports | "Key studies" >> beam.Map(lambda st: (st[0].study_id, st[0])),
        "findings": structured.structured | "Key findings" >> beam.Map(lambda sf: (sf[0].study_id, sf[1])),
        "images": images,
        "errors": errors | "Key errors" >> beam.Map(lambda e: (e.study_id, e)),
    } | "Join per study" >> beam.CoGroupByKey()
      | "Pairs" >> beam.ParDo(BuildStudyOutputs(config, len(studies) if progress else None))
      .with_outputs("pairs", "masks", "discarded", "studies"))

    tables = {
        "studies": outputs.studies, "pairs": outputs.pairs, "masks": outputs.masks, "discarded": outputs.discarded,
        "findings": structured[FINDINGS] | "Finding rows" >> beam.Map(Finding.as_row),
        "errors": errors | "Error rows" >> beam.Map(error_row),
    }
    for name, rows in tables.items():
        _ = rows | WriteTable(name, out_dir, n_shards, config.output.row_group_rows, config.output.compression, prefix)
