"""Helpers shared by the tests (imported as `from helpers import ...`; conftest.py holds fixtures)."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_module(relative: str, name: str):
    """Import a script of the checkout that is not part of the package (scripts/, benchmarks/) by its path."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
