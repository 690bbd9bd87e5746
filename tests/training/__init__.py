"""Tests of internvl_lightning.training."""
