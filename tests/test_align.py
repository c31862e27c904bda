"""`bild align`: a calibration set, fine-tuning toward the large model, a loadable folder, resuming, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from bild import BildError, GenerationConfig, ModelPair, generate, generate_single, make_policy
from bild.lab.align import align, build_data
from bild.lab.options import AlignRecipe
from bild.lab.outputs import OutputFolder
from bild.lab.tasks import Example
from bild.lab.workload import Workload

from conftest import PROMPTS


@pytest.fixture
def pair(pair_dirs):
    """A fresh load: alignment changes the small model in place."""
    return ModelPair.from_pretrained(*map(str, pair_dirs("llama", 1)), device="cpu")


def examples(n: int, tag: str = "") -> list[Example]:
    return [Example(id=f"{tag}{i}", prompt=tag + PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)),
                    reference="x = 1") for i in range(n)]


def work(pair: ModelPair, prompts: list[Example], length: int = 64) -> Workload:
    """The prompts to align on, with calibration continuations of `length` tokens."""
    return Workload(pair, prompts, GenerationConfig(max_new_tokens=length), progress=False)


@pytest.mark.parametrize("loss", ["fkl", "ce", "tvd"])
def test_alignment_raises_agreement_and_writes_a_loadable_pair(pair, pair_dirs, tmp_path, loss):
    out = tmp_path / "aligned"
    held = examples(6, "# held out\n")
    summary = align(work(pair, examples(40) + held, 8), out, 0.1,
                    AlignRecipe(loss=loss, data="mix", teacher_top_k=8, lr=3e-3), exclude=held, evaluation=held)
    assert summary["steps"] > 0 and summary["dev_agreement_best"] >= summary["dev_agreement_before"]
    assert summary["prompts"] == 40  # the held-out prompts were excluded from the calibration set
    saved = json.loads((out / "align.json").read_text())
    assert saved["loss"] == loss and {"before", "after"} <= set(saved["eval"])
    aligned = ModelPair.from_pretrained(str(out), str(pair_dirs("llama", 1)[1]), device="cpu")
    cfg = GenerationConfig(max_new_tokens=10)
    assert (generate(aligned, "def add(", make_policy("exact"), cfg).token_ids
            == generate_single(aligned, "def add(", "large", cfg).token_ids)


def test_an_interrupted_calibration_set_resumes_and_bad_outputs_are_refused(pair, tmp_path):
    out = tmp_path / "aligned"
    folder = OutputFolder(out, "align")
    folder.open()
    build_data(work(pair, examples(70)[:66], 6), out / "data", "large", 4, record=folder.wrote)  # cut off
    shards = sorted((out / "data").glob("shard-*.pt"))
    assert len(shards) == 2
    stamp = shards[0].stat().st_mtime
    with pytest.raises(BildError, match="holds an earlier `bild align`: --resume continues it"):
        align(work(pair, examples(70), 6), out, 0.05, AlignRecipe(teacher_top_k=4))
    summary = align(work(pair, examples(70), 6), out, 0.05, AlignRecipe(teacher_top_k=4), resume=True)
    assert summary["prompts"] == 70 and shards[0].stat().st_mtime == stamp  # nothing generated twice
    shards[0].write_bytes(b"torn")
    with pytest.raises(BildError, match="is corrupt"):
        align(work(pair, examples(70), 6), out, 0.05, AlignRecipe(teacher_top_k=4), resume=True)
    with pytest.raises(BildError, match="shorter than one training step"):
        align(work(pair, examples(20), 6), tmp_path / "tiny", 1e-6, AlignRecipe(teacher_top_k=4))
    with pytest.raises(BildError, match="at least 10"):
        align(work(pair, examples(5), 6), tmp_path / "few", 0.05)
    (tmp_path / "file").write_text("")
    with pytest.raises(BildError, match="is a file"):
        align(work(pair, examples(20)), tmp_path / "file", 0.05)
    assert torch.is_inference_mode_enabled() is False
    assert not (tmp_path / "few").exists()  # a refused run leaves no folder behind


def test_overwrite_deletes_only_what_align_wrote(pair, tmp_path):
    """A folder align wrote, plus a user's file: --overwrite replaces align's files and keeps the user's."""
    out = tmp_path / "aligned"
    align(work(pair, examples(20), 4), out, 0.02, AlignRecipe(teacher_top_k=4))
    (out / "my-notes.txt").write_text("mine")
    written = json.loads((out / ".bild-output.json").read_text())["entries"]
    assert {"data/shard-00000.pt", "align.json", "config.json"} <= set(written) and "my-notes.txt" not in written
    align(work(pair, examples(20), 4), out, 0.02, AlignRecipe(teacher_top_k=4), overwrite=True)
    assert (out / "my-notes.txt").read_text() == "mine" and (out / "align.json").exists()


def test_a_set_that_overfits_at_once_hands_back_the_original_model(pair, pair_dirs, tmp_path, capsys):
    """Twelve prompts and a destructive learning rate: no step beats the original on the dev split, so OUT
    holds the original weights, `improved` is false, and the command says so."""
    from bild.lab.align import Stopping, report_lines

    original = {k: v.clone() for k, v in pair.small.state_dict().items()}
    out = tmp_path / "aligned"
    summary = align(work(pair, examples(12), 6), out, Stopping(seconds=60, patience=2, max_epochs=50, eval_every=1),
                    AlignRecipe(teacher_top_k=4, lr=0.5))
    assert summary["improved"] is False and summary["best_step"] == 0 and summary["stopped"] == "patience"
    assert summary["evaluations"] == 2 and len(summary["dev_curve"]) == 3
    saved = ModelPair.from_pretrained(str(out), str(pair_dirs("llama", 1)[1]), device="cpu").small.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in original.items())
    assert "alignment did not help" in "\n".join(report_lines(summary, str(out)))
    assert "epochs over these 9 training prompts" in capsys.readouterr().err  # a minute is far too much for them
    written = json.loads((out / "align.json").read_text())
    assert written["improved"] is False and written["dev_curve"][0] == [0, summary["dev_agreement_before"]]
    assert (out / "align-curve.png").stat().st_size > 1000


def test_training_stops_at_the_epoch_cap_or_the_clock(pair, tmp_path):
    from bild.lab.align import Stopping

    capped = align(work(pair, examples(20), 4), tmp_path / "a", Stopping(seconds=60, patience=100, max_epochs=2),
                   AlignRecipe(teacher_top_k=4, batch=8))
    assert capped["stopped"] == "max_epochs" and capped["epochs"] == pytest.approx(2, abs=0.5)
    # patience and the epoch cap out of reach: a fast machine evaluates hundreds of times in half a second
    timed = align(work(pair, examples(20), 4), tmp_path / "b", Stopping(seconds=0.5, patience=10**9, max_epochs=10**9),
                  AlignRecipe(teacher_top_k=4, batch=8))
    assert timed["stopped"] == "minutes" and timed["steps"] >= 1


def test_the_held_out_check_says_when_it_fell_on_the_last_line():
    from bild.lab.align import report_lines

    summary = {"steps": 40, "epochs": 4.0, "evaluations": 8, "seconds": 60.0, "train_prompts": 90,
               "stopped": "patience", "patience": 4, "max_epochs": 8.0, "dev_agreement_before": 0.69,
               "dev_agreement_best": 0.71, "improved": True, "best_step": 20,
               "eval": {"before": {"agreement": 0.58, "expected_accepted_run": 2.5},
                        "after": {"agreement": 0.49, "expected_accepted_run": 2.1}}}
    lines = report_lines(summary, "out")
    assert "stopped by no dev gain in 4 evaluations in a row" in lines[0]
    assert lines[-1].startswith("warning: the held-out agreement FELL (0.580 -> 0.490)")


def test_too_few_prompts_for_a_dev_split_are_refused_and_nothing_is_written(pair, tmp_path):
    from bild.lab.align import dev_split

    with pytest.raises(BildError, match="at least 10"):
        align(work(pair, examples(6), 4), tmp_path / "few", 0.05)
    assert not (tmp_path / "few").exists()
    with pytest.raises(BildError, match="cannot make a dev split of 3 and a training set: give at least 6"):
        dev_split([{"id": str(i), "ids": torch.tensor([1, 2]), "start": 1} for i in range(5)])
    with pytest.raises(BildError, match="no continuation tokens"):
        dev_split([{"id": str(i), "ids": torch.tensor([1, 2]), "start": 2} for i in range(12)])
