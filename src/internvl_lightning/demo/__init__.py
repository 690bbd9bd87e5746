"""The demo: tiny components, synthetic data and the whole method on one CPU (`python -m internvl_lightning demo`)."""
