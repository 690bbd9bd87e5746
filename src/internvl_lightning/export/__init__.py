"""Export: HF-native directories (transformers loads them natively) and the original InternVL layout.

Export only writes; reading any checkpoint kind is ``model/load.py`` (a Lightning ``.ckpt``:
``training/checkpoint.py``).
"""

from .hf import export_hf
from .original import export_original

__all__ = ["export_hf", "export_original"]
