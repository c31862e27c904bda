"""`learned`: fall back when a trained classifier predicts the large model would reject the draft.

The classifier (logistic regression or a one-hidden-layer MLP) reads `FEATURES` of each draft:
the small model's confidence (max probability, entropy, the next three probabilities), where the
draft stands (pending drafts, position), the accumulated risk of the pending drafts (the sum of
their −log max probability), the previous step's confidence, the previous verification's kept
fraction and this generation's running acceptance (from the views' history), and optionally the
small model's final hidden state. `bild traces` records them with both labels (the large model's
argmax differs; the large model's NLL of the draft), `bild train-policy --rule exact|nll` fits
one against the rule that will be in use (match it with the policy's `rollback_rule`), and
saves it as JSON: the features, their
standardisation, the layers, the label, the vocabulary and hidden sizes it was trained with and
a description of its training set. The file is read once per path and checked on load.

The policy keeps the per-round features (pending risk, previous confidence) in its state.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from bild.errors import BildError
from bild.policy import DraftStep, Outcome, Verification
from bild.registry import register_policy
from policies.rules import RulePolicy

FORMAT = "bild-learned-policy/2"
FEATURES = ["max_prob", "entropy", "p2", "p3", "p4", "pending", "position", "pending_risk", "previous_prob",
            "last_kept_fraction", "acceptance"]


@dataclass
class Round:
    """What the features need from earlier steps of this generation."""

    risk: float = 0.0  # sum of −log max probability over the pending drafts
    previous_prob: float = 1.0  # the max probability of the previous draft step (1 at the start)

    def add(self, step: DraftStep, kept: bool) -> None:
        self.previous_prob = step.max_prob
        if kept:
            self.risk += -math.log(max(step.max_prob, 1e-12))

    def reset(self) -> None:
        self.risk = 0.0


def features(step: DraftStep, round_: Round) -> list[float]:
    """The classifier's inputs for one draft step, in `FEATURES` order (the hidden state comes apart)."""
    probs = [*step.top_probs, 0.0, 0.0, 0.0][:4]
    last = step.history.last
    acceptance = step.history.acceptance
    return [probs[0], step.entropy, probs[1], probs[2], probs[3], float(step.pending), float(step.position),
            round_.risk, round_.previous_prob, last.kept / last.drafted if last and last.drafted else 1.0,
            0.5 if acceptance is None else acceptance]


class Layer(BaseModel):
    weight: list[list[float]]  # [out, in]
    bias: list[float]  # [out]


class Label(BaseModel):
    rule: Literal["exact", "nll"]
    threshold: float | None = None  # nll: a draft is rejected when its NLL under the large model is above this


class Classifier(BaseModel):
    format: str
    features: list[str]
    hidden_size: int = 0  # length of the hidden state appended to the features (0: not used)
    mean: list[float]
    std: list[float]
    layers: list[Layer]
    label: Label
    vocab_size: int
    training: dict = {}
    _tensors: list[tuple[torch.Tensor, torch.Tensor]] = PrivateAttr(default_factory=list)
    _scale: tuple[torch.Tensor, torch.Tensor] | None = PrivateAttr(None)

    def model_post_init(self, context: object) -> None:
        self._tensors = [(torch.tensor(layer.weight), torch.tensor(layer.bias)) for layer in self.layers]
        self._scale = torch.tensor(self.mean), torch.tensor(self.std)

    def reject_probability(self, x: torch.Tensor) -> float:
        """P(the large model rejects the draft) for one feature vector [F]."""
        z = (x - self._scale[0]) / self._scale[1]
        for i, (w, b) in enumerate(self._tensors):
            z = w @ z + b
            if i < len(self._tensors) - 1:
                z = torch.relu(z)
        return float(torch.sigmoid(z.clamp(-60, 60))[0])


def check(clf: Classifier, path: str) -> Classifier:
    """Refuse a classifier this bild cannot use, naming why."""
    if clf.format != FORMAT:
        raise BildError(f"learned-policy file {path!r} has format {clf.format!r}; this bild reads {FORMAT!r}: "
                        "retrain it with `bild train-policy`")
    if clf.features != FEATURES:
        raise BildError(f"learned-policy file {path!r} was trained on features {clf.features}, but this bild "
                        f"computes {FEATURES}: retrain it with `bild train-policy`")
    width = len(FEATURES) + clf.hidden_size
    shapes_ok = len(clf.mean) == len(clf.std) == width and clf.layers and len(clf.layers[0].weight[0]) == width
    if not shapes_ok or len(clf.layers[-1].bias) != 1:
        raise BildError(f"learned-policy file {path!r} is corrupt: its layers do not fit {width} features")
    numbers = [*clf.mean, *clf.std, *(v for layer in clf.layers for row in layer.weight for v in row),
               *(v for layer in clf.layers for v in layer.bias)]
    if not all(math.isfinite(v) for v in numbers) or min(clf.std) <= 0:
        raise BildError(f"learned-policy file {path!r} holds non-finite weights or a zero spread: retrain it with "
                        "`bild train-policy`")
    return clf


@functools.lru_cache(maxsize=8)
def load_classifier(path: str, mtime: float) -> Classifier:
    try:
        return check(Classifier(**json.loads(Path(path).read_text(encoding="utf-8"))), path)
    except FileNotFoundError:
        raise BildError(f"learned-policy file {path!r} does not exist: train one with `bild train-policy`") from None
    except IsADirectoryError:
        raise BildError(f"learned-policy path {path!r} is a folder: give the JSON of `bild train-policy`") from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValidationError, IndexError) as e:
        raise BildError(f"learned-policy file {path!r} is corrupt or not a bild classifier "
                        f"({type(e).__name__}): retrain it with `bild train-policy`") from None


@register_policy("learned")
class LearnedPolicy(RulePolicy):
    """Fall back when a trained classifier predicts the large model would reject the draft."""

    path: str = Field(description="classifier file written by `bild train-policy`")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description=(
        "fall back when the predicted rejection probability exceeds this (0: always, 1: never)"))

    _classifier: Classifier = PrivateAttr()

    def model_post_init(self, context: object) -> None:
        path = Path(self.path).expanduser()
        mtime = path.stat().st_mtime if path.is_file() else 0.0
        self._classifier = load_classifier(str(path), mtime)

    def new_state(self) -> Round:
        return Round()

    def before_generation(self, state: Round, prompt_ids: list[int]) -> None:
        state.reset()
        state.previous_prob = 1.0

    def fallback(self, step: DraftStep) -> bool:
        clf = self._classifier
        if step.logits.shape[-1] != clf.vocab_size:
            raise BildError(f"learned-policy file {self.path!r} was trained for a vocabulary of {clf.vocab_size} "
                            f"tokens, but this pair has {step.logits.shape[-1]}")
        x = torch.tensor(features(step, step.state))
        if clf.hidden_size:
            hidden = step.hidden.float().cpu()
            if hidden.shape[-1] != clf.hidden_size:
                raise BildError(f"learned-policy file {self.path!r} reads a hidden state of {clf.hidden_size} "
                                f"values, but this small model's has {hidden.shape[-1]}")
            x = torch.cat([x, hidden])
        return clf.reject_probability(x) > self.threshold

    def after_draft(self, state: Round, step: DraftStep, fell_back: bool) -> None:
        state.add(step, kept=not fell_back)

    def after_verification(self, state: Round, verification: Verification, outcome: Outcome) -> None:
        state.reset()
