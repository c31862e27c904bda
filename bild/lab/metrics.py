"""Quality metrics: against references (chrF, BLEU, ROUGE-L) and against the large model.

Reference metrics are corpus-level (sacrebleu's chrF and BLEU; ROUGE-L F1 averaged over
examples). Agreement with the large model compares token ids position by position, over the
large model's output length: a faithful method scores 1.0 and exact match 1.0.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hypotheses, references, strict=True)]
    return 100.0 * sum(scores) / len(scores)


def token_agreement(outputs: Sequence[Sequence[int]], large: Sequence[Sequence[int]]) -> float:
    """Fraction of the large model's token positions where `outputs` has the same token."""
    same = sum(sum(a == b for a, b in zip(o, g, strict=False)) for o, g in zip(outputs, large, strict=True))
    total = sum(len(g) for g in large)
    return same / total if total else 1.0


def exact_match(outputs: Sequence[Sequence[int]], large: Sequence[Sequence[int]]) -> float:
    return sum(list(o) == list(g) for o, g in zip(outputs, large, strict=True)) / len(large)


def first_difference(outputs: Sequence[Sequence[int]], large: Sequence[Sequence[int]]) -> float | None:
    """The median position (0-based token index) where an output first parts from the large model's, over the
    outputs that differ; None when every output is identical."""
    found = []
    for o, g in zip(outputs, large, strict=True):
        if list(o) != list(g):
            found.append(next((i for i, (a, b) in enumerate(zip(o, g, strict=False)) if a != b), min(len(o), len(g))))
    return statistics.median(found) if found else None


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The number an answer ends on (after "The answer is" when it says so; commas dropped), or None."""
    tail = text.rsplit("answer is", 1)[-1]
    found = NUMBER.findall(tail) or NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def accuracy(hypotheses: Sequence[str], answers: Sequence[str]) -> float:
    """Fraction of outputs whose final number equals the answer (GSM8K's exact match on the number)."""
    hits = 0
    for text, answer in zip(hypotheses, answers, strict=True):
        got, want = final_number(text), final_number(answer)
        hits += got is not None and want is not None and abs(got - want) < 1e-6
    return hits / len(answers) if answers else 0.0


def reference_metrics(hypotheses: Sequence[str], references: Sequence[str | None]) -> dict[str, float | None]:
    """chrF, BLEU and ROUGE-L against the references, or None each where there are none."""
    if not references or any(r is None for r in references):
        return {"chrf": None, "bleu": None, "rouge_l": None}
    return {"chrf": chrf(hypotheses, references), "bleu": bleu(hypotheses, references),
            "rouge_l": rouge_l(hypotheses, references)}
