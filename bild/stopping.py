"""When to stop: EOS, `max_new_tokens`, stop strings.

`Stopper.cut` looks only at tokens committed since its last call, in place (no copy of the
sequence), so the per-token cost is a set lookup; stop strings decode a short tail of text, and
only when some are given.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class Stopper:
    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, eos_ids: set[int], max_new_tokens: int,
        stop_strings: list[str],
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_new_tokens = max_new_tokens
        self.stop_strings = stop_strings
        # A token decodes to at least one character, except for pieces of a multi-byte
        # character; a tail this long always covers the longest stop string.
        self.tail = 4 + 4 * max((len(s) for s in stop_strings), default=0)
        self.reason = ""

    def cut(self, seq: list[int], begin: int, checked: int) -> int | None:
        """How many new tokens (`seq[begin:]`) to keep if generation must stop; the first `checked`
        of them were seen before."""
        new = len(seq) - begin
        for i in range(checked, min(new, self.max_new_tokens)):
            if seq[begin + i] in self.eos_ids:
                self.reason = "eos"
                return i + 1
            if self.stop_strings:
                tail = self.tokenizer.decode(seq[begin + max(0, i + 1 - self.tail): begin + i + 1])
                if any(s in tail for s in self.stop_strings):
                    self.reason = "stop_string"
                    return i + 1
        if new >= self.max_new_tokens:
            self.reason = "max_new_tokens"
            return self.max_new_tokens
        return None

    def trim_text(self, text: str) -> str:
        return trim_text(text, self.stop_strings)


def trim_text(text: str, stop_strings: list[str]) -> str:
    """Cut decoded text at the end of the first stop string it contains."""
    ends = [text.find(s) + len(s) for s in stop_strings if s in text]
    return text[: min(ends)] if ends else text
