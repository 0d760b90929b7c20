"""OpenI (Indiana University chest X-ray collection) reports: the NLMCXR_reports `.tgz`, a folder of its XML files,
or one XML file. Reports only: each report is a study of its own (subject and study id = the report id `CXR<n>`),
with no images and no split, so a pipeline run structures and accounts for them and grounds nothing."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from transforms.corpus_readers.base import CorpusError, CorpusIndex, CorpusReader, register
from transforms.records import ReportText, Study
from transforms.report_readers import iter_openi_xml, openi_report_from_xml

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")


@register("openi")
class OpenIReader(CorpusReader):
    @classmethod
    def detect(cls, path: Path) -> bool:
        name = path.name.lower()
        if path.is_file():
            return name.endswith((*ARCHIVE_SUFFIXES, ".xml"))
        return path.is_dir() and next(path.rglob("*.xml"), None) is not None

    def _named_reports(self, path: Path) -> Iterator[tuple[str, ReportText]]:
        if path.is_file() and path.name.lower().endswith(".xml"):
            items = iter([(path.name, path.read_bytes())])
        elif self.detect(path):
            items = iter_openi_xml(path)
        else:
            raise CorpusError(f"{path} is not an OpenI corpus: expected the NLMCXR_reports .tgz, a folder of its XML "
                              "files, or one XML file")
        for name, xml_bytes in items:
            try:
                yield name, openi_report_from_xml(xml_bytes)
            except (ValueError, SyntaxError) as exc:  # ParseError is a SyntaxError
                raise CorpusError(f"{path}: OpenI report {name} is unreadable: {exc}") from None

    def index(self, path: Path) -> CorpusIndex:
        path = Path(path)
        studies = {}
        for name, report in self._named_reports(path):
            if report.study_id in studies:
                raise CorpusError(f"{path}: OpenI report id {report.report_id} appears twice (second: {name})")
            studies[report.study_id] = Study(study_id=report.study_id, subject_id=report.study_id, split=None,
                                             report_path=name, report_id=report.report_id, report_text=report.text)
        return CorpusIndex([studies[k] for k in sorted(studies)], [], path if path.is_dir() else path.parent)

    def reports(self, path: Path) -> Iterator[ReportText]:
        """In file order (numeric), as the archive holds them."""
        for _, report in self._named_reports(Path(path)):
            yield report
