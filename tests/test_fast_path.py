"""The fast paths on the CPU: a static cache (and the padded, graph-style passes) decode exactly
what the dynamic cache does; the graph path's bookkeeping runs with a fake capture; the step
compiles without graph breaks; what the fast path cannot serve is one clear error."""

from __future__ import annotations

import random

import pytest
import torch

import bild.forward
from bild import BildError, GenerationConfig, ModelPair, Policy, generate, generate_single, make_policy
from bild.cache import restart
from bild.forward import PaddedRunner, StaticRunner, powers_of_two
from bild.lab.enginecost import Dispatched

from conftest import PROMPTS, HoldsState, Replaying

FAMILIES = ("llama", "qwen2", "gpt2")


def policies(rng: random.Random) -> list:
    rule = rng.choice(["nll", "exact", "rejection"])
    return [make_policy("exact", {"verify_below": rng.choice([0.0, 0.3])}),
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
            assert a.stats.large.passes == b.stats.large.passes
        if config.temperature == 0:
            large = generate_single(static, prompt, "large", config.model_copy(update={"fast_path": "static"}))
            exact = generate(static, prompt, make_policy("exact"), config.model_copy(update={"fast_path": "static"}))
            assert exact.token_ids == large.token_ids


def twins_on(twin, family: str, fake_graphs) -> tuple[ModelPair, ModelPair]:
    """(off, graph) twins whose graph runners start fresh."""
    off, graph = twin(family)
    graph._runners.clear()
    return off, graph


@pytest.mark.parametrize("family", FAMILIES)
def test_the_graph_path_bookkeeping_decodes_what_off_does(twin, family, fake_graphs):
    off, graph = twins_on(twin, family, fake_graphs)
    for prompt, config, found in random_cases(7, 5):
        for policy in found:
            a = generate(off, prompt, policy, config.model_copy(update={"fast_path": "off"}))
            b = generate(graph, prompt, policy, config.model_copy(update={"fast_path": "graph"}))
            assert a.token_ids == b.token_ids, (family, prompt, policy, config)
            assert b.stats.large.fast_path == "graph" and b.stats.large.graphs_captured == b.stats.large.graph_buckets
    # every bucket is captured once per cache, up front, never per generation
    captured = [size for capture in fake_graphs for size in capture.captured]
    runners = [r for (_, path), r in graph._runners.items() if path == "graph"]
    assert len(captured) == sum(len(r.steps) for r in runners) <= sum(len(r.buckets) for r in runners)
    # each capture is made on its own model's device (on a GPU: streams and graphs of a model on cuda:1 go there)
    assert {str(c.device) for c in fake_graphs} == {str(graph.large.device)}


@pytest.mark.parametrize("cap", [None, 16, 20])
def test_many_prompts_in_a_row_on_padded_buckets_decode_what_off_does(twin, fake_graphs, cap):
    """The first GPU run's crash: a generation that ended right after a padded verification left a pad
    count behind, and the next prompt's first pass rewound the cache to position -pad."""
    off, graph = twins_on(twin, "llama", fake_graphs)
    rng = random.Random(cap or 0)
    names = ["bild", "exact", "entropy", "topk-margin", "adaptive"]
    states = {}
    for i in range(200 if cap is None else 60):
        name = names[i % len(names)] if i >= 20 else "bild"
        params = {"fallback_threshold": 0.1, "rollback_threshold": 30.0} if name == "bild" else {}
        policy = make_policy(name, params)
        config = GenerationConfig(max_new_tokens=28 if i < 20 else rng.randint(4, 30), max_draft_tokens=cap)
        prompt = rng.choice(PROMPTS) + "".join(rng.choice("ab (=:") for _ in range(rng.randint(0, 4)))
        state = states.setdefault((name, "off"), policy.new_state()), states.setdefault((name, "graph"),
                                                                                            policy.new_state())
        a = generate(off, prompt, policy, config.model_copy(update={"fast_path": "off"}), state=state[0])
        b = generate(graph, prompt, policy, config.model_copy(update={"fast_path": "graph"}), state=state[1])
        assert a.token_ids == b.token_ids, (i, name, prompt, config)


class FailsMidway(Policy):
    """Verifies every two drafts (3 tokens: a padded pass), keeps them, and raises in its `at`-th rollback."""

    at: int = 3

    def new_state(self):
        return {"verifications": 0}

    def fallback(self, step):
        return False

    def stop_drafting(self, step):
        return step.pending >= 1

    def rollback(self, verification):
        verification.state["verifications"] += 1
        if verification.state["verifications"] == self.at:
            raise RuntimeError("a policy bug")
        return verification.n


@pytest.mark.parametrize("fast_path", ["static", "graph"])
def test_an_exception_in_the_middle_of_a_generation_leaves_the_next_one_right(twin, fake_graphs, fast_path):
    off, fast = twins_on(twin, "llama", fake_graphs)
    config = GenerationConfig(max_new_tokens=20, max_draft_tokens=None)
    for prompt in PROMPTS[:4]:
        with pytest.raises(BildError, match=r"policy FailsMidway.rollback raised RuntimeError: a policy bug"):
            generate(fast, prompt, FailsMidway(), config.model_copy(update={"fast_path": fast_path}))
        policy = make_policy("bild", {"fallback_threshold": 0.1, "rollback_threshold": 30.0})
        assert (generate(fast, prompt, policy, config.model_copy(update={"fast_path": fast_path})).token_ids
                == generate(off, prompt, policy, config.model_copy(update={"fast_path": "off"})).token_ids)


def test_what_a_policy_holds_does_not_change_when_the_graph_replays(twin, fake_graphs):
    _, graph = twins_on(twin, "llama", fake_graphs)
    state = []
    generate(graph, PROMPTS[0], HoldsState(), GenerationConfig(max_new_tokens=24, fast_path="graph"), state=state)
    assert len(state) > 6 and all(torch.equal(held, then) for held, then in state)


def capturing_twins(twin, monkeypatch, capture) -> tuple[ModelPair, ModelPair]:
    """(off, graph) twins whose `graph` runs on the CPU through the stand-in `capture` for CUDA graphs."""
    monkeypatch.setattr(bild.forward, "CudaGraphs", capture)
    resolve = bild.forward.resolve_fast_path
    monkeypatch.setattr(bild.forward, "resolve_fast_path",
                        lambda requested, model, label="model": "graph" if requested == "graph" else resolve(
                            requested, model, label))
    off, graph = twin("llama")
    graph._runners.clear()
    return off, graph


def test_a_failed_capture_leaves_its_bucket_eager_with_one_warning(twin, monkeypatch, caplog):
    """A capture that raises for passes of 3 tokens: one warning line, those passes eager, the rest captured."""
    from conftest import Replaying

    class FailsAtThree(Replaying):
        def __call__(self, step, undo):
            if step()[0].shape[0] == 3:
                raise RuntimeError("operation not permitted when stream is capturing")
            undo()
            return super().__call__(step, undo)

    off, graph = capturing_twins(twin, monkeypatch, FailsAtThree)
    config = GenerationConfig(max_new_tokens=24, max_draft_tokens=4)
    with caplog.at_level("WARNING", logger="bild"):
        for prompt in PROMPTS[:4]:
            policy = make_policy("exact", {"verify_below": 0.0, "lookup_min": 0})  # the small model: one token a pass
            a = generate(off, prompt, policy, config.model_copy(update={"fast_path": "off"}))
            b = generate(graph, prompt, policy, config.model_copy(update={"fast_path": "graph"}))
            assert a.token_ids == b.token_ids
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "1 of 5 graph buckets of the large model" in warning and "passes of 3 tokens" in warning
    assert (b.stats.large.graphs_captured, b.stats.large.graph_buckets) == (4, 5)


def test_a_capture_that_recorded_nothing_is_caught_and_its_buckets_run_eagerly(twin, monkeypatch, caplog):
    """A graph captured on the wrong device records nothing and replays whatever its outputs held: the runner
    checks each replay against the eager pass, warns, and runs those passes eagerly, so the output is off's."""

    class RecordsNothing:
        def __init__(self, device=None):
            self.device = device

        def __call__(self, step, undo):
            outputs = step()  # what capture time left in the static outputs; replays never recompute them
            undo()
            return lambda: outputs

    off, graph = capturing_twins(twin, monkeypatch, RecordsNothing)
    config = GenerationConfig(max_new_tokens=16, max_draft_tokens=4)
    with caplog.at_level("WARNING", logger="bild"):
        for prompt in PROMPTS[:2]:
            a = generate(off, prompt, "exact", config.model_copy(update={"fast_path": "off"}))
            b = generate(graph, prompt, "exact", config.model_copy(update={"fast_path": "graph"}))
            assert a.token_ids == b.token_ids
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings and all("stale outputs" in w for w in warnings)
    assert b.stats.large.graphs_captured == 0


SYNCS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::item"}
# operations of one captured step, today 69 + 58 per layer on llama and qwen2 (transformers 5.24), 48 + 42 on gpt2:
# a bound with room for an upgrade's few, not for per-token or per-layer work of the engine's own
STEP_OPS = (80, 64)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_captured_step_never_syncs_and_a_rewind_is_one_operation(load_pair, family, monkeypatch):
    """What a CUDA graph records must not read a value back to the host (counted with transformers told a
    capture is running, so an upgrade that adds a sync fails here, not on a GPU); a step's operations are
    bounded per layer; a rewind, and the restart of a generation, move every layer's pointer in ONE fused
    operation (on a GPU one launch per rollback, not one per layer), on either model of the pair."""
    steps = {}

    def keep(step, undo):
        steps[step] = undo
        return step

    for model in (load_pair(family, 1).small, load_pair(family, 1).large):
        steps.clear()
        runner = PaddedRunner(model, model.get_output_embeddings().weight.shape[0], 128, 4, keep, "graph")
        with torch.inference_mode():
            runner.start(64)
            runner.feed([3, 5, 7, 9], 1)
            monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
            for step, undo in steps.items():
                with Dispatched() as ops:
                    step()
                with Dispatched() as rewinds:
                    undo()
                with Dispatched() as restarts:
                    restart(runner.cache)
                syncs = [n for n in ops.names + rewinds.names if n in SYNCS]
                assert syncs == [], (family, syncs)
                assert len(ops.names) <= STEP_OPS[0] + STEP_OPS[1] * model.config.num_hidden_layers, (family, ops)
                assert rewinds.names == ["aten::_foreach_sub_"] and restarts.names == ["aten::_foreach_zero_"]
            monkeypatch.undo()


def test_a_padded_pass_gives_the_real_positions_the_same_logits(load_pair):
    model = load_pair("llama", 1).large
    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.inference_mode():
        plain = StaticRunner(model, vocab, 128)
        padded = PaddedRunner(model, vocab, 128, 11, Replaying(), "graph")
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
    compiled = PaddedRunner(model, vocab, 128, 4,
                            lambda step, undo: torch.compile(step, backend="aot_eager", fullgraph=True), "compile",
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
    with pytest.raises(BildError, match=r"needs a CUDA GPU, but the small model is on cpu.*--fast-path static"):
        generate(pair, "def add(", make_policy("exact"), GenerationConfig(fast_path="graph"))
    with pytest.raises(BildError, match="cannot serve the small model: encoder-decoder models keep a dynamic cache; "
                                        "use --fast-path off"):
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


def test_a_pass_keeping_one_row_costs_no_more_than_one_keeping_all(tmp_path):
    """A verification keeps its last rows; the small model's catch-up and calibration keep one. On the first real
    pair (bf16, a 151,936-token output layer) a k-token pass keeping one row was measured at 4-5x the same pass
    keeping every row: the output layer read a view into the hidden states. A ratio, never an absolute time."""
    import statistics
    import time

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bild.forward import DynamicRunner

    config = Qwen2Config(vocab_size=16384, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16).eval()  # the output layer dominates a pass
    runner = DynamicRunner(model, config.vocab_size)
    runner.start(64)
    with torch.inference_mode():
        runner.feed(list(range(32)), 1)
        seconds: dict[int, list[float]] = {1: [], 8: []}
        for _ in range(30):
            for keep in seconds:
                started = time.perf_counter()
                runner.feed(list(range(100, 108)), keep)
                seconds[keep].append(time.perf_counter() - started)
                runner.rewind(8)
    one, every = (statistics.median(seconds[k]) for k in (1, 8))
    assert one <= 1.5 * every, (one, every)


def test_a_generation_sized_inside_the_pad_room_gets_a_cache_of_its_own(tmp_path):
    """A padded runner recorded its capacity with its pad room: a later generation of 281 positions passed the start
    check of a 256 + 32 cache, then a pass of 17 real tokens after 264, padded to 32, overflowed it."""
    from tiny import build_pair

    small, large = map(str, build_pair(tmp_path, "llama", 1, positions=1024))
    model = ModelPair.from_pretrained(small, large, device="cpu").large
    runner = PaddedRunner(model, 258, 1024, 32, Replaying(), "compile", powers_of_two)
    with torch.inference_mode():
        runner.start(40)  # a short generation first: a cache of 256 positions and its pad room
        runner.start(281)
        runner.feed([3 + i % 200 for i in range(264)], 1)  # the prompt: 264 positions
        out = runner.feed(list(range(3, 20)), 17)  # 17 real tokens, padded to 32
    assert len(out.argmax) == 17


def test_the_output_layer_is_given_a_tensor_of_its_own_when_a_pass_keeps_fewer_rows(load_pair):
    """A multi-token pass keeping its last row hands the output layer a view offset into the hidden states; some
    CPU bf16 kernels run 4-5x slower on such a view (the real pair's 151,936-token head). The runner gives the
    head a contiguous tensor starting at its own storage: what the fast kernel needs, checked without a clock."""
    pair = load_pair("llama", 1)
    seen = []
    hooks = [model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: seen.append((args[0].shape[1], args[0].storage_offset(), args[0].is_contiguous())))
        for model in (pair.small, pair.large)]
    try:
        generate(pair, PROMPTS[0], make_policy("exact", lookup_min=1), GenerationConfig(max_new_tokens=24))
    finally:
        for h in hooks:
            h.remove()
    assert seen and all(offset == 0 and contiguous for _, offset, contiguous in seen)
