"""Shipped configuration files (YAML), installed with the package so `mimic-ils` finds them anywhere."""
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
VOCABULARY_DIR = CONFIG_DIR / "vocabularies"
