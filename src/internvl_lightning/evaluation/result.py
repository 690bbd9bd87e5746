"""The result of one evaluation run and its JSON / Markdown reports."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EvalResult:
    """Scores are percentages. ``predictions`` has one record per question asked (id, group,
    categories, prediction, extracted answer, gold answer, score), in benchmark-file order."""

    benchmark: str
    data: str
    score: float
    num_samples: int  # questions asked (circular copies included)
    num_scored: int  # units the score averages over (circular: questions)
    per_category: dict[str, float] = field(default_factory=dict)
    category_counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, str] = field(default_factory=dict)  # "score" and each metric: which rules
    counts: dict[str, int] = field(default_factory=dict)  # e.g. no_decision, unmatched
    submission: str | None = None  # a leaderboard upload file written beside the reports

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, default=str)

    def __str__(self) -> str:
        return self.to_markdown()

    def to_markdown(self) -> str:
        """A summary table (ours, the published number, the difference, the protocol of ours)
        and a per-category table."""
        b = self.baseline or {}
        published = b.get("score")
        ref = f"{b['model']} ({b['benchmark']})" if b else "published"
        lines = [
            f"# {self.benchmark} evaluation",
            "",
            f"Data: `{Path(self.data).name}`; model: `{self.settings.get('model', '?')}`",
            "",
            f"| benchmark | samples | scored | score | {ref} | difference | protocol |",
            "|---|---:|---:|---:|---:|---:|---|",
            f"| {self.benchmark} | {self.num_samples} | {self.num_scored} | {self.score:.2f} | "
            f"{_fmt(published)} | {_difference(self.score, published, self.num_scored)} | "
            f"{self.protocol.get('score', '')} |",
        ]
        for name, value in self.metrics.items():
            lines.append(
                f"| {self.benchmark} ({name}) | {self.num_samples} | | {value:.2f} | | | "
                f"{self.protocol.get(name, '')} |"
            )
        if self.counts:
            lines += ["", "Counts: " + ", ".join(f"{k} {v}" for k, v in self.counts.items())]
        if self.submission:
            lines += ["", f"Submission file: `{Path(self.submission).name}`"]
        if self.per_category:
            lines += ["", "| category | n | score |", "|---|---:|---:|"]
            for key, value in self.per_category.items():
                lines.append(f"| {key} | {self.category_counts.get(key, '')} | {value:.2f} |")
        if b:
            lines += ["", f"Published number ({b['model']}, {b['benchmark']}): {b['source']}"]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path, stem: str | None = None) -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; returns both paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = stem or f"{self.benchmark}_{Path(self.data).stem}"
        js, md = out / f"{stem}.json", out / f"{stem}.md"
        js.write_text(self.to_json() + "\n", encoding="utf-8")
        md.write_text(self.to_markdown(), encoding="utf-8")
        return js, md


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _difference(score: float, published: float | None, num_scored: int) -> str:
    """Ours minus the published number, signed ("n/a" without one or with nothing scored)."""
    return "n/a" if published is None or not num_scored else f"{score - published:+.1f}"
