"""Training data and training for the `learned` policy.

`collect_traces` decodes each prompt with `exact` (never falling back: drafts are kept up to the
large model's first disagreement, cap included), so drafts are seen in the states a real run
meets, and an observer stores every draft step's features (see policies/learned.py) with its
label, 1 when the large model's own token at that position differs (it would reject the draft).

`train_classifier` fits a logistic regression on the traces of most prompts and reports its
ROC AUC on the held-out prompts' traces (prompts split by a hash of their id, so no prompt is on
both sides), next to the AUC of the small model's max probability alone, the `bild` rule's
signal.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from bild.config import GenerationConfig
from bild.engine import generate
from bild.errors import BildError
from bild.lab.report import check_output, write_atomic
from bild.lab.tasks import Example
from bild.observer import Observer
from bild.pair import ModelPair
from bild.policy import DraftStep, Outcome, Verification
from policies.learned import FEATURES, FORMAT, features

# --- traces ------------------------------------------------------------------------------------


class TraceRecorder(Observer):
    """Records each draft's features when drafted and its label when verified."""

    def __init__(self) -> None:
        self.pending: list[list[float]] = []
        self.rows: list[tuple[list[float], int]] = []

    def after_draft(self, step: DraftStep, fallback: bool) -> None:
        if not fallback:
            self.pending.append(features(step))

    def after_verification(self, verification: Verification, outcome: Outcome) -> None:
        for x, draft, large in zip(self.pending, verification.draft_tokens, verification.large_tokens, strict=False):
            self.rows.append((x, int(draft != large)))
        self.pending.clear()


def collect_traces(pair: ModelPair, examples: list[Example], config: GenerationConfig, out: str | Path,
                   progress: bool = True, inputs: list[str | None] = ()) -> dict[str, Any]:
    """Decode with greedy speculative decoding (`exact`, never falling back) and write one JSON line per
    draft step to `out`; return counts."""
    from tqdm.auto import tqdm

    from policies import make_policy

    out = check_output(out, list(inputs))
    policy = make_policy("exact")
    rows = positives = 0
    lines = []
    for example in tqdm(examples, desc="traces", unit="prompt", disable=not progress):
        recorder = TraceRecorder()
        generate(pair, example.prompt, policy, config, observers=[recorder])
        for x, label in recorder.rows:
            lines.append(json.dumps({"prompt": example.id, **dict(zip(FEATURES, x, strict=True)), "rejected": label}))
            positives += label
        rows += len(recorder.rows)
    write_atomic(out, "".join(line + "\n" for line in lines))
    meta = {"rows": rows, "prompts": len(examples), "rejected_rate": positives / rows if rows else None,
            "vocab_size": pair.vocab_size, "small": pair.small_name, "large": pair.large_name,
            "max_new_tokens": config.max_new_tokens, "max_draft_tokens": config.max_draft_tokens}
    write_atomic(out.with_name(out.name + ".meta.json"), json.dumps(meta, indent=2) + "\n")
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
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise BildError(f"traces file {str(path)!r} is not UTF-8 text (byte {e.start}): give the JSONL of "
                        "`bild traces`") from None
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            x = [float(row[f]) for f in FEATURES]
            y = row["rejected"]
            if not all(math.isfinite(v) for v in x) or y not in (0, 1) or isinstance(y, bool):
                raise ValueError("features must be finite numbers and 'rejected' 0 or 1")
            rows.append({"prompt": str(row["prompt"]), "x": x, "y": int(y)})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise BildError(f"{path}:{number}: not a trace row ({type(e).__name__}: {e}); "
                            f"each line needs 'prompt', {', '.join(FEATURES)} and 'rejected'") from None
    if not rows:
        raise BildError(f"traces file {str(path)!r} is empty")
    meta_path = path.with_name(path.name + ".meta.json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as e:
        raise BildError(f"{meta_path} is corrupt ({type(e).__name__}): collect the traces again with "
                        "`bild traces`") from None
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
    write_atomic(check_output(out, [traces]), json.dumps(document, indent=2) + "\n")
    return training
