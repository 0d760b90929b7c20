"""Load a run configuration: a shipped name or a YAML path, `extends` chains, `--set` overrides."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from configs import CONFIG_DIR, VOCABULARY_DIR
from pipeline.errors import UserError
from schemas.config import PipelineConfig, describe_validation_error


@dataclass(frozen=True)
class LoadedConfig:
    config: PipelineConfig
    source: str
    config_hash: str  # covers the resolved config and the vocabulary file it names

    def as_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")


def _resolve(name_or_path: str, folder: Path, what: str) -> Path:
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in {".yaml", ".yml"}:
        if not candidate.is_file():
            raise UserError(f"{what} file not found: {candidate}")
        return candidate
    shipped = folder / f"{name_or_path}.yaml"
    if not shipped.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise UserError(f"unknown {what} '{name_or_path}': give a YAML path or one of: {known}")
    return shipped


def _deep_merge(base: dict, overlay: dict) -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_with_parents(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise UserError(f"config 'extends' loops through {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping at the top level")
    parent_name = data.pop("extends", None)
    if parent_name is None:
        return data
    if str(parent_name).endswith((".yaml", ".yml")):
        parent_name = str(path.parent / Path(parent_name).expanduser())  # relative to the extending file
    parent_path = _resolve(parent_name, CONFIG_DIR, "config")
    return _deep_merge(_read_with_parents(parent_path, seen + (path,)), data)


def _apply_override(data: dict, assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise UserError(f"--set takes KEY.PATH=VALUE, got '{assignment}'")
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: '{part}' is not a section")
    node[leaf] = yaml.safe_load(raw)


def vocabulary_path(name_or_path: str) -> Path:
    return _resolve(name_or_path, VOCABULARY_DIR, "vocabulary")


def load_config(name_or_path: str = "classical", overrides: list[str] | None = None) -> LoadedConfig:
    path = _resolve(name_or_path, CONFIG_DIR, "config")
    data = _read_with_parents(path)
    for assignment in overrides or []:
        _apply_override(data, assignment)
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"config {path} is invalid: {describe_validation_error(exc)}") from None
    digest = hashlib.sha256(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode())
    digest.update(vocabulary_path(config.structuring.vocabulary).read_bytes())
    return LoadedConfig(config=config, source=str(path), config_hash=digest.hexdigest()[:16])
