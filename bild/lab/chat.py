"""From an example to token ids: a chat model reads its tokenizer's chat template, a plain model the text.

`--chat auto` (the default) uses the template when the tokenizer has one and the example is a
conversation (a chat row, or a task that gives its instruction as a user turn); `on` always does
(a plain prompt becomes one user turn); `off` never does (a conversation is then plain text: its
system message, messages, answers and turns separated by blank lines; a task's one-message form
gives way to its plain prompt, the T5 prefix of the paper's checkpoints). `--system TEXT` puts a
system message first, in either form.

`conversations(...)` is the one door from examples to prompt ids, for every command (bench, tune
and its oracle, traces, align): it refuses a chat mode the tokenizer cannot honour, renders every
example's first prompt up front (a template that raises, a prompt that does not fit the context,
an empty prompt: one line naming the example, before anything is measured) and gives one
`Conversation` per example. A multi-turn example is answered turn by turn, as MT-bench does:
`Conversation.prompt_ids(answers)` is the prompt of the next turn after the method's own answers so
far, so every method is judged on the conversation it produced. The engine only ever sees ids.
"""

from __future__ import annotations

from typing import Literal

from transformers import PreTrainedTokenizerBase

from bild.engine import encode_prompt
from bild.errors import BildError
from bild.lab.tasks import Example
from bild.pair import ModelPair

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
        self.first: list[int] = []  # the first turn's ids, once `conversations` has checked them

    def prompt_ids(self, answers: list[str]) -> list[int]:
        """The ids of the prompt for turn `len(answers)`, after these answers to the earlier turns."""
        later = self.example.turns[: len(answers)]
        if not self.chat:
            history = [m["content"] for m in self.example.messages] if len(self.example.messages) > 1 else \
                [self.example.prompt]
            parts = [*([self.system] if self.system else []), *history]
            parts += [text for answer, turn in zip(answers, later, strict=True) for text in (answer, turn)]
            return self.tokenizer(TURN_BREAK.join(parts))["input_ids"]
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += self.example.messages or [{"role": "user", "content": self.example.prompt}]
        for answer, turn in zip(answers, later, strict=True):
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": turn}]
        try:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                      return_dict=True)["input_ids"]
        except Exception as e:  # jinja's errors, and templates that raise on purpose ("System role not supported")
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            hint = ": drop --system (this template takes no system message)" if self.system and "system" in \
                first.lower() else "; fix the template, or use --chat off"
            raise BildError(f"example {self.example.id!r}: the tokenizer's chat template failed ({type(e).__name__}: "
                            f"{first}){hint}") from None

    def turn_prompts(self, answers: list[str]) -> list[list[int]]:
        """The prompt of every turn, after the given answers to the turns before it (an output's own answers)."""
        return [self.prompt_ids(answers[:turn]) for turn in range(self.turns)]


def conversations(pair: ModelPair, examples: list[Example], mode: ChatMode, system: str | None,
                  max_new_tokens: int | None) -> list[Conversation]:
    """Every example as a conversation, its first prompt rendered and checked now: the one door from examples to
    prompt ids. `max_new_tokens`: the first prompt must leave room for them in the context (None: a caller that
    keeps only a prompt's last tokens, as align does, checks nothing but that it renders)."""
    check_chat(pair.tokenizer, mode, pair.large_name)
    found = [Conversation(pair.tokenizer, e, mode, system) for e in examples]
    for conversation in found:
        try:
            ids = conversation.prompt_ids([])
            conversation.first = ids if max_new_tokens is None else encode_prompt(pair, ids, max_new_tokens)
        except BildError as e:
            raise BildError(f"example {conversation.example.id!r}: {e}") from None
        if max_new_tokens is not None and conversation.turns > 1:  # the last turn, were every answer empty:
            last = conversation.turns - 1  # if it cannot fit now, it cannot fit after the real answers
            try:
                encode_prompt(pair, conversation.prompt_ids([""] * last), max_new_tokens)
            except BildError as e:
                raise BildError(f"example {conversation.example.id!r}, turn {last + 1} of {conversation.turns} "
                                f"(before any answer is added): {e}") from None
    return found
