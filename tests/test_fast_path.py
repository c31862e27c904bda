"""The fast paths on the CPU: a static cache (and the padded, graph-style passes) decode exactly
what the dynamic cache does; the graph path's bookkeeping runs with a fake capture; the step
compiles without graph breaks; what the fast path cannot serve is one clear error."""

from __future__ import annotations

import random

import pytest
import torch

import bild.engine
import bild.forward
from bild import BildError, GenerationConfig, ModelPair, generate, generate_single, make_policy
from bild.forward import PaddedRunner, StaticRunner, as_is, powers_of_two

from conftest import PROMPTS

FAMILIES = ("llama", "qwen2", "gpt2")


def policies(rng: random.Random) -> list:
    rule = rng.choice(["nll", "exact", "rejection"])
    return [make_policy("exact", {"fallback_threshold": rng.choice([0.0, 0.3])}),
            make_policy("bild", {"fallback_threshold": rng.uniform(0, 0.7), "rollback_threshold": rng.uniform(0, 4),
                                 "rollback_rule": rule}),
            make_policy("entropy", {"entropy_threshold": rng.uniform(0.5, 4), "rollback_rule": rule}),
            make_policy("topk-margin", {"margin": rng.uniform(0, 0.5), "k": rng.randint(1, 3)})]


def random_cases(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        prompt = rng.choice(PROMPTS) + "".join(rng.choice("abc (=:") for _ in range(rng.randint(0, 6)))
        sampling = rng.random() < 0.4
        config = GenerationConfig(max_new_tokens=rng.randint(4, 30), max_draft_tokens=rng.choice([1, 3, 10, None]),
                                  temperature=0.8 if sampling else 0.0, seed=rng.randrange(1000))
        yield prompt, config, policies(rng)


@pytest.fixture(scope="module")
def twin(pair_dirs):
    """Two loads of one pair: their runners (and caches) are independent."""
    loaded = {}

    def get(family: str) -> tuple[ModelPair, ModelPair]:
        if family not in loaded:
            small, large = map(str, pair_dirs(family, 1))
            loaded[family] = tuple(ModelPair.from_pretrained(small, large, device="cpu") for _ in range(2))
        return loaded[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_static_decodes_exactly_what_off_does(twin, family):
    off, static = twin(family)
    for prompt, config, found in random_cases(FAMILIES.index(family), 6):
        for policy in found:
            a = generate(off, prompt, policy, config.model_copy(update={"fast_path": "off"}))
            b = generate(static, prompt, policy, config.model_copy(update={"fast_path": "static"}))
            assert a.token_ids == b.token_ids, (family, prompt, policy, config)
            assert a.stats.large_passes == b.stats.large_passes
        if config.temperature == 0:
            large = generate_single(static, prompt, "large", config.model_copy(update={"fast_path": "static"}))
            exact = generate(static, prompt, make_policy("exact"), config.model_copy(update={"fast_path": "static"}))
            assert exact.token_ids == large.token_ids


@pytest.fixture
def fake_graphs(monkeypatch):
    """`graph` on the CPU: capture is the eager step itself; count the steps prepared."""
    prepared = []

    def capture(step, **kwargs):
        prepared.append(step)
        return as_is(step)

    monkeypatch.setattr(bild.forward, "cuda_graph", capture)
    monkeypatch.setattr(bild.engine, "resolve_fast_path", lambda requested, models, device: requested)
    return prepared


@pytest.mark.parametrize("family", FAMILIES)
def test_the_graph_path_bookkeeping_decodes_what_off_does(twin, family, fake_graphs):
    off, graph = twin(family)
    for prompt, config, found in random_cases(7, 5):
        for policy in found:
            a = generate(off, prompt, policy, config.model_copy(update={"fast_path": "off"}))
            b = generate(graph, prompt, policy, config.model_copy(update={"fast_path": "graph"}))
            assert a.token_ids == b.token_ids, (family, prompt, policy, config)
    # steps are prepared once per bucket and cache, not per generation
    runners = [r for (_, path), r in graph.runners.items() if path == "graph"]
    assert len(fake_graphs) == sum(len(r.steps) for r in runners) <= sum(len(r.buckets) for r in runners)


def test_a_padded_pass_gives_the_real_positions_the_same_logits(load_pair):
    model = load_pair("llama", 1).large
    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.inference_mode():
        plain = StaticRunner(model, vocab, 128)
        padded = PaddedRunner(model, vocab, 128, 11, as_is)
        for runner in (plain, padded):
            runner.start(64)
            runner.feed([3, 5, 7, 9, 11], 1)
        for ids in ([20, 21, 22], [30], [40, 41, 42, 43, 44, 45, 46]):
            a, b = plain.feed(ids, len(ids)), padded.feed(ids, len(ids))
            torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
            assert a.argmax == b.argmax and a.next_nll == pytest.approx(b.next_nll, abs=1e-5)
            plain.rewind(1)  # as after a rollback of the last token
            padded.rewind(1)
        assert padded.length == plain.length


def test_the_step_compiles_without_graph_breaks(load_pair):
    model = load_pair("llama", 1).large
    vocab = model.get_output_embeddings().weight.shape[0]
    torch._dynamo.reset()
    compiled = PaddedRunner(model, vocab, 128, 4, lambda step: torch.compile(step, backend="aot_eager", fullgraph=True),
                            powers_of_two)
    plain = StaticRunner(model, vocab, 128)
    with torch.inference_mode():
        for runner in (plain, compiled):
            runner.start(64)
            runner.feed([3, 5, 7, 9], 1)
        for ids in ([20, 21], [30], [40, 41, 42]):
            torch.testing.assert_close(plain.feed(ids, 1).logits, compiled.feed(ids, 1).logits, rtol=1e-5, atol=1e-5)


def test_what_the_fast_path_cannot_serve_is_one_clear_error(load_pair, pair_dirs, tmp_path):
    pair = load_pair("llama", 1)
    with pytest.raises(BildError, match=r"needs a CUDA GPU.*--fast-path static"):
        generate(pair, "def add(", make_policy("exact"), GenerationConfig(fast_path="graph"))
    with pytest.raises(BildError, match="encoder-decoder models keep a dynamic cache; use --fast-path off"):
        generate(load_pair("t5", 1), "def add(", make_policy("exact"), GenerationConfig(fast_path="static"))
    from tiny import build_pair

    sliding = ModelPair.from_pretrained(*map(str, build_pair(tmp_path, "mistral-sliding")), device="cpu")
    with pytest.raises(BildError, match="sliding_attention layers"):
        generate(sliding, "def add(", make_policy("exact"), GenerationConfig(fast_path="static"))
    # auto picks what serves: the dynamic cache on the CPU, for every model
    assert generate(sliding, "def add(", make_policy("exact"), GenerationConfig(max_new_tokens=4)).token_ids
    runner = StaticRunner(pair.large, pair.vocab_size, 128)
    runner.start(8)
    with pytest.raises(BildError, match="overflows the static KV cache"):
        runner.feed(list(range(3, 300)), 1)
