"""One training step for the lab's two trainers (the local pair, alignment): AdamW with a linear warm-up then a
cosine decay, gradients clipped to norm 1, and a smoothed loss for progress bars.

The trainers differ in what they train on and when they stop; how an update is made is decided here once.
"""

from __future__ import annotations

import math

import torch

WARMUP = 20  # steps of linear warm-up: AdamW's moment estimates are noisy over the first updates
CLIP = 1.0  # gradient norm bound: one bad batch cannot undo what was learned


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)


def learning_rate(peak: float, step: int, progress: float) -> float:
    """The rate at `step` (0-based) when a fraction `progress` of training is done: warm-up, then cosine to 0."""
    return peak * min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def update(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float) -> float:
    """One optimizer step on `loss` at learning rate `lr`; the loss as a number."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    return loss.item()


def smooth(average: float, value: float) -> float:
    """An exponential moving average of the loss (the first value starts it)."""
    return value if math.isnan(average) else 0.95 * average + 0.05 * value
