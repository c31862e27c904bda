"""Training data and training for the `learned` policy.

`collect_traces` decodes each prompt with `exact` never stopping early (drafts are kept up to
the large model's first disagreement, cap included), so drafts are seen in the states a real run
meets, and an observer stores every judged draft (up to and including the first rejected one)
with its features (policies/learned.py), optionally the small model's hidden state, and both
labels: `mismatch` (the large model's argmax differs: what the `exact` rule rejects) and `nll`
(the large model's −log probability of the draft: the `nll` rule rejects it above its threshold
unless it is the argmax).

`train_classifier` fits a logistic regression or a one-hidden-layer MLP on the traces of most
prompts, against the label of the rule that will be in use, and reports its ROC AUC on the
held-out prompts' traces with a bootstrap interval over those prompts, next to the AUC of the
small model's max probability alone (the `bild` rule's signal). Prompts are split by a hash of
their id, so no prompt is on both sides.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

import torch

from bild.engine import generate
from bild.errors import BildError
from bild.files import write_atomic
from bild.lab.corpus import hash_fraction
from bild.lab.outputs import CLASSIFIER, TRACES, TRACES_META, check_output
from bild.lab.workload import Workload
from bild.observer import Observer
from bild.policy import DraftStep, Outcome, Verification
from policies.learned import FEATURES, FORMAT, Round, features

# --- traces ------------------------------------------------------------------------------------


class TraceRecorder(Observer):
    """Each judged draft's features (and hidden state) with both labels."""

    def __init__(self, hidden: bool) -> None:
        self.hidden = hidden
        self.round = Round()
        self.pending: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []

    def before_generation(self, prompt_ids: list[int]) -> None:
        self.round = Round()

    def after_draft(self, step: DraftStep, fallback: bool) -> None:
        row = dict(zip(FEATURES, features(step, self.round), strict=True))
        if self.hidden:
            row["hidden"] = step.hidden.float().cpu().tolist()
        self.pending.append(row)
        self.round.add(step, kept=not fallback)

    def after_verification(self, verification: Verification, outcome: Outcome) -> None:
        for row, draft, large, nll in zip(self.pending, verification.draft_tokens, verification.large_tokens,
                                          verification.draft_nll, strict=False):
            self.rows.append({**row, "mismatch": int(draft != large), "nll": nll})
            if draft != large:  # later drafts were judged after a wrong prefix
                break
        self.pending.clear()
        self.round.reset()


def meta_path(traces: str | Path) -> Path:
    """The metadata file written beside a traces file."""
    traces = Path(traces)
    return traces.with_name(traces.name + ".meta.json")


def collect_traces(work: Workload, out: str | Path, inputs: list[str | None] = (), hidden: bool = False
                   ) -> dict[str, Any]:
    """Write one JSON line per judged draft to `out` (and `out.meta.json`); return counts. Each example's first
    turn is decoded, as bench renders it (the workload's chat mode and system prompt: bild/lab/chat.py)."""
    from tqdm.auto import tqdm

    from policies import make_policy

    out = check_output(out, list(inputs), TRACES)
    check_output(meta_path(out), list(inputs), TRACES_META)
    policy = make_policy("exact", {"verify_below": 0.0, "lookup_min": 0})  # every draft the small model's own
    lines, mismatches = [], 0
    pair, examples, config = work.pair, work.examples, work.config
    for example, talk in tqdm(list(zip(examples, work.talks, strict=True)), desc="traces", unit="prompt",
                              disable=not work.progress):
        recorder = TraceRecorder(hidden)
        generate(pair, talk.first, policy, config, observers=[recorder])
        for row in recorder.rows:
            lines.append(json.dumps({"prompt": example.id, **row}))
            mismatches += row["mismatch"]
    write_atomic(out, "".join(line + "\n" for line in lines))
    meta = {"rows": len(lines), "prompts": len(examples), "rejected_rate": mismatches / len(lines) if lines else None,
            "vocab_size": pair.vocab_size, "hidden_size": pair.small.config.get_text_config(decoder=True).hidden_size
            if hidden else 0, "small": pair.small_name, "large": pair.large_name,
            "max_new_tokens": config.max_new_tokens, "max_draft_tokens": config.max_draft_tokens,
            "chat": work.chat, "system": work.system}
    write_atomic(meta_path(out), json.dumps(meta, indent=2) + "\n")
    return meta


# --- training ------------------------------------------------------------------------------------


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    from scipy.stats import rankdata

    positives = int((labels == 1).sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise BildError("the held-out traces hold only one class: collect traces on more prompts")
    ranks = rankdata(scores.double().numpy())  # ties share their mean rank
    return float((ranks[(labels == 1).numpy()].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_auc(scores: torch.Tensor, labels: torch.Tensor, prompts: list[str], rounds: int = 200,
                  seed: int = 0) -> tuple[float, float]:
    """A 95% interval of the AUC, resampling prompts (their drafts are not independent)."""
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_prompt.setdefault(p, []).append(i)
    groups, rng, values = list(by_prompt.values()), random.Random(seed), []
    for _ in range(rounds):
        index = torch.tensor([i for g in rng.choices(groups, k=len(groups)) for i in g])
        if 0 < int(labels[index].sum()) < len(index):
            values.append(roc_auc(scores[index], labels[index]))
    values.sort()
    return values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1]


def load_traces(path: str | Path, hidden_size: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise BildError(f"traces file {str(path)!r} does not exist: collect traces with `bild traces`")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise BildError(f"traces file {str(path)!r} is not UTF-8 text (byte {e.start}): give the JSONL of "
                        "`bild traces`") from None
    meta_file = meta_path(path)
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as e:
        raise BildError(f"{meta_file} is corrupt ({type(e).__name__}): collect the traces again with "
                        "`bild traces`") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            x = [float(row[f]) for f in FEATURES] + [float(v) for v in row.get("hidden", [])[:hidden_size]]
            mismatch, nll = row["mismatch"], float(row["nll"])
            if not all(math.isfinite(v) for v in (*x, nll)) or mismatch not in (0, 1) or isinstance(mismatch, bool):
                raise ValueError("features must be finite numbers and 'mismatch' 0 or 1")
            if len(x) != len(FEATURES) + hidden_size:
                raise ValueError(f"no hidden state of {hidden_size} values (collect with `bild traces --hidden`)")
            rows.append({"prompt": str(row["prompt"]), "x": x, "mismatch": int(mismatch), "nll": nll})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise BildError(f"{path}:{number}: not a trace row ({type(e).__name__}: {e}); each line needs "
                            f"'prompt', {', '.join(FEATURES)}, 'mismatch' and 'nll'") from None
    if not rows:
        raise BildError(f"traces file {str(path)!r} is empty")
    return rows, meta


def label(row: dict[str, Any], rule: str, threshold: float) -> int:
    """1 when the rule in use rejects the draft."""
    return row["mismatch"] if rule == "exact" else int(row["mismatch"] and row["nll"] > threshold)


def fit(x: torch.Tensor, y: torch.Tensor, model: str, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Weights of a logistic regression or a one-hidden-layer MLP on standardised inputs [N, F]."""
    torch.manual_seed(seed)
    sizes = [x.shape[1], 32, 1] if model == "mlp" else [x.shape[1], 1]
    layers = [torch.nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
    net = torch.nn.Sequential(*(m for layer in layers for m in (layer, torch.nn.ReLU())))[:-1]
    opt = torch.optim.LBFGS(net.parameters(), max_iter=300 if model == "mlp" else 100,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(-1), y)
        loss = loss + 1e-4 * sum(layer.weight.square().sum() for layer in layers)
        loss.backward()
        return loss

    opt.step(closure)
    return [(layer.weight.detach(), layer.bias.detach()) for layer in layers]


def scores_of(weights: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    z = x
    for i, (w, b) in enumerate(weights):
        z = z @ w.T + b
        if i < len(weights) - 1:
            z = torch.relu(z)
    return z.squeeze(-1)


def train_classifier(traces: str | Path, out: str | Path, held_out_fraction: float = 0.2, rule: str = "nll",
                     threshold: float = 5.0, model: str = "logistic", hidden: bool = False) -> dict[str, Any]:
    """Fit, evaluate on held-out prompts, save; return the training description."""
    meta = load_traces(traces)[1]
    if "vocab_size" not in meta:
        raise BildError(f"{traces}.meta.json is missing: traces must come from `bild traces`, which writes it")
    hidden_size = meta.get("hidden_size", 0) if hidden else 0
    if hidden and not hidden_size:
        raise BildError(f"{traces} holds no hidden states: collect them with `bild traces --hidden`")
    rows = load_traces(traces, hidden_size)[0]
    train = [r for r in rows if hash_fraction(r["prompt"]) >= held_out_fraction]
    test = [r for r in rows if hash_fraction(r["prompt"]) < held_out_fraction]
    if not train or not test:
        raise BildError(f"{len({r['prompt'] for r in rows})} prompts are too few to hold some out: "
                        "collect traces on more prompts")
    x = torch.tensor([r["x"] for r in train])  # [N, F]
    y = torch.tensor([label(r, rule, threshold) for r in train], dtype=torch.float32)  # [N]
    if not 0 < float(y.sum()) < len(y):
        raise BildError(f"every training draft has the same label under the {rule} rule: collect traces on more "
                        "prompts, or pick another --rollback-threshold")
    mean, std = x.mean(0), x.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant feature: scale 1, weight learns 0
    weights = fit((x - mean) / std, y, model)
    xt = (torch.tensor([r["x"] for r in test]) - mean) / std
    yt = torch.tensor([label(r, rule, threshold) for r in test])
    prompts = [r["prompt"] for r in test]
    with torch.no_grad():
        scores = scores_of(weights, xt)
    baseline = -torch.tensor([r["x"][FEATURES.index("max_prob")] for r in test])
    auc, base_auc = roc_auc(scores, yt), roc_auc(baseline, yt)
    training = {"traces": str(traces), "rows": len(train), "held_out_rows": len(test), "model": model,
                "prompts": len({r["prompt"] for r in train}), "held_out_prompts": len(set(prompts)),
                "rejected_rate": float(y.mean()), "roc_auc_held_out": auc,
                "roc_auc_interval": bootstrap_auc(scores, yt, prompts),
                "roc_auc_max_prob_held_out": base_auc,
                "roc_auc_max_prob_interval": bootstrap_auc(baseline, yt, prompts),
                "pair": {k: meta.get(k) for k in ("small", "large")}}
    document = {"format": FORMAT, "features": FEATURES, "hidden_size": hidden_size, "mean": mean.tolist(),
                "std": std.tolist(), "layers": [{"weight": w.tolist(), "bias": b.tolist()} for w, b in weights],
                "label": {"rule": rule, "threshold": threshold if rule == "nll" else None},
                "vocab_size": meta["vocab_size"], "training": training}
    write_atomic(check_output(out, [traces, meta_path(traces)], CLASSIFIER), json.dumps(document, indent=2) + "\n")
    return training
