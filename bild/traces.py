"""Training data and training for the `learned` policy.

`collect_traces` decodes each prompt with a recording policy that never falls back and keeps
drafts up to the large model's first disagreement (greedy speculative decoding, cap included),
so drafts are seen in the states a real run meets: every draft step's features (see
policies/learned.py) are stored with its label, 1 when the large model's own token at that
position differs (it would reject the draft).

`train_classifier` fits a logistic regression on the traces of most prompts and reports its
ROC AUC on the held-out prompts' traces (prompts split by a hash of their id, so no prompt is on
both sides), next to the AUC of the small model's max probability alone, the `bild` rule's
signal.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from pydantic import PrivateAttr

from bild.config import GenerationConfig
from bild.engine import generate
from bild.errors import BildError
from bild.pair import ModelPair
from bild.policy import DraftStep, Policy, Verification
from bild.tasks import Example
from policies.learned import FEATURES, FORMAT, features

# --- traces ------------------------------------------------------------------------------------


class TraceRecorder(Policy):
    """Never falls back; labels each verified draft; keeps drafts up to the first rejection."""

    _pending: list[list[float]] = PrivateAttr(default_factory=list)
    _rows: list[tuple[list[float], int]] = PrivateAttr(default_factory=list)

    @property
    def rows(self) -> list[tuple[list[float], int]]:
        return self._rows

    def fallback(self, step: DraftStep) -> bool:
        self._pending.append(features(step))
        return False

    def rollback(self, verification: Verification) -> int:
        for x, draft, large in zip(self._pending, verification.draft_tokens, verification.large_tokens, strict=False):
            self._rows.append((x, int(draft != large)))
        self._pending.clear()
        return verification.first_mismatch


def collect_traces(pair: ModelPair, examples: list[Example], config: GenerationConfig, out: str | Path,
                   progress: bool = True) -> dict[str, Any]:
    """Write one JSON line per draft step to `out`; return counts."""
    from tqdm.auto import tqdm

    out = Path(out)
    try:
        handle = out.open("w")
    except OSError as e:
        raise BildError(f"cannot write traces to {str(out)!r}: {e.strerror}") from e
    rows = positives = 0
    with handle:
        for example in tqdm(examples, desc="traces", unit="prompt", disable=not progress):
            recorder = TraceRecorder()
            generate(pair, example.prompt, recorder, config)
            for x, label in recorder.rows:
                handle.write(json.dumps({"prompt": example.id, **dict(zip(FEATURES, x, strict=True)),
                                         "rejected": label}) + "\n")
                positives += label
            rows += len(recorder.rows)
    meta = {"rows": rows, "prompts": len(examples), "rejected_rate": positives / rows if rows else None,
            "vocab_size": pair.vocab_size, "small": pair.small_name, "large": pair.large_name,
            "max_new_tokens": config.max_new_tokens, "max_draft_tokens": config.max_draft_tokens}
    out.with_name(out.name + ".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# --- training ------------------------------------------------------------------------------------


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        raise BildError("the held-out traces hold only one class: collect traces on more prompts")
    greater = (pos[:, None] > neg[None, :]).float().mean()
    ties = (pos[:, None] == neg[None, :]).float().mean()
    return float(greater + 0.5 * ties)


def held_out(prompt_id: str, fraction: float) -> bool:
    return int(hashlib.sha256(prompt_id.encode()).hexdigest(), 16) % 1000 < fraction * 1000


def load_traces(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise BildError(f"traces file {str(path)!r} does not exist: collect traces with `bild traces`")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
            rows.append({"prompt": str(row["prompt"]), "x": [float(row[f]) for f in FEATURES],
                         "y": int(row["rejected"])})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise BildError(f"{path}:{number}: not a trace row ({type(e).__name__}: {e}); "
                            f"each line needs 'prompt', {', '.join(FEATURES)} and 'rejected'") from None
    if not rows:
        raise BildError(f"traces file {str(path)!r} is empty")
    meta_path = path.with_name(path.name + ".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return rows, meta


def train_classifier(traces: str | Path, out: str | Path, held_out_fraction: float = 0.2,
                     steps: int = 500) -> dict[str, Any]:
    """Fit, evaluate on held-out prompts, save; return the training description."""
    rows, meta = load_traces(traces)
    if "vocab_size" not in meta:
        raise BildError(f"{traces}.meta.json is missing: traces must come from `bild traces`, which writes it")
    train = [r for r in rows if not held_out(r["prompt"], held_out_fraction)]
    test = [r for r in rows if held_out(r["prompt"], held_out_fraction)]
    if not train or not test:
        raise BildError(f"{len({r['prompt'] for r in rows})} prompts are too few to hold some out: "
                        "collect traces on more prompts")
    x = torch.tensor([r["x"] for r in train])  # [N, F]
    y = torch.tensor([r["y"] for r in train], dtype=torch.float32)  # [N]
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    weights = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([weights, bias], max_iter=steps, line_search_fn="strong_wolfe")
    xn = (x - mean) / std

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xn @ weights + bias, y)
        loss = loss + 1e-4 * weights.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    xt = (torch.tensor([r["x"] for r in test]) - mean) / std
    yt = torch.tensor([r["y"] for r in test])
    with torch.no_grad():
        auc = roc_auc(xt @ weights + bias, yt)
    auc_max_prob = roc_auc(-torch.tensor([r["x"][FEATURES.index("max_prob")] for r in test]), yt)
    training = {"traces": str(traces), "rows": len(train), "held_out_rows": len(test),
                "prompts": len({r["prompt"] for r in train}), "held_out_prompts": len({r["prompt"] for r in test}),
                "rejected_rate": float(y.mean()), "roc_auc_held_out": auc, "roc_auc_max_prob_held_out": auc_max_prob,
                "pair": {k: meta.get(k) for k in ("small", "large")}}
    document = {"format": FORMAT, "features": FEATURES, "mean": mean.tolist(), "std": std.tolist(),
                "weights": weights.detach().tolist(), "bias": float(bias.detach()), "vocab_size": meta["vocab_size"],
                "training": training}
    try:
        Path(out).write_text(json.dumps(document, indent=2) + "\n")
    except OSError as e:
        raise BildError(f"cannot write the classifier to {str(out)!r}: {e.strerror}") from e
    return training
