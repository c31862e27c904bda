"""Lookup first: context lookup (bild/sources.py) in front of the small model, for any policy.

Before each small pass, when the last `lookup_min` or more tokens occurred earlier in the prompt
or output, what followed them is drafted instead of asking the small model, and verified at once
with the pending drafts. A policy mixes it in beside its own rules (`class Mine(LookupFirst,
RulePolicy)`); its fallback and stopping rules still judge the small model's drafts, and its
rollback rule judges the looked-up ones too. A shorter match is not drafted, but its guess is shown
on the small model's step (`step.agrees`: whether it is the small model's top-1), a signal the
stopping rules read. `lookup_min=0` turns it off: the small model alone.
"""

from __future__ import annotations

from pydantic import Field

from bild.policy import Policy, ProposalView
from bild.sources import ContextLookup


class LookupFirst(Policy):
    """A policy that drafts from context lookup when the context repeats, else from the small model."""

    lookup_min: int = Field(2, ge=0, le=3, description=(
        "draft what followed the last N or more tokens where they occurred earlier (context lookup) instead of a "
        "small pass, when N >= this (0: never)"))

    def draft_source(self) -> ContextLookup | None:
        # down to one token: a shorter match is not drafted, but the small model's step shows its guess (`agrees`)
        return ContextLookup(max_ngram=3, min_ngram=1) if self.lookup_min else None

    def lookup(self, proposal: ProposalView) -> int:
        return len(proposal.tokens) if proposal.match >= self.lookup_min else 0
