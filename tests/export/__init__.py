"""Tests of internvl_lightning.export."""
