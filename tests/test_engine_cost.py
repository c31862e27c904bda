"""The engine's own work apart from the models' (bild/lab/enginecost.py), the CPU stand-in for host overhead on
a GPU: a generation replayed over its recorded passes decodes the same tokens; greedy decoding dispatches no
device operation of its own (on a GPU: nothing launched outside the models' captured passes), sampling a
bounded few per pass. Its host milliseconds are a measurement (gpu_check's smoke step), never asserted here."""

from __future__ import annotations

import pytest

from bild import BildError, GenerationConfig
from bild.lab.enginecost import Replaying, engine_cost

SAMPLING_OPS = 10  # per pass: the sampler's draw from the large model's distribution (8 today)


@pytest.mark.parametrize("policy", ["exact", "adaptive", "bild", "pld"])
@pytest.mark.parametrize("fast_path", ["off", "static"])
def test_greedy_decoding_puts_no_work_of_its_own_on_the_device(load_pair, policy, fast_path):
    cost = engine_cost(load_pair("llama"), "def add(", policy, GenerationConfig(max_new_tokens=24, fast_path=fast_path),
                       repeats=2)
    assert cost.verifications > 0 and (cost.drafts > 0 or policy == "pld")
    assert cost.ops_per_pass == 0


def test_sampling_puts_a_bounded_few_operations_per_pass_on_the_device(load_pair):
    cost = engine_cost(load_pair("llama"), "def add(", "exact",
                       GenerationConfig(max_new_tokens=24, temperature=0.8, seed=3), repeats=2)
    assert 0 < cost.ops_per_pass <= SAMPLING_OPS


def test_a_replay_fed_other_ids_than_recorded_says_so():
    replay = Replaying([([1, 2], 1, None)], "large")
    with pytest.raises(BildError, match="parted from the recording at pass 0"):
        replay.feed([1, 3], 1)
