"""The Policy interface and the registry: decorators, entry points, validation, close matches."""

from __future__ import annotations

import sys
import textwrap
import typing

import pytest
from pydantic import Field

from bild import BildError, Policy
from bild.policy import DraftStep, Verification
from policies import ENTRY_POINT_GROUP, list_policies, make_policy, policy_class, register_policy, unregister_policy


def test_builtins_are_registered_with_bounded_parameters():
    assert {"bild", "exact", "entropy", "topk-margin", "learned", "adaptive"} <= set(list_policies())
    for name in ("bild", "exact", "entropy", "topk-margin", "learned"):
        cls = policy_class(name)
        for key, field in cls.model_fields.items():
            kinds = {type(m).__name__ for m in field.metadata}
            choices = typing.get_origin(field.annotation) is typing.Literal or field.annotation is bool
            assert {"Ge", "Le"} <= kinds or choices or key == "path", f"{name}.{key} is unbounded"


def test_parameters_are_validated_and_serialised():
    policy = make_policy("bild", {"fallback_threshold": "0.25", "rollback_threshold": 3})
    assert policy.params() == {"fallback_threshold": 0.25, "rollback_threshold": 3.0, "rollback_rule": "nll"}
    assert make_policy(policy, {"rollback_threshold": 1.0}).rollback_threshold == 1.0
    with pytest.raises(BildError, match="less than or equal to 1"):
        make_policy("bild", {"fallback_threshold": 1.5})
    with pytest.raises(BildError, match="did you mean 'rollback_threshold'"):
        make_policy("bild", {"rollbak_threshold": 2})
    with pytest.raises(BildError, match="valid number"):
        make_policy("exact", {"verify_below": "high"})


def test_unknown_policy_lists_close_matches():
    with pytest.raises(BildError, match=r"did you mean 'exact'\?.*known policies: adaptive, bild, entropy, exact"):
        policy_class("exakt")


def test_decorator_registers_a_custom_policy_and_rejects_name_clashes():
    @register_policy("test-greedy-large")
    class LargeOnly(Policy):
        """Always ask the large model."""

        margin: float = Field(0.1, ge=0, le=1)

        def fallback(self, step: DraftStep) -> bool:
            return True

        def rollback(self, verification: Verification) -> int:
            return 0

    try:
        assert make_policy("test-greedy-large", {"margin": 0.5}).margin == 0.5
        assert LargeOnly.name == "test-greedy-large"
        with pytest.raises(ValueError, match="already taken"):
            register_policy("test-greedy-large")(type("Other", (LargeOnly,), {}))
        with pytest.raises(TypeError):
            register_policy("not-a-policy")(dict)
    finally:
        unregister_policy("test-greedy-large")


def test_policy_must_implement_both_rules():
    class Half(Policy):
        def fallback(self, step: DraftStep) -> bool:
            return False

    with pytest.raises(TypeError, match="rollback"):
        Half()


@pytest.fixture
def third_party_package(tmp_path, monkeypatch):
    """An installed distribution (dist-info on sys.path) that declares a policy entry point."""
    pkg = tmp_path / "thirdparty_policies.py"
    pkg.write_text(textwrap.dedent('''
        from pydantic import Field
        from bild import Policy

        class Stubborn(Policy):
            """Keeps at most `keep` drafts."""
            keep: int = Field(2, ge=0, le=10)
            def fallback(self, step):
                return False
            def rollback(self, verification):
                return min(self.keep, verification.n)
    '''))
    dist = tmp_path / "thirdparty_policies-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-policies\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nstubborn = thirdparty_policies:Stubborn\nbroken = no_such_module:X\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    unregister_policy("stubborn")
    sys.modules.pop("thirdparty_policies", None)


def test_entry_point_policy_is_found_lazily(third_party_package, load_pair):
    from bild import GenerationConfig, generate

    assert "thirdparty_policies" not in sys.modules  # nothing is imported before it is asked for
    policy = make_policy("stubborn", {"keep": 1})
    result = generate(load_pair("llama"), "def add(", policy, GenerationConfig(max_new_tokens=8))
    assert result.stats.accepted_draft_tokens <= result.stats.large.calls
    with pytest.raises(BildError, match="failed to import"):
        policy_class("broken")
    with pytest.raises(BildError, match="did you mean 'stubborn'"):
        policy_class("stubbron")
