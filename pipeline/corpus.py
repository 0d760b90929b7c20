"""The index stage: the configured corpus reader (`corpus.reader`, `corpus.options`) turns the input into a
`CorpusIndex` of `Study` records on the launching machine, before the DAG starts.

The MIMIC-CXR-JPG layout's names (metadata files, path builders) are re-exported for the modules that write or
read that layout (synthetic corpora, audits, benchmarks)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import UserError
from schemas.config import CorpusConfig
from transforms.corpus_readers import create_reader, detect_reader
from transforms.corpus_readers.base import CorpusError, CorpusIndex, UnlistedImage, part_of
from transforms.corpus_readers.mimic_cxr import METADATA_FILE, SPLIT_FILE, image_path, report_path
from transforms.records import ReportText

__all__ = ["CorpusIndex", "UnlistedImage", "corpus_reports", "index_corpus", "part_of", "METADATA_FILE", "SPLIT_FILE",
           "image_path", "report_path"]


def index_corpus(root: Path, corpus: CorpusConfig | None = None) -> CorpusIndex:
    """Every study of the corpus at `root` as the configured reader sees it (default: MIMIC-CXR-JPG), with the image
    files it found that no study lists; a corpus the reader cannot index is a UserError."""
    corpus = corpus or CorpusConfig()
    try:
        return create_reader(corpus.reader, **corpus.options).index(Path(root))
    except CorpusError as exc:
        raise UserError(str(exc)) from None


def corpus_reports(path: Path, corpus: CorpusConfig | None = None, reader: str | None = None,
                   ) -> tuple[str, Iterator[ReportText]]:
    """The name of the reader and the report texts of any corpus (`mimic-ils structure`, `mimic-ils vocab mine`):
    read by `reader`, else by the reader that recognises `path`; the config's `corpus.options` go to the config's
    own reader. A corpus the reader cannot read is a UserError, also halfway through."""
    corpus = corpus or CorpusConfig()
    try:
        name = reader or detect_reader(Path(path))
        built = create_reader(name, **(corpus.options if name == corpus.reader else {}))
    except CorpusError as exc:
        raise UserError(str(exc)) from None

    def reports() -> Iterator[ReportText]:
        try:
            yield from built.reports(Path(path))
        except CorpusError as exc:
            raise UserError(str(exc)) from None

    return name, reports()
