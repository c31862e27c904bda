"""BiLD: a small model drafts, a large model falls back and rolls back (Kim et al. 2023).

The decoding core. Names load on first use, so `import bild` (and the `bild` command's
`--help`) does not import torch until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "BildError", "ContextLookup", "DraftSource", "DraftStep", "GenerationConfig", "GenerationResult",
    "GenerationStats", "History", "LookupStep", "ModelPair", "Observer", "Outcome", "Policy", "Proposal",
    "ProposalView", "Round", "Verdict", "Verification", "generate", "generate_single", "list_policies",
    "make_policy", "policy_class", "register_policy", "unregister_policy",
]
_MODULES = {
    "bild.errors": ["BildError"], "bild.config": ["GenerationConfig"], "bild.pair": ["ModelPair"],
    "bild.engine": ["generate", "generate_single"], "bild.observer": ["Observer"],
    "bild.policy": ["DraftStep", "History", "LookupStep", "Outcome", "Policy", "ProposalView", "Verdict",
                    "Verification"],
    "bild.schedule": ["Round"], "bild.sources": ["ContextLookup", "DraftSource", "Proposal"],
    "bild.stats": ["GenerationResult", "GenerationStats"],
    "bild.registry": ["list_policies", "make_policy", "policy_class", "register_policy", "unregister_policy"],
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

if TYPE_CHECKING:
    from bild.config import GenerationConfig
    from bild.engine import generate, generate_single
    from bild.errors import BildError
    from bild.observer import Observer
    from bild.pair import ModelPair
    from bild.policy import DraftStep, History, LookupStep, Outcome, Policy, ProposalView, Verdict, Verification
    from bild.registry import list_policies, make_policy, policy_class, register_policy, unregister_policy
    from bild.schedule import Round
    from bild.sources import ContextLookup, DraftSource, Proposal
    from bild.stats import GenerationResult, GenerationStats


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bild' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
