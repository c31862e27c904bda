"""`learned`: fall back when a classifier predicts that the large model would reject the draft.

The classifier is a logistic regression over features of the small model's prediction
(`FEATURES`), trained by `bild train-policy` on traces from `bild traces` and saved as JSON: the
feature list, their standardisation, the weights, the vocabulary size it was trained with and a
description of its training set. The file is read once per path.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from bild.errors import BildError
from bild.policy import DraftStep
from bild.registry import register_policy
from policies.rules import RulePolicy, top_margin

FORMAT = "bild-learned-policy/1"
FEATURES = ["max_prob", "entropy", "margin", "pending", "position"]


def features(step: DraftStep) -> list[float]:
    """The classifier's inputs for one draft step, in `FEATURES` order."""
    return [step.max_prob, step.entropy, top_margin(step.probs, 1), float(step.pending), float(step.position)]


class Classifier(BaseModel):
    format: str
    features: list[str]
    mean: list[float]
    std: list[float]
    weights: list[float]
    bias: float
    vocab_size: int
    training: dict = {}

    def reject_probability(self, x: list[float]) -> float:
        z = self.bias + sum(w * (v - m) / s for w, v, m, s in zip(self.weights, x, self.mean, self.std, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


@functools.lru_cache(maxsize=8)
def load_classifier(path: str, mtime: float) -> Classifier:
    try:
        data = json.loads(Path(path).read_text())
        clf = Classifier(**data)
    except FileNotFoundError:
        raise BildError(f"learned-policy file {path!r} does not exist: train one with `bild train-policy`") from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValidationError) as e:
        raise BildError(f"learned-policy file {path!r} is corrupt or not a bild classifier "
                        f"({type(e).__name__}): retrain it with `bild train-policy`") from None
    if clf.format != FORMAT:
        raise BildError(f"learned-policy file {path!r} has format {clf.format!r}; this bild reads {FORMAT!r}")
    if clf.features != FEATURES:
        raise BildError(f"learned-policy file {path!r} was trained on features {clf.features}, but this bild "
                        f"computes {FEATURES}: retrain it with `bild train-policy`")
    if not len(clf.weights) == len(clf.mean) == len(clf.std) == len(FEATURES):
        raise BildError(f"learned-policy file {path!r} is corrupt: {len(clf.weights)} weights for "
                        f"{len(FEATURES)} features")
    return clf


@register_policy("learned")
class LearnedPolicy(RulePolicy):
    """Fall back when a trained classifier predicts the large model would reject the draft."""

    path: str = Field(description="classifier file written by `bild train-policy`")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description=(
        "fall back when the predicted rejection probability exceeds this (0: always, 1: never)"))

    _classifier: Classifier = PrivateAttr()

    def model_post_init(self, context: object) -> None:
        path = Path(self.path).expanduser()
        mtime = path.stat().st_mtime if path.exists() else 0.0
        self._classifier = load_classifier(str(path), mtime)

    def fallback(self, step: DraftStep) -> bool:
        if step.logits.shape[-1] != self._classifier.vocab_size:
            raise BildError(f"learned-policy file {self.path!r} was trained for a vocabulary of "
                            f"{self._classifier.vocab_size} tokens, but this pair has {step.logits.shape[-1]}")
        return self._classifier.reject_probability(features(step)) > self.threshold
