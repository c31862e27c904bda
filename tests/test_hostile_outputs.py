"""Hostile input against what commands write: nothing outside an output folder, and nothing a user put
inside one, is ever deleted or replaced (issue 31's data-loss cases D1–D5; each asserts the victim's
bytes are unchanged), and an interrupted or resumed `bild align` keeps and says what it has."""

from __future__ import annotations

import json

import matplotlib
import pytest
import torch

import bild.lab.align
from bild import BildError, GenerationConfig, ModelPair
from bild.lab.align import Stopping, align
from bild.lab.cli import main as cli
from bild.lab.options import AlignRecipe
from bild.lab.outputs import MANIFEST, PLOT, OutputFolder, check_output
from bild.lab.render import figure
from bild.lab.tasks import Example
from bild.lab.workload import Workload

from conftest import PROMPTS, one_error

matplotlib.use("Agg")


@pytest.fixture
def pair(pair_dirs):
    """A fresh load: alignment changes the small model in place."""
    return ModelPair.from_pretrained(*map(str, pair_dirs("llama", 1)), device="cpu")


def examples(n: int) -> list[Example]:
    return [Example(id=str(i), prompt=PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)), reference="x")
            for i in range(n)]


def work(pair: ModelPair, prompts: list[Example], length: int = 64) -> Workload:
    """The prompts to align on, with calibration continuations of `length` tokens."""
    return Workload(pair, prompts, GenerationConfig(max_new_tokens=length), progress=False)


def snapshot(*roots) -> dict:
    return {p: p.read_bytes() for root in roots for p in ([root] if root.is_file() else root.rglob("*"))
            if p.is_file()}


def many_prompts(tmp_path) -> str:
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"prompt": PROMPTS[i % 8] + " " * i, "id": str(i)}) + "\n" for i in range(12)))
    return str(path)


@pytest.mark.parametrize("entry", ["{victim_file}", "../victim_dir", "../victim_dir/keep.txt", "data/../../victim_dir",
                                   "", 7, "data"])
def test_a_manifest_naming_anything_outside_its_folder_deletes_nothing(pair_dirs, tmp_path, entry, capsys):
    """D1/D2: a copied or hand-edited manifest listing an absolute path, `..`, or a folder."""
    victim_dir = tmp_path / "victim_dir"
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_text("precious")
    victim_file = tmp_path / "victim.txt"
    victim_file.write_text("also precious")
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data" / "mine.txt").write_text("mine")
    entry = entry.format(victim_file=victim_file) if isinstance(entry, str) else entry
    (out / MANIFEST).write_text(json.dumps({"command": "align", "entries": [entry]}))
    small, large = map(str, pair_dirs("llama", 1))
    args = ["align", "--small", small, "--large", large, "--prompts", many_prompts(tmp_path), "--out", str(out),
            "--overwrite", "--minutes", "0.001"]
    before = snapshot(tmp_path)
    assert cli(args) == 2
    assert "was not written by bild" in one_error(capsys.readouterr().err)
    assert snapshot(tmp_path) == before
    with pytest.raises(BildError, match="was not written by bild"):
        OutputFolder(out, "align", resume=True)


def test_a_manifest_entry_behind_a_link_out_of_the_folder_deletes_nothing(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "shard-00000.pt").write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "data").symlink_to(victim)
    (out / MANIFEST).write_text(json.dumps({"command": "align", "entries": ["data/shard-00000.pt"]}))
    with pytest.raises(BildError, match="behind a link out of the folder"):
        OutputFolder(out, "align", overwrite=True)
    assert (victim / "shard-00000.pt").read_text() == "precious"


def test_a_users_file_inside_a_folder_align_wrote_survives_overwrite(pair, tmp_path):
    """D4: the manifest lists files, not folders: a file put into OUT/data/ since is not align's."""
    out = tmp_path / "aligned"
    align(work(pair, examples(20), 4), out, 0.02, AlignRecipe(teacher_top_k=4))
    written = json.loads((out / MANIFEST).read_text())["entries"]
    assert "data/shard-00000.pt" in written and "align.json" in written and "data" not in written
    (out / "data" / "notes.txt").write_text("mine")
    (out / "work" / "deep").mkdir()
    (out / "work" / "deep" / "more.txt").write_text("mine too")
    align(work(pair, examples(20), 4), out, 0.02, AlignRecipe(teacher_top_k=4), overwrite=True)
    assert (out / "data" / "notes.txt").read_text() == "mine"
    assert (out / "work" / "deep" / "more.txt").read_text() == "mine too"
    assert (out / "data" / "shard-00000.pt").exists()  # align's own, written afresh


@pytest.mark.parametrize("command", ["bench", "compare"])
def test_a_users_own_image_is_never_replaced_by_a_plot(pair_dirs, tmp_path, command, capsys):
    """D3: any PNG used to count as bild's plot; only an image bild wrote (marked in its metadata) is replaced."""
    import matplotlib.pyplot as plt

    photo = tmp_path / "user_photo.png"
    plt.plot([1, 2, 3])
    plt.savefig(photo)
    plt.close("all")
    before = photo.read_bytes()
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"setup": {"n": 1}, "methods": {"large": {"tokens_per_s": 1.0}}}))
    small, large = map(str, pair_dirs("llama", 1))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def add("}\n')
    args = (["bench", "--small", small, "--large", large, "--prompts", str(prompts), "--methods", "large",
             "--max-new-tokens", "2", "--wandb-mode", "disabled", "--plot", str(photo)] if command == "bench" else
            ["compare", str(report), str(report), "--plot", str(photo)])
    assert cli(args) == 2
    assert "is not a plot bild wrote" in one_error(capsys.readouterr().err)
    assert photo.read_bytes() == before
    for suffix in (".png", ".pdf", ".svg"):  # what bild drew, it may draw again
        ours = tmp_path / f"ours{suffix}"
        figure(str(ours), lambda ax: ax.plot([1, 2]))
        assert check_output(ours, [], PLOT) == ours


def test_ctrl_c_in_align_keeps_the_steps_made_and_says_what_is_kept(pair_dirs, tmp_path, monkeypatch, capsys):
    """D5: Ctrl-C before the first minute's checkpoint used to keep no step and say a checkpoint was there."""
    small, large = map(str, pair_dirs("llama", 1))
    out = tmp_path / "aligned"
    args = ["align", "--small", small, "--large", large, "--prompts", many_prompts(tmp_path), "--out", str(out),
            "--max-new-tokens", "4", "--teacher-top-k", "4", "--minutes", "1", "--max-epochs", "3", "--batch", "4",
            "--patience", "100"]
    steps = []
    update = bild.lab.align.update

    def counted(*a, **kw):
        steps.append(1)
        if len(steps) == 3:  # Ctrl-C in the third step, long before the first minute's checkpoint
            raise KeyboardInterrupt
        return update(*a, **kw)

    monkeypatch.setattr(bild.lab.align, "update", counted)
    assert cli(args) == 130
    err = capsys.readouterr().err
    assert "finished shard(s) and a training checkpoint are in" in err and "--resume" in err
    assert torch.load(out / "work" / "checkpoint.pt", weights_only=True)["state"]["step"] == 2
    assert cli([*args, "--resume"]) == 0
    summary = json.loads((out / "align.json").read_text())
    assert summary["steps"] == 9 and len(steps) == 3 + 7  # 3 epochs of 3 steps; the resumed run made the last 7


def test_ctrl_c_before_any_shard_says_nothing_was_kept(tmp_path):
    from bild.lab.align import kept_after_interrupt

    assert "nothing finished was kept" in kept_after_interrupt(str(tmp_path / "never"))


def test_a_resumed_align_with_other_data_settings_is_refused(pair, tmp_path):
    """S11: the cached shards were built with the first run's settings; training on them under new ones lied."""
    out = tmp_path / "aligned"
    align(work(pair, examples(20), 4), out, 0.02, AlignRecipe(teacher_top_k=4))
    for length, recipe, message in ((6, {}, "--max-new-tokens 4 (now 6)"),
                                    (4, {"teacher_top_k": 8}, "--teacher-top-k 4"),
                                    (4, {"data": "small"}, "--data 'large' (now 'small')")):
        with pytest.raises(BildError, match=message.replace("(", r"\(").replace(")", r"\)")):
            align(work(pair, examples(20), length), out, 0.02, AlignRecipe(**{"teacher_top_k": 4, **recipe}),
                  resume=True)
    with pytest.raises(BildError, match="other prompts than before"):
        align(work(pair, examples(21), 4), out, 0.02, AlignRecipe(teacher_top_k=4), resume=True)
    assert align(work(pair, examples(20), 4), out, 0.02, AlignRecipe(teacher_top_k=4), resume=True)["steps"] > 0


def test_a_torn_checkpoint_is_refused_in_one_line_and_never_unpickled(pair, tmp_path):
    """C14: the checkpoint was read with weights_only=False: whatever was there was unpickled."""
    out = tmp_path / "aligned"
    align(work(pair, examples(20), 4), out, Stopping(seconds=60, max_epochs=1), AlignRecipe(teacher_top_k=4))
    checkpoint = out / "work" / "checkpoint.pt"
    checkpoint.write_bytes(b"torn")
    with pytest.raises(BildError, match="is torn or not bild's"):
        align(work(pair, examples(20), 4), out, 0.02, AlignRecipe(teacher_top_k=4), resume=True)

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"model": {}, "optimizer": {}, "state": Payload()}, checkpoint)
    with pytest.raises(BildError, match="is torn or not bild's"):
        align(work(pair, examples(20), 4), out, 0.02, AlignRecipe(teacher_top_k=4), resume=True)
