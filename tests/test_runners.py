"""Runners and resumability: the graph builds and pickles for Dataflow, Flink, Spark and the portable runner (no
cluster needed); a run split in parts by subject merges into one run directory; re-runs are refused or resumed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, SetupOptions
from apache_beam.pipeline import PipelineVisitor

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.contract import check_run
from pipeline.corpus import index_corpus, part_of
from pipeline.dag import build_pipeline
from pipeline.errors import UserError
from pipeline.run import PARTS_DIR, parse_partition, run_pipeline
from pipeline.writers import read_table

NO_GATE = ["quality.validate_after_run=false"]
REPO = Path(__file__).resolve().parents[1]
TABLE_NAMES = ("studies", "pairs", "masks", "findings", "discarded", "errors")

RUNNER_ARGS = {
    "dataflow": ["--runner", "DataflowRunner", "--project", "my-project-123", "--region", "us-central1",
                 "--temp_location", "gs://my-bucket-123/tmp", "--setup_file", str(REPO / "pyproject.toml"),
                 "--dataflow_service_options", "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver",
                 "--experiments", "use_runner_v2"],
    "portable": ["--runner", "PortableRunner", "--job_endpoint", "localhost:8099", "--environment_type", "LOOPBACK"],
    "flink": ["--runner", "FlinkRunner", "--flink_master", "localhost:8081", "--environment_type", "LOOPBACK"],
    "spark": ["--runner", "SparkRunner", "--spark_master_url", "spark://localhost:7077", "--environment_type", "LOOPBACK"],
}


class _DoFns(PipelineVisitor):
    def __init__(self):
        self.fns = []

    def visit_transform(self, node):
        if isinstance(node.transform, beam.ParDo):
            self.fns.append((node.full_label, node.transform.fn))


@pytest.mark.parametrize("runner", sorted(RUNNER_ARGS))
def test_graph_builds_and_every_dofn_pickles_for_the_runner(runner, corpus):
    options = PipelineOptions(RUNNER_ARGS[runner])
    pipeline = beam.Pipeline(options=options)  # builds the runner object: no cluster is contacted
    assert type(pipeline.runner).__name__.lower().startswith(runner)
    build_pipeline(pipeline, index_corpus(corpus), str(corpus), "/tmp/not-written", load_config("classical").config)
    proto = pipeline.to_runner_api()  # what a runner receives: every DoFn pickled into the graph
    assert len(proto.components.transforms) > 50
    visitor = _DoFns()
    pipeline.visit(visitor)
    assert len(visitor.fns) > 15
    for label, fn in visitor.fns:
        payload = pickler.dumps(fn)
        assert len(payload) < 200_000, f"{label} pickles to {len(payload)} bytes: it closes over too much"
        assert type(pickler.loads(payload)) is type(fn), label
    if runner == "dataflow":
        assert "worker_accelerator" in options.view_as(GoogleCloudOptions).dataflow_service_options[0]
        assert Path(options.view_as(SetupOptions).setup_file).is_file()


def test_partition_argument():
    assert parse_partition("0/4") == (0, 4) and parse_partition("3/4") == (3, 4)
    for bad in ("4/4", "-1/4", "1", "a/b", "1/0"):
        with pytest.raises(UserError, match="I/N"):
            parse_partition(bad)
    assert {part_of(f"1{i:07d}", 3) for i in range(60)} == {0, 1, 2}
    assert part_of("10000032", 5) == part_of("10000032", 5)


def _rows(out: Path, name: str) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in read_table(str(out), name).to_pylist())


@pytest.fixture(scope="module")
def parted(corpus, tmp_path_factory):
    """The shared corpus run in two parts (part 1 first) into one directory."""
    out = tmp_path_factory.mktemp("parted")
    loaded = load_config("classical", NO_GATE)
    first = run_pipeline(corpus, out, loaded, partition=(1, 2))
    second = run_pipeline(corpus, out, loaded, partition=(0, 2))
    return out, first, second


def test_parts_merge_into_the_same_tables_as_one_run(parted, run_dir, corpus):
    out, first, second = parted
    assert not first.finished and first.counts == {}
    assert first.parts_complete == [1] and second.parts_complete == [0, 1] and second.finished
    assert check_run(out) == [] and second.problems == []
    for name in TABLE_NAMES:
        assert _rows(out, name) == _rows(run_dir, name), name
        assert all(p.name.startswith(("part-000-", "part-001-")) for p in (out / name).glob("*.parquet"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parts"]["n_parts"] == 2 and [p["part"] for p in manifest["parts"]["parts"]] == [0, 1]
    whole = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"] == whole["counts"]
    assert manifest["counters"] == whole["counters"]
    assert first.n_studies + second.n_studies == whole["inputs"]["studies"]
    subjects = {s.study_id: s.subject_id for s in index_corpus(corpus).studies}
    for shard in (out / "studies").glob("*.parquet"):
        part = int(shard.name.split("-")[1])
        for study_id in pq.read_table(shard, columns=["study_id"]).column(0).to_pylist():
            assert part_of(subjects[study_id], 2) == part


def test_rerunning_is_refused_and_resume_reruns_only_the_incomplete_part(parted, corpus):
    out, _, _ = parted
    loaded = load_config("classical", NO_GATE)
    with pytest.raises(UserError, match="--resume"):
        run_pipeline(corpus, out, loaded, partition=(0, 2))
    with pytest.raises(UserError, match="--overwrite"):
        run_pipeline(corpus, out, loaded)  # an unsplit run is another plan
    # a part killed mid-write: its marker never written, a temp file left behind
    before = {p.name: p.read_bytes() for name in TABLE_NAMES for p in (out / name).glob("part-000-*.parquet")}
    (out / PARTS_DIR / "part-000-of-002.json").unlink()
    (out / "pairs" / "part-000-00007.parquet.inprogress").write_bytes(b"half a shard")
    (out / "manifest.json").unlink()
    summary = run_pipeline(corpus, out, loaded, resume=True)
    assert summary.parts_run == [0] and summary.parts_skipped == [1] and summary.finished
    after = {p.name: p.read_bytes() for name in TABLE_NAMES for p in (out / name).glob("part-000-*.parquet")}
    assert after == before  # the same part gives byte-identical shards
    assert not list(out.glob("*/*.inprogress")) and (out / "manifest.json").is_file()
    assert check_run(out) == []


def test_resume_of_a_complete_run_runs_nothing_and_prints_the_counters(run_dir, corpus, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    code = main(["run", "--input", str(corpus), "--output", str(out), "--resume"])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, captured.err
    assert "parts run: none" in printed and "studies_read=" in printed and "images_grounded=" in printed
    assert "stage timings: " in printed and "decode" in printed
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["timings"]["stages"]) >= {"read", "structure", "decode", "anatomy", "lesion_prior", "refine",
                                                  "encode", "pairs"}
    assert manifest["counters"]["studies_read"] == manifest["inputs"]["studies"]
    assert main(["run", "--input", str(corpus), "--output", str(out), "--resume", "--overwrite"]) == 2
