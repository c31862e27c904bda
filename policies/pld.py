"""`pld`: prompt lookup decoding in this engine: drafts only from context lookup, the small model never runs.

Before each verification, the latest earlier occurrence of the last 3 (then 2, then 1) tokens in
the prompt and output so far proposes what followed it, up to the draft cap; with no match the
large model decodes one token alone (Saxena 2023; transformers' `prompt_lookup_num_tokens`, which
bench runs as `hf-pld`). Verification is exact under greedy decoding and speculative sampling
under sampling (a lookup draft is a one-hot proposal), so the output is the large model's.
"""

from __future__ import annotations

from pydantic import Field

from bild.policy import DraftStep, ProposalView
from bild.registry import register_policy
from bild.sources import ContextLookup
from policies.rules import RollbackRule, RulePolicy


@register_policy("pld")
class PromptLookupPolicy(RulePolicy):
    """Prompt lookup decoding: context-lookup drafts only, verified by the large model; no small model."""

    uses_small = False
    max_ngram: int = Field(3, ge=1, le=8, description="the longest n-gram looked up (then shorter ones, down to 1)")
    rollback_rule: RollbackRule = "rejection"

    def draft_source(self) -> ContextLookup:
        return ContextLookup(max_ngram=self.max_ngram)

    def lookup(self, proposal: ProposalView) -> int:
        return len(proposal.tokens)

    def fallback(self, step: DraftStep) -> bool:  # never asked: the small model does not run
        return True
