"""Export: HF-native directories (transformers loads them natively) and the original InternVL layout."""

from .hf import export_hf
from .original import export_original, load_original

__all__ = ["export_hf", "export_original", "load_original"]
