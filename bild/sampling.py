"""Token choice: greedy, or sampling with temperature, top-k and top-p from a seeded generator.

`Sampler.distribution(logits)` is the distribution tokens are drawn from (temperature, then
top-k, then top-p filtering); the small model's drafts and the large model's tokens are drawn
from the same transform of their own logits, which is what speculative sampling's acceptance
rule needs. With `temperature == 0` decoding is greedy and `pick` is an argmax.
"""

from __future__ import annotations

import torch

from bild.config import GenerationConfig


class Sampler:
    def __init__(self, config: GenerationConfig, device: torch.device) -> None:
        self.greedy = config.temperature == 0
        self.temperature = config.temperature
        self.top_k = config.top_k
        self.top_p = config.top_p
        self.generator = None
        if not self.greedy:
            self.generator = torch.Generator(device=device)
            if config.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(config.seed)

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """Sampling probabilities over the last dimension. # [..., V]"""
        logits = logits.float() / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p is not None and self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
            # drop a token when the tokens strictly more likely already cover top_p
            drop = (sorted_probs.cumsum(-1) - sorted_probs) >= self.top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
            probs = probs / probs.sum(-1, keepdim=True)
        return probs

    def pick(self, logits: torch.Tensor, probs: torch.Tensor | None = None) -> int:
        """One token from `logits` [V]: the argmax, or a draw from `probs` (or their distribution)."""
        if self.greedy:
            return int(logits.argmax())
        probs = self.distribution(logits) if probs is None else probs
        # one generator for both models, wherever each lives: draw on its device
        return int(torch.multinomial(probs.to(self.generator.device), 1, generator=self.generator))

    def uniform(self, n: int, device: torch.device) -> torch.Tensor:
        """`n` uniform draws in [0, 1) from the seeded generator, on `device` (for acceptance tests). # [n]"""
        return torch.rand(n, generator=self.generator, device=self.generator.device).to(device)
