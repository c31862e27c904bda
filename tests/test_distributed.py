"""Beyond one process: a bench sharded over torchrun ranks equals one process in every count and resumes per
shard; a large model split by tensor parallelism over two CPU ranks, or spread over CPU and disk by a device
map, still gives `exact` the large model's greedy output; what cannot work is one line from rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bild import BildError, GenerationConfig, ModelPair, generate, generate_single
from bild.lab.cli import main as cli
from bild.pair import Placement

from conftest import PROMPTS, cheap_costs, one_error

pytest.importorskip("accelerate")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def torchrun(ranks: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                           "--master-port", str(29500 + os.getpid() % 1000), "-m", "bild", "--", *args],
                          capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def setup(pair_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    prompts = root / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "category": "odd" if i % 2 else "even"}) + "\n"
                               for i, p in enumerate(PROMPTS[:6])))
    small, large = map(str, pair_dirs("llama", 1))
    bench = ["bench", "--small", small, "--large", large, "--prompts", str(prompts), "--methods",
             "large,exact,bild@fallback_threshold=0.3", "--max-new-tokens", "10", "--wandb-mode", "disabled",
             "--cost-model", cheap_costs(root), "--force-cost-model"]
    return {"root": root, "bench": bench, "small": small, "large": large}


COUNTS = ("new_tokens", "draft_tokens", "accepted_draft_tokens", "fallbacks", "rollbacks", "judged_by_position",
          "accepted_by_position", "accepted_lengths")


def test_two_ranks_bench_what_one_process_does_and_resume_their_own_shard(setup):
    root = setup["root"]
    assert cli([*setup["bench"], "--json", str(root / "one.json")]) == 0
    run = torchrun(2, *setup["bench"], "--json", str(root / "two.json"))
    assert run.returncode == 0, run.stderr
    one, two = (json.loads((root / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["complete"] and two["setup"]["world_size"] == 2 and two["ranks"] == [0, 1, 0, 1, 0, 1]
    for method in ("large", "exact", "bild@fallback_threshold=0.3"):  # stateless: a learning policy learns per rank
        a, b = one["methods"][method], two["methods"][method]
        assert a["new_tokens"] == b["new_tokens"] and a["exact_match_with_large"] == b["exact_match_with_large"]
        assert a["modelled_speedup_vs_large"] == pytest.approx(b["modelled_speedup_vs_large"])
        for key in COUNTS:
            assert a["stats"][key] == b["stats"][key], (method, key)
        assert a["stats"]["large"]["passes"] == b["stats"]["large"]["passes"]
    assert one["oracle"]["modelled_speedup"] == pytest.approx(two["oracle"]["modelled_speedup"])
    assert set(two["categories"]) == {"even", "odd", "overall"}
    for key in ("chat", "system", "repeats", "schema", "policy_code", "generation"):  # compare sees one setup
        assert two["setup"][key] == one["setup"][key], key

    # rank 1 "killed" after two of its three prompts: a rerun measures only what its shard lacks
    shard = root / "two.rank-1-of-2.samples.jsonl"
    lines = shard.read_text().splitlines()
    shard.write_text("\n".join(lines[: 2 * 3]) + "\n")
    run = torchrun(2, *setup["bench"], "--json", str(root / "two.json"))
    assert run.returncode == 0, run.stderr
    assert "two.rank-1-of-2.json: 2 of 3 prompts were measured before" in run.stderr
    assert "two.rank-0-of-2.json: 3 of 3 prompts were measured before" in run.stderr
    again = json.loads((root / "two.json").read_text())
    assert again["complete"] and again["methods"]["exact"]["stats"]["new_tokens"] == two["methods"]["exact"][
        "stats"]["new_tokens"]


def test_ranks_that_cannot_work_stop_together_with_one_line(setup, capsys):
    root = setup["root"]
    few = root / "two.jsonl"
    few.write_text('{"prompt": "def add("}\n{"prompt": "for i in"}\n')
    bench = [a if a != setup["bench"][6] else str(few) for a in setup["bench"]]
    run = torchrun(3, *bench, "--json", str(root / "three.json"))
    assert run.returncode != 0 and run.stderr.count("bild: error:") == 1
    assert "3 ranks for 2 prompts: launch at most 2 ranks" in run.stderr
    run = torchrun(2, *setup["bench"])
    assert run.returncode != 0 and "needs --json OUT" in run.stderr and run.stderr.count("bild: error:") == 1
    assert cli([*setup["bench"], "--large-tp", "2"]) == 2
    assert "launch with torchrun --nproc-per-node 2" in one_error(capsys.readouterr().err)
    # ranks that sample apart would stop matching in the model's collectives: refused before any model loads
    run = torchrun(2, *setup["bench"], "--large-tp", "2", "--temperature", "0.7", "--json", str(root / "tp.json"))
    assert run.returncode != 0 and run.stderr.count("bild: error:") == 1
    assert "sampling with --large-tp needs --seed" in run.stderr


def test_ranks_that_disagree_are_named_by_rank_0(tmp_path):
    script = tmp_path / "disagree.py"  # each rank's line in one write: the two ranks share stderr
    script.write_text("import sys\nfrom bild.errors import BildError\n"
                      "from bild.lab.distributed import agree, start, world\nstart()\ntry:\n"
                      "    agree({'prompts_hash': 'same', 'n': 4 + world()[0]}, 'the setup')\n"
                      "except BildError as e:\n    sys.stderr.write(f'{type(e).__name__} {e}\\n')\n")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(30500 + os.getpid() % 1000), str(script)], capture_output=True, text=True, env=ENV,
                         timeout=120)
    assert "BildError the ranks disagree on the setup (n differ on rank(s) 1)" in run.stderr
    assert "RankError" in run.stderr  # rank 1 stops too, quietly


def test_tensor_parallel_over_two_cpu_ranks_keeps_exact_the_large_models_output(setup, load_pair):
    root = setup["root"]
    run = torchrun(2, *setup["bench"], "--methods", "large,exact", "--large-tp", "2", "--json", str(root / "tp.json"))
    assert run.returncode == 0, run.stderr
    report = json.loads((root / "tp.json").read_text())
    assert report["placement"]["large"]["spread"] == "tensor parallel over 2 ranks"
    assert report["methods"]["exact"]["exact_match_with_large"] == 1.0
    samples = [json.loads(line) for line in (root / "tp.samples.jsonl").read_text().splitlines()]
    pair, config = load_pair("llama", 1), GenerationConfig(max_new_tokens=10)
    for s in samples:  # one process, one device: the same greedy tokens
        assert s["token_ids"] == generate_single(pair, s["prompt"], "large", config).token_ids


def test_a_large_model_spread_over_cpu_and_disk_keeps_exact_the_large_models_output(setup, tmp_path):
    placed = Placement(device_map="auto", max_memory={"cpu": "120KB"}, offload_folder=str(tmp_path / "offload"))
    pair = ModelPair.from_pretrained(setup["small"], setup["large"], device="cpu", large_placement=placed)
    assert "disk" in pair.placement()["large"]["devices"] and "cpu" in pair.placement()["large"]["devices"]
    config = GenerationConfig(max_new_tokens=12)
    for prompt in PROMPTS[:3]:
        assert generate(pair, prompt, "exact", config).token_ids == generate_single(pair, prompt, "large",
                                                                                     config).token_ids


def test_a_device_map_that_leaves_modules_unplaced_is_one_line_and_a_whole_one_loads(setup):
    partial = Placement(device_map={"model.embed_tokens": "cpu"})
    with pytest.raises(BildError, match=r"leaves \d+ module\(s\) unplaced \(.*model\.layers\.0"):
        ModelPair.from_pretrained(setup["small"], setup["large"], device="cpu", large_placement=partial)
    whole = Placement(device_map={"model": "cpu", "lm_head": "cpu"})  # a parent's name covers its children
    pair = ModelPair.from_pretrained(setup["small"], setup["large"], device="cpu", large_placement=whole)
    config = GenerationConfig(max_new_tokens=8)
    assert generate(pair, PROMPTS[0], "exact", config).token_ids == generate_single(pair, PROMPTS[0], "large",
                                                                                     config).token_ids


def test_each_rank_loads_its_pair_on_its_own_gpu(setup, monkeypatch):
    """Under torchrun on GPUs every rank's models go to cuda:LOCAL_RANK unless --device says otherwise (the
    small model under tensor parallel too): nothing is left on GPU 0 for every rank. CUDA monkeypatched."""
    import torch

    from bild.lab import experiment
    from bild.lab.options import BenchOptions

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ModelPair, "from_pretrained", staticmethod(lambda *a, **kw: asked.append(kw["device"])))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    experiment.load_pair(BenchOptions(small=setup["small"], large=setup["large"]))
    experiment.load_pair(BenchOptions(small=setup["small"], large=setup["large"], device="cuda:1"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    experiment.load_pair(BenchOptions(small=setup["small"], large=setup["large"]))
    assert asked == ["cuda:3", "cuda:1", None]
