"""A generic corpus: one CSV (`.csv`, `.csv.gz`, `.tsv`) or Parquet table that lists the studies, columns named
in the config. One row per image (a study's rows share its study id), or one row per study without images.

    corpus:
      reader: manifest
      options:
        columns: {study_id: accession, report_text: findings, image_path: file, view_position: view}
        image_root: /data/images      # what relative image and report paths are relative to (default: the
                                      # manifest's folder)

Roles and their default column names (a role whose default column is absent is not used; a column named in the
config must exist): `study_id`, `report_id` (each defaults to the other), `subject_id` (default: the study id),
`split`, `report_text` (the report itself) or `report_path` (a text file), `image_path`, `dicom_id` (default: the
image file's stem), `view_position` (PA/AP/LATERAL; images without one are not grounded unless `default_view`).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from schemas.config import describe_validation_error
from transforms.corpus_readers.base import CorpusError, CorpusIndex, CorpusReader, register
from transforms.records import ImageRef, Study

TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".parquet")


class ManifestColumns(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_id: str = "study_id"
    report_id: str = "report_id"
    subject_id: str = "subject_id"
    split: str = "split"
    report_text: str = "report_text"
    report_path: str = "report_path"
    image_path: str = "image_path"
    dicom_id: str = "dicom_id"
    view_position: str = "view_position"


class ManifestOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    columns: ManifestColumns = ManifestColumns()
    image_root: str | None = None
    default_view: str = ""


def read_table(path: Path) -> pd.DataFrame:
    """Every column as text, empty cells as ''."""
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            table = pd.read_parquet(path)
            return table.astype("string").fillna("").astype(object)
        return pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if name.endswith(".tsv") else ",")
    except (OSError, ValueError) as exc:
        raise CorpusError(f"manifest {path} is unreadable: {exc}") from None


@register("manifest")
class ManifestReader(CorpusReader):
    def __init__(self, **options):
        try:
            self.options = ManifestOptions(**options)
        except ValidationError as error:
            raise CorpusError(f"corpus reader 'manifest': invalid options: {describe_validation_error(error)}"
                              ) from None

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_file() and path.name.lower().endswith(TABLE_SUFFIXES)

    def _roles(self, path: Path, table: pd.DataFrame) -> dict[str, str]:
        """role -> column of the table; a column named in the config that is absent is an error."""
        columns = self.options.columns
        named = {role: getattr(columns, role) for role in ManifestColumns.model_fields}
        missing = sorted(f"{role}={column}" for role, column in named.items()
                         if role in columns.model_fields_set and column not in table.columns)
        if missing:
            raise CorpusError(f"manifest {path}: column(s) {', '.join(missing)} not found; columns are "
                              f"{', '.join(map(str, table.columns))}")
        roles = {role: column for role, column in named.items() if column in table.columns}
        if "study_id" not in roles and "report_id" not in roles:
            raise CorpusError(f"manifest {path}: needs a study_id or report_id column (name it in "
                              f"corpus.options.columns; columns are {', '.join(map(str, table.columns))})")
        if not {"report_text", "report_path", "image_path"} & set(roles):
            raise CorpusError(f"manifest {path}: needs a report_text, report_path or image_path column")
        return roles

    def index(self, path: Path) -> CorpusIndex:
        path = Path(path)
        if not self.detect(path):
            raise CorpusError(f"manifest not found or not a table ({', '.join(TABLE_SUFFIXES)}): {path}")
        table = read_table(path)
        roles = self._roles(path, table)
        root = Path(self.options.image_root).expanduser() if self.options.image_root else path.parent
        if not root.is_absolute():
            root = path.parent / root

        def value(row: dict, role: str, default: str = "") -> str:
            column = roles.get(role)
            return (row[column].strip() if column else "") or default

        studies: dict[str, dict] = {}
        for number, row in enumerate(table.to_dict("records"), start=2):  # row 1 is the header
            study_id = value(row, "study_id", value(row, "report_id"))
            if not study_id:
                raise CorpusError(f"manifest {path}: row {number} has no study id")
            study = studies.setdefault(study_id, {"report_id": value(row, "report_id", study_id),
                                                  "subject_id": value(row, "subject_id", study_id),
                                                  "split": value(row, "split") or None, "report_text": None,
                                                  "report_path": None, "images": {}})
            if "report_text" in roles and not study["report_text"]:
                study["report_text"] = row[roles["report_text"]]
            study["report_path"] = study["report_path"] or value(row, "report_path") or None
            image = value(row, "image_path")
            if image:
                dicom_id = value(row, "dicom_id", Path(image).stem)
                study["images"].setdefault(dicom_id, ImageRef(
                    dicom_id, image, value(row, "view_position", self.options.default_view)))
        return CorpusIndex([
            Study(study_id=study_id, subject_id=s["subject_id"], split=s["split"], report_path=s["report_path"],
                  images=tuple(s["images"][k] for k in sorted(s["images"])), report_id=s["report_id"],
                  report_text=s["report_text"] if s["report_text"] or not s["report_path"] else None)
            for study_id, s in sorted(studies.items())
        ], [], root)
