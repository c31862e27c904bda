"""One model's side of decoding: its KV cache and how much of the token sequence it holds.

Both models read one shared token sequence (a Python list of ids; for encoder-decoders the
decoder's sequence, the prompt going to the encoder once). A `Decoder` remembers how many
positions of it are in its cache (`seen`). `catch_up` feeds every position it has not seen in
ONE forward pass (the prompt on the first call, then one token or a whole draft), and
`rewind` cuts the cache back after a rollback. No position is ever recomputed unless it was
rolled back: the invariant the tests check through `positions`.
"""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel

from bild.cache import cache_kwarg, new_cache, rewind


class Decoder:
    def __init__(self, model: PreTrainedModel, vocab: int, encoder_ids: list[int] | None = None) -> None:
        self.model = model
        self.vocab = vocab  # logit width shared with the other model
        self.device = model.device
        self.encoder_decoder = encoder_ids is not None
        self.cache = new_cache(model, self.encoder_decoder)
        self.input_key = "decoder_input_ids" if self.encoder_decoder else "input_ids"
        self.kwargs: dict = {cache_kwarg(model): self.cache, "use_cache": True}
        if self.encoder_decoder:
            ids = torch.tensor([encoder_ids], device=self.device)  # [1, S]
            self.kwargs["encoder_outputs"] = model.get_encoder()(input_ids=ids)
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.seen = 0
        self.positions = 0  # tokens fed so far, for the statistics
        self.calls = 0

    def catch_up(self, seq: list[int], keep: int) -> torch.Tensor:
        """Feed `seq[seen:]` in one pass; return the logits of its last `keep` positions. # [keep, V]"""
        new = seq[self.seen:]
        ids = torch.tensor([new], device=self.device)  # [1, T]
        if self.keeps_logits:
            self.kwargs["logits_to_keep"] = keep
        logits = self.model(**{self.input_key: ids}, **self.kwargs).logits  # [1, T or keep, V']
        self.seen = len(seq)
        self.positions += len(new)
        self.calls += 1
        return logits[0, -keep:, : self.vocab]

    def rewind(self, length: int) -> None:
        """Forget every position from `length` on."""
        if length < self.seen:
            rewind(self.cache, length)
            self.seen = length
