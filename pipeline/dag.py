"""The Beam DAG (DESIGN.md §1): thin DoFns around the pure functions of `transforms/` and `anatomy_models/`."""
from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from anatomy_models.base import create as create_backend
from schemas.config import PipelineConfig
from schemas.vocab import Stage
from transforms.grounding import empty_locations, ground_findings
from transforms.image_results import ImageResult, encode_grounding
from transforms.images import decode_for_models
from transforms.pairs import build_study_outputs
from transforms.records import ErrorRecord, Finding, ImageRef, Study
from transforms.structuring import ReportText, RuleStructurer, load_vocabulary
from pipeline.writers import shard_of, write_shard

ERRORS = "errors"
FINDINGS = "findings"


def error_record(stage: Stage, key: str, study_id: str | None, input_path: str | None, exc: BaseException) -> ErrorRecord:
    return ErrorRecord(stage=stage.value, key=key, study_id=study_id, input_path=input_path,
                       error_type=type(exc).__name__, message=str(exc) or traceback.format_exception_only(exc)[-1].strip())


@dataclass
class ImageTask:
    study_id: str
    image: ImageRef
    findings: list[Finding]  # the study's present, definite findings: what this image should ground
    pixels: np.ndarray | None = None
    source_size: tuple[int, int] = (0, 0)
    anatomy: object = None
    prior: object = None
    result: ImageResult | None = field(default=None)


class ReadReports(beam.DoFn):
    """Study -> (study, report text or None); unreadable reports go to the errors output."""

    def __init__(self, root: str):
        self._root = root
        self._read = Metrics.counter("mimic_ils", "studies_read")

    def process(self, study: Study):
        self._read.inc()
        if study.report_path is None:
            yield study, None
            return
        path = Path(self._root) / study.report_path
        try:
            text = path.read_bytes().decode("utf-8")
            if not text.strip():
                raise ValueError("report file is empty")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            yield beam.pvalue.TaggedOutput(ERRORS, error_record(Stage.READ, study.report_id or study.study_id,
                                                                study.study_id, study.report_path, exc))
            yield study, None
            return
        yield study, text


class StructureReports(beam.DoFn):
    """Batches of (study, text) -> (study, findings), the structurer loaded once per worker."""

    def __init__(self, vocabulary: str, handle: shared.Shared):
        self._vocabulary, self._handle = vocabulary, handle
        self._findings = Metrics.counter("mimic_ils", "findings")

    def setup(self):
        self._structurer = self._handle.acquire(lambda: RuleStructurer(load_vocabulary(self._vocabulary)),
                                                tag=f"structurer:{self._vocabulary}")

    def process(self, batch):
        readable = [(s, t) for s, t in batch if t is not None]
        try:
            results = self._structurer.structure(
                [ReportText(report_id=s.report_id or s.study_id, study_id=s.study_id, text=t) for s, t in readable])
        except Exception:  # one bad report must not sink the batch: retry one by one
            results = []
            for study, text in readable:
                try:
                    results += self._structurer.structure([ReportText(study.report_id or study.study_id, study.study_id, text)])
                except Exception as exc:
                    yield beam.pvalue.TaggedOutput(ERRORS, error_record(Stage.STRUCTURE, study.report_id or study.study_id,
                                                                        study.study_id, study.report_path, exc))
                    results.append(None)
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
        groundable = [f for f in findings if f.presence == "present" and f.certainty == "definite"]
        for image in study.images:
            if image.view_position in self._frontal_views:
                yield ImageTask(study_id=study.study_id, image=image, findings=groundable)
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
            model = create_backend(self.kind, self._backend, **self._options)
            model.load()
            return model

        self._model = self._handle.acquire(build, tag=f"{self.kind}:{self._backend}:{sorted(self._options.items())}")

    def _fail(self, task: ImageTask, exc: BaseException):
        task.result = ImageResult(task.study_id, task.image.dicom_id, task.image.path,
                                  error=error_record(self.stage, task.image.dicom_id, task.study_id, task.image.path, exc))
        return task


class DecodeImages(beam.DoFn):
    def __init__(self, root: str, work_size: int):
        self._root, self._work_size = root, work_size

    def process(self, task: ImageTask):
        try:
            task.pixels, task.source_size = decode_for_models(Path(self._root) / task.image.path, self._work_size)
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
            for task, anatomy in zip(todo, self._model.segment([t.pixels for t in todo])):
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
            priors = self._model.predict([t.pixels for t in todo], [t.anatomy for t in todo])
            for task, prior in zip(todo, priors):
                task.prior = prior
        except Exception as exc:
            for task in todo:
                self._fail(task, exc)
        yield from batch


class GroundAndVerify(_BackendStage):
    """Candidates, c1–c4, refinement (one embedding per image), fusion, verification, source-size encoding."""

    kind, stage = "refiner", Stage.REFINE

    def __init__(self, backend: str, options: dict, handle: shared.Shared, config: PipelineConfig):
        super().__init__(backend, options, handle)
        self._config = config
        self._images = Metrics.counter("mimic_ils", "images_grounded")

    def process(self, task: ImageTask):
        if task.result is None:
            try:
                groundings = ground_findings(task.findings, task.anatomy, task.prior, task.pixels, self._model,
                                             self._config.grounding)
                height, width = task.source_size
                unions = [[loc.value for loc in u] for u in self._config.pairs.location_unions]
                task.result = ImageResult(
                    task.study_id, task.image.dicom_id, task.image.path, height, width,
                    findings=[encode_grounding(g, task.anatomy, height, width, unions) for g in groundings],
                    empty_locations=empty_locations(task.prior, task.anatomy, self._config.grounding))
                self._images.inc()
            except Exception as exc:
                self._fail(task, exc)
        yield task.study_id, task.result


class BuildStudyOutputs(beam.DoFn):
    def __init__(self, config: PipelineConfig):
        self._config = config

    def process(self, item):
        _, grouped = item
        # errors of inputs that belong to no study (e.g. an image without metadata) are written as they are
        for study in grouped["study"]:
            findings = grouped["findings"][0] if grouped["findings"] else []
            n_frontal = sum(1 for i in study.images if i.view_position in self._config.corpus.frontal_views)
            out = build_study_outputs(study, findings, list(grouped["images"]), list(grouped["errors"]), n_frontal,
                                      self._config.pairs)
            for table, rows in (("pairs", out.pairs), ("masks", out.masks), ("discarded", out.discarded),
                                ("studies", [out.study_row])):
                for row in rows:
                    yield beam.pvalue.TaggedOutput(table, row)


class WriteTable(beam.PTransform):
    """Rows -> `OUT/<table>/part-NNNNN.parquet`, shard chosen by a stable hash of study_id, rows sorted."""

    def __init__(self, table: str, out_dir: str, n_shards: int, row_group_rows: int, compression: str):
        super().__init__(label=f"Write {table}")
        self._table, self._out, self._n = table, out_dir, n_shards
        self._row_group_rows, self._compression = row_group_rows, compression

    def expand(self, rows):
        table, out, n, rg, comp = self._table, self._out, self._n, self._row_group_rows, self._compression
        return (rows
                | "Shard" >> beam.Map(lambda r: (shard_of(r.get("study_id"), n), r))
                | "Group" >> beam.GroupByKey()
                | "Write" >> beam.MapTuple(lambda shard, group: write_shard(out, table, shard, list(group), rg, comp)))


def build_pipeline(p: beam.Pipeline, studies: list[Study], root: str, out_dir: str, config: PipelineConfig) -> None:
    n_shards = max(1, math.ceil(len(studies) / config.output.studies_per_shard))
    batch = {"min_batch_size": 1, "max_batch_size": config.vision.batch_size}

    read = (p | "Studies" >> beam.Create(studies, reshuffle=False)
              | "Spread" >> beam.Reshuffle()
              | "Read reports" >> beam.ParDo(ReadReports(root)).with_outputs(ERRORS, main="reports"))
    structured = (read.reports
                  | "Batch reports" >> beam.BatchElements(min_batch_size=1, max_batch_size=256)
                  | "Structure" >> beam.ParDo(StructureReports(config.structuring.vocabulary, shared.Shared()))
                  .with_outputs(ERRORS, FINDINGS, main="structured"))
    tasks = (structured.structured
             | "Image tasks" >> beam.ParDo(ImageTasks(root, config.corpus.frontal_views)).with_outputs(ERRORS, main="tasks"))
    images = (tasks.tasks
              | "Decode" >> beam.ParDo(DecodeImages(root, config.vision.work_size))
              | "Batch images" >> beam.BatchElements(**batch)
              | "Anatomy" >> beam.ParDo(SegmentAnatomy(config.anatomy.backend, config.anatomy.options, shared.Shared()))
              | "Lesion prior" >> beam.ParDo(PredictLesionPrior(config.lesion_prior.backend, config.lesion_prior.options,
                                                                shared.Shared()))
              | "Ground" >> beam.ParDo(GroundAndVerify(config.refiner.backend, config.refiner.options, shared.Shared(),
                                                       config)))
    image_errors = (images | "Image errors" >> beam.FlatMap(lambda kv: [kv[1].error] if kv[1].error else []))
    errors = ((read[ERRORS], structured[ERRORS], tasks[ERRORS], image_errors) | "All errors" >> beam.Flatten())
    outputs = ({
        "study": read.reports | "Key studies" >> beam.Map(lambda st: (st[0].study_id, st[0])),
        "findings": structured.structured | "Key findings" >> beam.Map(lambda sf: (sf[0].study_id, sf[1])),
        "images": images,
        "errors": errors | "Key errors" >> beam.Map(lambda e: (e.study_id, e)),
    } | "Join per study" >> beam.CoGroupByKey()
      | "Pairs" >> beam.ParDo(BuildStudyOutputs(config)).with_outputs("pairs", "masks", "discarded", "studies"))

    tables = {
        "studies": outputs.studies, "pairs": outputs.pairs, "masks": outputs.masks, "discarded": outputs.discarded,
        "findings": structured[FINDINGS] | "Finding rows" >> beam.Map(Finding.as_row),
        "errors": errors | "Error rows" >> beam.Map(ErrorRecord.as_row),
    }
    for name, rows in tables.items():
        _ = rows | WriteTable(name, out_dir, n_shards, config.output.row_group_rows, config.output.compression)
