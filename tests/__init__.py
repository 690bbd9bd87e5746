"""The test suite: one folder per package folder, plus integration/ (multi-process, subprocess, demo)."""
