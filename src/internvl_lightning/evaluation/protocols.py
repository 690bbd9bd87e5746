"""The official protocol (and the version of its code) each of our numbers follows.

Each scorer reimplements the named function; ``tests/evaluation/parity/`` holds the decisions
those functions gave at these commits, and ``tests/evaluation/test_parity.py`` checks ours.
"""

from __future__ import annotations

import re

VLMEVALKIT = "VLMEvalKit rules (exact matching, no judge model; open-compass/VLMEvalKit@e8e78f0)"
MMMU = "MMMU eval_utils rules (MMMU-Benchmark/MMMU@bb0b95a)"
MATHVISTA = (
    "MathVista rule-based extraction (no GPT judge) + official normalisation and equality "
    "(lupantech/MathVista@53d5258)"
)
VQA = {
    "vqa": "VQA accuracy (GT-Vision-Lab/VQA vqaEval.py@a013f00, leave-one-out, min(1, n/3))",
    "anls": "ANLS (DocVQA evaluation script, threshold 0.5)",
    "relaxed": "relaxed accuracy (google-research/pix2struct@945f27e relaxed_correctness, 5%)",
    "exact": "exact match (OpenGVLab/InternVL@2410d1d evaluate_vqa.py)",
}


def mmbench_split(file_name: str) -> str:
    """A readable split name from an MMBench / CCBench file name: "MMBench_DEV_EN_V11.tsv" ->
    "MMBench-dev-en v1.1"; a name it cannot read is kept as it is."""
    name = file_name.lower()
    if "ccbench" in name:
        return "CCBench"
    if "mmbench" not in name:
        return f"MMBench ({file_name})"
    split = "test" if "test" in name else "dev" if "dev" in name else "?"
    lang = "cn" if re.search(r"(?<![a-z])cn(?![a-z])", name.replace("_", " ")) else "en"
    version = "v1.1" if re.search(r"v1\.?1", name) else "v1.0"
    return f"MMBench-{split}-{lang} {version}"
