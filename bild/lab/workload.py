"""What a bench or a study measures on: built once per command, handed to every layer that measures.

A `Workload` is the pair, its prompts (examples, and the conversations they become under the chat
mode and system prompt: bild/lab/chat.py, the one door), the generation settings, the cost model
policies read as `step.costs`, how many times each prompt is timed, and whether progress is shown.
`measure`, tune's objective, baseline and confirmation take it instead of threading the same eight
values by hand; `priced` gives the same workload with the cost model a study settles on.
"""

from __future__ import annotations

import dataclasses
import functools

from bild.config import GenerationConfig
from bild.costs import CostModel
from bild.errors import BildError
from bild.lab.chat import ChatMode, Conversation, conversations
from bild.lab.tasks import Example
from bild.pair import ModelPair


@dataclasses.dataclass(frozen=True)
class Workload:
    pair: ModelPair
    examples: list[Example]
    config: GenerationConfig
    costs: CostModel | None = None  # what policies read as `step.costs` (None: the pair's own, else a prior)
    chat: ChatMode = "auto"
    system: str | None = None
    repeats: int = 1  # timed runs per prompt and method, their median kept
    progress: bool = True

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise BildError(f"--repeats must be at least 1, got {self.repeats}")
        if not self.examples:
            raise BildError("no prompts to measure: give at least one")

    @functools.cached_property
    def talks(self) -> list[Conversation]:
        """Each example as the conversation its prompts come from (checked once: chat mode, context length)."""
        return conversations(self.pair, self.examples, self.chat, self.system, self.config.max_new_tokens)

    def check(self) -> None:
        """Refuse, in one line, a prompt that cannot run: before anything is calibrated or measured."""
        self.talks  # noqa: B018  (rendering the conversations is the check)

    def priced(self, costs: CostModel | None) -> Workload:
        """The same workload with the cost model policies read, its rendered prompts kept."""
        priced = dataclasses.replace(self, costs=costs)
        if "talks" in self.__dict__:
            priced.__dict__["talks"] = self.talks
        return priced
