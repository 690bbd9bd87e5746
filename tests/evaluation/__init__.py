"""Tests of internvl_lightning.evaluation."""
