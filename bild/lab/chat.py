"""From an example to token ids: a chat model reads its tokenizer's chat template, a plain model the text.

`--chat auto` (the default) uses the template when the tokenizer has one and the example is a
conversation (a chat row, or a task that gives its instruction as a user turn); `on` always does
(a plain prompt becomes one user turn); `off` never does (a conversation is then plain text: its
turns and answers separated by blank lines). `--system TEXT` puts a system message first.

A multi-turn example is answered turn by turn, as MT-bench does: `Conversation.prompt_ids(answers)`
is the prompt of the next turn after the method's own answers so far, so every method is judged on
the conversation it produced. The engine only ever sees token ids.
"""

from __future__ import annotations

from typing import Literal

from transformers import PreTrainedTokenizerBase

from bild.errors import BildError
from bild.lab.tasks import Example

ChatMode = Literal["auto", "on", "off"]
TURN_BREAK = "\n\n"  # between a conversation's turns and answers, as plain text


def has_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def check_chat(tokenizer: PreTrainedTokenizerBase, mode: ChatMode, name: str) -> None:
    if mode == "on" and not has_template(tokenizer):
        raise BildError(f"--chat on, but the tokenizer of {name!r} has no chat template: use --chat off (plain "
                        "text), or a chat model (an instruct checkpoint)")


class Conversation:
    """One example as a sequence of prompts, one per user turn."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, example: Example, mode: ChatMode = "auto",
                 system: str | None = None) -> None:
        self.tokenizer, self.example, self.system = tokenizer, example, system
        self.chat = mode == "on" or (mode == "auto" and example.chat and has_template(tokenizer))
        self.turns = 1 + len(example.turns)

    def prompt_ids(self, answers: list[str]) -> list[int]:
        """The ids of the prompt for turn `len(answers)`, after these answers to the earlier turns."""
        later = self.example.turns[: len(answers)]
        if not self.chat:
            text = self.example.prompt + "".join(TURN_BREAK + a + TURN_BREAK + t for a, t in zip(answers, later,
                                                                                                 strict=True))
            return self.tokenizer(text)["input_ids"]
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += self.example.messages or [{"role": "user", "content": self.example.prompt}]
        for answer, turn in zip(answers, later, strict=True):
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": turn}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
