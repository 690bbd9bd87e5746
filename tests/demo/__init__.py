"""Tests of internvl_lightning.demo."""
