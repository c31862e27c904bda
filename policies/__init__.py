"""Policy implementations and their registry.

Importing this package registers the built-in policies (`bild`, `exact`, `entropy`,
`topk-margin`, `learned`); third-party ones come from the `bild.policies` entry-point group on
demand.
"""

from policies import bild, exact, learned, uncertainty  # noqa: F401  (registers the built-ins)
from policies.registry import (
    ENTRY_POINT_GROUP,
    list_policies,
    make_policy,
    policy_class,
    register_policy,
)

__all__ = ["ENTRY_POINT_GROUP", "list_policies", "make_policy", "policy_class", "register_policy"]
