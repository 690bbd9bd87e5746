"""Helpers shared by the tests (data and benchmark writers, process launchers, fake-GPU strategies).

Fixtures live in ``tests/conftest.py``; test modules import helpers from here, never from each other.
"""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
IMAGES = TESTS / "assets" / "images"  # real photographs
