"""The built-in policies (`bild`, `exact`, `entropy`, `topk-margin`, `learned`, `adaptive`, `pld`).

Importing this package registers them; the core finds them without importing it, through the
`bild.policies` entry points declared in pyproject.toml, like any third-party policy. The
registry's functions are re-exported here for convenience (they live in bild/registry.py).
"""

from bild.registry import (
    ENTRY_POINT_GROUP,
    list_policies,
    make_policy,
    policy_class,
    register_policy,
    unregister_policy,
)
from policies import adaptive, bild, exact, learned, pld, uncertainty  # noqa: F401  (registers the built-ins)

__all__ = ["ENTRY_POINT_GROUP", "list_policies", "make_policy", "policy_class", "register_policy",
           "unregister_policy"]
