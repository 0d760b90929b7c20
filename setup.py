"""Shim for Beam's `--setup_file` (Dataflow workers build the package from it); metadata is in pyproject.toml."""
from setuptools import setup

setup()
