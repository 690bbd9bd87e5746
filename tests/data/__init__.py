"""Tests of internvl_lightning.data."""
