"""Tests of internvl_lightning.model."""
