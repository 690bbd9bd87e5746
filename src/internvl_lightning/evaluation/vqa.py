"""Generic VQA JSONL (InternVL's ``eval/vqa`` files): one ``{"question_id", "image", "question",
"answer" | "answers": [...]}`` per line, the image path relative to the file.

Every metric is computed per sample, each as its official evaluator does (``metrics.py``: VQA
accuracy, exact match, ANLS, relaxed accuracy); the headline score is the one chosen with
``metric`` (VQAv2/TextVQA: vqa, DocVQA/InfoVQA: anls, ChartQA: relaxed, GQA/AI2D/OCRVQA: exact).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..constants import IMAGE_PLACEHOLDER
from . import protocols
from .common import Benchmark, Sample, Summary, blank, check_columns, image_ref, mean_summary, read_records
from .generate import Request
from .metrics import VQA_METRICS

VQA_PROMPT = "Answer the question using a single word or phrase."


def _missing(value: Any) -> bool:
    return not value if isinstance(value, list) else blank(value)


class VQA(Benchmark):
    name = "vqa"
    default_max_new_tokens = 32

    def __init__(
        self, metric: str = "vqa", prompt: str | None = VQA_PROMPT, image_root: str | Path | None = None
    ) -> None:
        super().__init__(image_root)
        if metric not in VQA_METRICS:
            raise ValueError(f"unknown VQA metric {metric!r}; choose one of {sorted(VQA_METRICS)}")
        self.metric = metric
        self.prompt = prompt

    def load(self, path: Path, circular: bool = True) -> list[Sample]:
        rows = read_records(path)
        check_columns(rows, ("image", "question"), path, any_of=("answer", "answers"))
        samples = []
        for n, row in enumerate(rows):
            qid = str(row.get("question_id", n))
            where = f"{path} line {n + 1} (question_id {qid})"
            answers = row.get("answers")
            if _missing(answers):
                answers = row.get("answer")
            if _missing(answers):
                raise ValueError(f"{where}: no answer")
            if isinstance(answers, list):
                # VQAv2-style lists may hold {"answer": ...} objects.
                answers = [str(a["answer"] if isinstance(a, dict) else a) for a in answers]
            question = str(row["question"]).strip()
            if IMAGE_PLACEHOLDER not in question:
                question = IMAGE_PLACEHOLDER + "\n" + question
            text = question + ("\n" + self.prompt if self.prompt else "")
            cats = {}
            for key in ("category", "question_type", "type"):
                if not blank(row.get(key)) and isinstance(row.get(key), str):
                    cats[key] = row[key]
                    break
            samples.append(
                Sample(
                    id=qid,
                    request=Request(text, [image_ref(row["image"], path.parent, where, self.image_root)]),
                    answer=answers if isinstance(answers, list) else str(answers),
                    categories=cats,
                )
            )
        return samples

    def judge(self, sample: Sample, prediction: str) -> tuple[float, Any]:
        scores = {name: fn(prediction, sample.answer) for name, fn in VQA_METRICS.items()}
        return scores[self.metric], scores

    def summarize(self, samples: list[Sample], judged: list[tuple[float, Any]], circular: bool) -> Summary:
        summary = mean_summary(samples, [sc for sc, _ in judged])
        for name in VQA_METRICS:  # every metric beside the headline one
            values = [extra[name] for _, extra in judged]
            summary.metrics[name] = 100.0 * sum(values) / len(values) if values else 0.0
        return summary

    def protocol(self, data: str | Path, circular: bool, samples: list[Sample]) -> dict[str, str]:
        name = Path(str(data)).name
        return {"score": f"{name}: {protocols.VQA[self.metric]}"} | {
            metric: f"{name}: {text}" for metric, text in protocols.VQA.items()
        }
