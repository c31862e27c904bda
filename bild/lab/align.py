"""`bild align`: fine-tune the small model toward the large one's predictions (prediction alignment).

The paper's second lever (Kim et al., NeurIPS version; DistillSpec, Zhou et al. 2023): the more
often the small model predicts what the large one would, the fewer fallbacks and rollbacks.

    data    a calibration set: for each prompt, a continuation and the large model's top-k
            log-probabilities at every position of it. `large`: the large model's own greedy
            continuation (sequence-level distillation, the paper's); `small`: the small model's
            samples, scored by the large model in one pass each (on-policy, DistillSpec's best
            for greedy acceptance); `mix`: half each. Generated in batches and cached in shards
            under OUT/data (an interrupted run resumes where it stopped; prompts in `--exclude`
            are never used).
    train   the small model against the large model's distributions: `ce` (its greedy
            tokens), `fkl` (forward KL), `rkl` (reverse KL), `tvd` (total variation, what greedy
            acceptance depends on), `mix` (ce + fkl), all over the top-k support; AdamW with a
            warm-up and a cosine decay (bild/lab/training.py). Batches are left-padded so the
            output layer runs on the continuation positions only. Top-1 agreement with the large
            model on a dev split (the `DEV_FRACTION` of prompts lowest by hash, at least
            `DEV_MIN`) is evaluated at a fixed cadence (`--eval-every` steps, default half an
            epoch); training stops after `--patience` evaluations without a gain, at
            `--max-epochs`, or at `--minutes`, whichever comes first, and says which.
    keep    the original small model is the first checkpoint: OUT holds whatever scored best on
            the dev split, and when no step beat the original, the original weights themselves
            (`improved: false`). A small prompt set overfits fast; before training the command
            says how many epochs the budget would mean, and how many prompts it could use.
    out     OUT is a Hugging Face model folder (`ModelPair.from_pretrained(OUT, large)` loads it)
            with `align.json` (data, loss, steps, epochs, evaluations, the dev curve, why it
            stopped, agreement before and after) and `align-curve.png`; with `--eval FILE`, the
            agreement, expected accepted run and small-alone chrF on held-out prompts before and
            after. A checkpoint every minute lets `--resume` continue; Ctrl-C loses nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from bild.errors import BildError
from bild.files import write_atomic
from bild.lab.chat import ChatMode, conversations
from bild.lab.corpus import hash_fraction
from bild.lab.options import AlignOptions, AlignRecipe
from bild.lab.outputs import OutputFolder
from bild.lab.render import figure
from bild.lab.tasks import Example
from bild.lab.training import adamw, learning_rate, smooth, update
from bild.lab.workload import Workload
from bild.pair import ModelPair

CHECKPOINT = "checkpoint.pt"  # under OUT/work
SETTINGS = "settings.json"  # under OUT/work: what the calibration set was built with, checked on --resume
SHARD = 64  # prompts per cached shard
BATCH = 16  # sequences per generation batch
RUN_CAP = 10  # accepted runs are counted up to the engine's default draft cap
PROMPT_TOKENS = 192  # a prompt's last tokens kept: the continuation depends on the recent context; batches stay small
DEV_FRACTION, DEV_MIN = 0.1, 3  # the dev split: a tenth of the prompts, at least three
TOO_MANY_EPOCHS = 4  # a budget worth more epochs than this over the training prompts is warned about


# --- the calibration set ------------------------------------------------------------------------


def left_padded(pair: ModelPair, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pair.pad_id] * (width - len(p)) + p for p in prompts], device=pair.device)  # [B, T]
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=pair.device)  # [B, T]
    return ids, mask


@torch.inference_mode()
def continuations(pair: ModelPair, prompts: list[list[int]], length: int, source: str) -> list[list[int]]:
    """Greedy continuations of the large model, or samples of the small one, for a batch of prompts."""
    ids, mask = left_padded(pair, prompts)
    model = pair.large if source == "large" else pair.small
    sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0} if source == "small" else {"do_sample": False}
    out = model.generate(ids, attention_mask=mask, max_new_tokens=length, min_new_tokens=length,
                         pad_token_id=pair.pad_id, **sampling)
    return out[:, ids.shape[1]:].tolist()


@torch.inference_mode()
def teacher(pair: ModelPair, prompts: list[list[int]], tails: list[list[int]], k: int
            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The large model's top-k log-probabilities at every position of each continuation (one pass each batch)."""
    ids, mask = left_padded(pair, [p + t for p, t in zip(prompts, tails, strict=True)])
    logp = torch.log_softmax(pair.large(input_ids=ids, attention_mask=mask).logits[..., : pair.vocab_size].float(),
                             dim=-1)  # [B, T, V]
    found = []
    for row, tail in zip(logp, tails, strict=True):
        scores = row[-len(tail) - 1: -1]  # [C, V]: position i predicts tail[i]
        top = scores.topk(k, dim=-1)
        found.append((top.indices.to(torch.int32).cpu(), top.values.to(torch.float16).cpu()))
    return found


def prompt_ids(pair: ModelPair, examples: list[Example], chat: ChatMode = "auto", system: str | None = None
               ) -> dict[str, list[int]]:
    """Each example's first prompt as bench renders it (bild/lab/chat.py), its last `PROMPT_TOKENS` tokens."""
    return {talk.example.id: talk.first[-PROMPT_TOKENS:]
            for talk in conversations(pair, examples, chat, system, max_new_tokens=None)}


def build_data(work: Workload, data_dir: Path, source: str, k: int, record: Callable[[Path], None] = lambda path: None,
               prompts: dict[str, list[int]] | None = None) -> list[dict[str, Any]]:
    """The calibration set of `work`'s examples, continuations of its `max_new_tokens`, from the cached shards plus
    the prompts they do not cover yet; `record` is told of each shard before it is written (the output folder's
    manifest); `prompts`: each example's ids (default: as `prompt_ids` renders them)."""
    pair, examples, length = work.pair, work.examples, work.config.max_new_tokens
    prompts = prompts or prompt_ids(pair, examples, work.chat, work.system)
    data_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for shard in sorted(data_dir.glob("shard-*.pt")):
        try:
            records += torch.load(shard, weights_only=True)
        except Exception as e:  # a torn or foreign file: its own error types
            raise BildError(f"calibration cache {shard} is corrupt ({type(e).__name__}): delete it and rerun with "
                            "--resume (it is regenerated), or start afresh with --overwrite") from None
    done = {r["id"] for r in records}
    todo = [e for e in examples if e.id not in done]
    bar = tqdm(total=len(todo), desc=f"calibration set ({source})", unit="prompt", disable=not work.progress)
    for start in range(0, len(todo), SHARD):
        chunk, shard_records = todo[start: start + SHARD], []
        for b in range(0, len(chunk), BATCH):
            batch = chunk[b: b + BATCH]
            batch_ids = [prompts[e.id] for e in batch]
            kinds = [source if source != "mix" else ("large", "small")[(start + b + i) % 2] for i in range(len(batch))]
            tails: list[list[int]] = [[] for _ in batch]
            for kind in set(kinds):
                index = [i for i, k_ in enumerate(kinds) if k_ == kind]
                for i, tail in zip(index, continuations(pair, [batch_ids[i] for i in index], length, kind),
                                   strict=True):
                    tails[i] = tail
            for e, p, t, kind, (top_ids, top_logp) in zip(batch, batch_ids, tails, kinds,
                                                          teacher(pair, batch_ids, tails, k), strict=True):
                shard_records.append({"id": e.id, "kind": kind, "ids": torch.tensor(p + t, dtype=torch.int32),
                                      "start": len(p), "top_ids": top_ids, "top_logp": top_logp})
            bar.update(len(batch))
        path = data_dir / f"shard-{len(list(data_dir.glob('shard-*.pt'))):05d}.pt"
        record(path)
        save_whole(shard_records, path)
        records += shard_records
    bar.close()
    wanted = {e.id for e in examples}
    return [r for r in records if r["id"] in wanted]


def save_whole(obj: Any, path: Path) -> None:
    """`torch.save`, there whole or not at all (a temporary file renamed over the target)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


# --- training -----------------------------------------------------------------------------------


def batch_of(records: list[dict[str, Any]], device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded ids, so every continuation ends the batch's last `keep` positions, and, per continuation
    position, which output row predicts it and what the teacher says there."""
    width = max(len(r["ids"]) for r in records)
    keep = max(len(r["ids"]) - r["start"] for r in records) + 1  # the rows predicting a continuation token
    ids = torch.zeros(len(records), width, dtype=torch.long)
    mask = torch.zeros(len(records), width, dtype=torch.long)
    rows, cols, top_ids, top_logp = [], [], [], []
    for i, r in enumerate(records):
        ids[i, width - len(r["ids"]):] = r["ids"].long()
        mask[i, width - len(r["ids"]):] = 1
        tail = len(r["ids"]) - r["start"]
        rows.append(torch.full((tail,), i))
        cols.append(torch.arange(keep - 1 - tail, keep - 1))  # row j of the kept window predicts token j + 1
        top_ids.append(r["top_ids"].long())
        top_logp.append(r["top_logp"].float())
    return {"ids": ids.to(device), "mask": mask.to(device), "keep": keep, "rows": torch.cat(rows).to(device),
            "cols": torch.cat(cols).to(device), "top_ids": torch.cat(top_ids).to(device),
            "top_logp": torch.cat(top_logp).to(device)}


def divergence(student: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor, loss: str) -> torch.Tensor:
    """The loss between the student's log-probabilities [N, V] and the teacher's top-k [N, k]."""
    s_top = student.gather(-1, top_ids)  # [N, k]
    t = torch.softmax(top_logp, dim=-1)  # the teacher, renormalised on its top-k
    if loss == "ce":
        return -s_top[:, 0].mean()
    if loss == "fkl":
        return (t * (torch.log(t.clamp_min(1e-12)) - s_top)).sum(-1).mean()
    if loss == "rkl":
        s = torch.softmax(s_top, dim=-1)
        return (s * (torch.log(s.clamp_min(1e-12)) - torch.log(t.clamp_min(1e-12)))).sum(-1).mean()
    if loss == "tvd":
        s = s_top.exp()
        rest = (1 - s.sum(-1)).clamp_min(0)
        return 0.5 * ((s - t).abs().sum(-1) + rest).mean()
    return 0.5 * divergence(student, top_ids, top_logp, "ce") + 0.5 * divergence(student, top_ids, top_logp, "fkl")


def student_logp(model: torch.nn.Module, batch: dict[str, torch.Tensor], vocab: int) -> torch.Tensor:
    """The small model's log-probabilities at every continuation position. # [N, V]"""
    logits = model(input_ids=batch["ids"], attention_mask=batch["mask"],
                   logits_to_keep=batch["keep"]).logits[..., :vocab]  # [B, keep, V]: the output layer runs there only
    return torch.log_softmax(logits[batch["rows"], batch["cols"]].float(), dim=-1)


@torch.no_grad()
def agreement_runs(model: torch.nn.Module, records: list[dict[str, Any]], vocab: int, device: torch.device
                   ) -> tuple[float, float]:
    """Teacher-forced top-1 agreement with the large model, and the expected accepted run from a position."""
    was_training = model.training
    model.eval()
    agree = total = 0
    runs: list[float] = []
    for i in range(0, len(records), BATCH):
        chunk = records[i: i + BATCH]
        batch = batch_of(chunk, device)
        same = (student_logp(model, batch, vocab).argmax(-1) == batch["top_ids"][:, 0]).cpu()
        agree += int(same.sum())
        total += len(same)
        offset = 0
        for r in chunk:
            n = len(r["ids"]) - r["start"]
            row = same[offset: offset + n].tolist()
            offset += n
            for j in range(n):  # accepted run from position j, as a drafter starting there would see
                length = 0
                while j + length < n and length < RUN_CAP and row[j + length]:
                    length += 1
                runs.append(length)
    model.train(was_training)
    return agree / max(total, 1), sum(runs) / max(len(runs), 1)


class Stopping(NamedTuple):
    """When fine-tuning stops: `patience` evaluations without a gain, `max_epochs` passes over the training
    prompts, or `seconds` of wall time, whichever comes first; `eval_every` steps between evaluations (None:
    half an epoch)."""

    seconds: float
    patience: int = 4
    max_epochs: float = 8.0
    eval_every: int | None = None


class Split(NamedTuple):
    """A calibration set as training reads it: the records trained on, the dev records scored, the vocabulary."""

    train: list[dict[str, Any]]
    dev: list[dict[str, Any]]
    vocab: int


class Training:
    """One fine-tuning run: the model, its optimiser and the progress a checkpoint keeps (step, elapsed time, best
    dev agreement and its curve), so that `--resume` continues where Ctrl-C or a crash left off."""

    def __init__(self, model: torch.nn.Module, split: Split, recipe: AlignRecipe, stopping: Stopping, work: Path,
                 record: Callable[[Path], None]) -> None:
        self.model, self.split, self.recipe, self.stopping, self.work, self.record = (
            model, split, recipe, stopping, work, record)
        self.device = next(model.parameters()).device
        self.original = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.float().train().requires_grad_(True)  # trained in float32 whatever the pair's dtype
        self.opt = adamw(model, recipe.lr, weight_decay=0.01, betas=(0.9, 0.98))
        self.per_epoch = max(1, math.ceil(len(split.train) / recipe.batch))
        self.eval_every = stopping.eval_every or max(1, self.per_epoch // 2)
        self.max_steps = max(1, math.ceil(stopping.max_epochs * self.per_epoch))
        before = self.agreement()
        self.state = {"step": 0, "elapsed": 0.0, "best": before, "best_step": 0, "curve": [[0, before]],
                      "since_best": 0}
        self.smoothed = float("nan")

    @property
    def checkpoint(self) -> Path:
        return self.work / CHECKPOINT

    def agreement(self) -> float:
        return agreement_runs(self.model, self.split.dev, self.split.vocab, self.device)[0]

    def resume(self) -> None:
        """Continue from the checkpoint, when there is one."""
        if self.checkpoint.exists():
            saved = load_checkpoint(self.checkpoint)
            self.model.load_state_dict(saved["model"])
            self.opt.load_state_dict(saved["optimizer"])
            self.state = saved["state"]

    def save(self) -> None:
        self.record(self.checkpoint)
        save_whole({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "state": self.state},
                   self.checkpoint)

    def evaluate(self) -> bool:
        """Score the dev split; keep a new best; whether patience has run out."""
        state, agreement = self.state, self.agreement()
        state["curve"].append([state["step"], agreement])
        if agreement > state["best"]:
            state["best"], state["best_step"], state["since_best"] = agreement, state["step"], 0
            self.model.save_pretrained(self.work / "best")
            self.record(self.work / "best")
        else:
            state["since_best"] += 1
        return state["since_best"] >= self.stopping.patience

    def step(self, gen: torch.Generator, begun: float) -> None:
        """One optimiser step on a random batch; the first step's time is what the budget is worth (an
        overestimate: warm-up)."""
        state, recipe, records = self.state, self.recipe, self.split.train
        elapsed = time.monotonic() - begun
        pick = torch.randint(len(records), (recipe.batch,), generator=gen).tolist()
        batch = batch_of([records[i] for i in pick], self.device)
        loss = divergence(student_logp(self.model, batch, self.split.vocab), batch["top_ids"], batch["top_logp"],
                          recipe.loss)
        rate = learning_rate(recipe.lr, state["step"], max(state["step"] / self.max_steps,
                                                             elapsed / self.stopping.seconds))
        self.smoothed = smooth(self.smoothed, update(self.model, self.opt, loss, rate))
        state["step"] += 1
        state["elapsed"] = time.monotonic() - begun
        if state["step"] == 1:
            if state["elapsed"] > self.stopping.seconds:
                raise BildError(f"the budget of {self.stopping.seconds / 60:g} minutes is shorter than one training "
                                f"step ({state['elapsed']:.0f} s here): give a larger --minutes")
            warn_epochs(self.stopping, state["elapsed"], self.per_epoch, len(records), recipe.batch)

    def run(self, progress: bool) -> str:
        """Step until the epochs, the time or the patience run out; why it stopped. A checkpoint is saved every
        minute and on Ctrl-C."""
        state = self.state
        gen = torch.Generator().manual_seed(state["step"])
        begun, last_save = time.monotonic() - state["elapsed"], time.monotonic()
        bar = tqdm(total=self.max_steps, initial=state["step"], desc=f"aligning ({self.recipe.loss})", unit="step",
                   disable=not progress)
        stopped = None
        try:
            while stopped is None:
                if state["step"] >= self.max_steps:
                    stopped = "max_epochs"
                elif time.monotonic() - begun >= self.stopping.seconds and state["step"] > 0:
                    stopped = "minutes"
                else:
                    self.step(gen, begun)
                    bar.update(1)
                    if state["step"] % self.eval_every == 0:
                        stopped = "patience" if self.evaluate() else None
                        bar.set_postfix(agreement=f"{state['curve'][-1][1]:.3f}", best=f"{state['best']:.3f}",
                                        loss=f"{self.smoothed:.3f}")
                    if time.monotonic() - last_save > 60:
                        self.save()
                        last_save = time.monotonic()
            if state["curve"][-1][0] != state["step"]:
                self.evaluate()
        except KeyboardInterrupt:  # Ctrl-C keeps the steps made: --resume continues from here
            if state["step"] > 0:
                self.save()
            raise
        finally:
            bar.close()
            self.model.eval().requires_grad_(False)
        return stopped

    def keep_best(self) -> None:
        """The best dev agreement's weights into the model; the original's when no step beat it."""
        best = self.work / "best"
        if self.state["best_step"] > 0 and best.exists():
            self.model.load_state_dict(type(self.model).from_pretrained(best).state_dict())
        else:
            self.model.load_state_dict(self.original)
            self.model.to(next(iter(self.original.values())).dtype)


def train(model: torch.nn.Module, split: Split, recipe: AlignRecipe, stopping: Stopping, work: Path, resume: bool,
          progress: bool = True, record: Callable[[Path], None] = lambda path: None) -> dict[str, Any]:
    """Fine-tune until `stopping` says so; the best dev agreement's weights end in `model`, the original's when
    no step beat it (the original is the first checkpoint). `record` is told of every file written under `work`."""
    training = Training(model, split, recipe, stopping, work, record)
    if resume:
        training.resume()
    stopped = training.run(progress)
    training.keep_best()
    state = training.state
    return {"steps": state["step"], "seconds": state["elapsed"], "epochs": state["step"] / training.per_epoch,
            "evaluations": len(state["curve"]) - 1, "eval_every": training.eval_every, "stopped": stopped,
            "patience": stopping.patience, "max_epochs": stopping.max_epochs,
            "dev_agreement_before": state["curve"][0][1], "dev_agreement_best": state["best"],
            "best_step": state["best_step"], "improved": state["best_step"] > 0, "dev_curve": state["curve"]}


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint: tensors and plain values only (nothing is unpickled), or one line."""
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as e:  # a torn or foreign file fails with its own error types
        raise BildError(f"the checkpoint {str(path)!r} is torn or not bild's ({type(e).__name__}): delete it and "
                        "rerun with --resume (training restarts at step 0, the calibration set is kept)") from None
    if not (isinstance(saved, dict) and {"model", "optimizer", "state"} <= set(saved)):
        raise BildError(f"the checkpoint {str(path)!r} is not a bild align checkpoint: delete it and rerun with "
                        "--resume")
    return saved


def warn_epochs(stopping: Stopping, step_seconds: float, per_epoch: int, prompts: int, batch_size: int) -> None:
    """Say, once, when the time budget is worth many epochs over few prompts (a small set overfits)."""
    epochs = stopping.seconds / step_seconds / per_epoch
    if epochs > TOO_MANY_EPOCHS:
        usable = int(stopping.seconds / step_seconds * batch_size / TOO_MANY_EPOCHS)
        print(f"note: the {stopping.seconds / 60:g}-minute budget is about {epochs:.0f} epochs over these {prompts} "
              f"training prompts ({1 / step_seconds:.1f} steps/s): they will overfit, so training stops when the dev "
              f"agreement stops improving (--patience {stopping.patience}) or at --max-epochs {stopping.max_epochs:g}; "
              f"the budget could use about {usable} prompts", file=sys.stderr, flush=True)


def curve_plot(summary: dict[str, Any], path: Path) -> None:
    """The dev agreement against training steps, the original's as a line."""
    steps, agreement = zip(*summary["dev_curve"], strict=True)

    def draw(ax: Any) -> None:
        ax.plot(steps, agreement, "o-", ms=3, label="dev agreement")
        ax.axhline(summary["dev_agreement_before"], color="0.5", ls="--", label="original")
        ax.axvline(summary["best_step"], color="C3", ls=":", label=f"kept (step {summary['best_step']})")
        ax.set_xlabel("training step")
        ax.set_ylabel("top-1 agreement with the large model")
        ax.set_title(f"alignment: stopped by {summary['stopped']}", fontsize=9)
        ax.legend(fontsize=8)

    figure(str(path), draw, size=(6.0, 3.8))


def dev_split(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(dev, train): the `DEV_FRACTION` of prompts lowest by hash, at least `DEV_MIN`, and the rest."""
    ranked = sorted(records, key=lambda r: (hash_fraction(r["id"]), r["id"]))
    size = max(DEV_MIN, round(DEV_FRACTION * len(records)))
    if len(records) < size + DEV_MIN:
        raise BildError(f"{len(records)} prompts cannot make a dev split of {size} and a training set: give at "
                        f"least {size + DEV_MIN}")
    dev = ranked[:size]
    if sum(len(r["ids"]) - r["start"] for r in dev) == 0:
        raise BildError("the dev split holds no continuation tokens: give a positive --max-new-tokens")
    return dev, ranked[size:]


# --- the command --------------------------------------------------------------------------------


def excluded(examples: list[Example], exclude: list[Example]) -> list[Example]:
    """The examples whose prompt is not in the held-out set (by text, and by id)."""
    texts, ids = {e.prompt for e in exclude}, {e.id for e in exclude}
    return [e for e in examples if e.prompt not in texts and e.id not in ids]


def small_quality(pair: ModelPair, examples: list[Example], length: int, prompts: dict[str, list[int]]
                  ) -> float | None:
    """chrF of the small model's greedy continuations against the references."""
    from bild.lab.metrics import chrf

    refs = [e.reference for e in examples]
    if not examples or any(r is None for r in refs):
        return None
    texts = []
    for b in range(0, len(examples), BATCH):
        ids, mask = left_padded(pair, [prompts[e.id] for e in examples[b: b + BATCH]])
        with torch.inference_mode():
            out = pair.small.generate(ids, attention_mask=mask, max_new_tokens=length, do_sample=False,
                                      pad_token_id=pair.pad_id)
        texts += [pair.tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out.tolist()]
    return chrf(texts, refs)


def evaluate(pair: ModelPair, records: list[dict[str, Any]], examples: list[Example], length: int,
             prompts: dict[str, list[int]]) -> dict[str, Any]:
    agreement, run = agreement_runs(pair.small, records, pair.vocab_size, pair.device)
    return {"agreement": agreement, "expected_accepted_run": run,
            "small_chrf": small_quality(pair, examples, length, prompts)}


def align(work: Workload, out: str | Path | OutputFolder, minutes: float | Stopping, recipe: AlignRecipe | None = None,
          exclude: list[Example] = (), evaluation: list[Example] = (), resume: bool = False, overwrite: bool = False
          ) -> dict[str, Any]:
    """Build (or resume) the calibration set of `work`'s examples (continuations of its `max_new_tokens`, prompts
    as its chat mode renders them), fine-tune the small model, write OUT and OUT/align.json.

    OUT follows bild/lab/outputs.py's rule: a new or empty folder, or one an earlier `bild align`
    wrote (`resume` continues it; `overwrite` deletes what that run wrote, and only that).
    """
    pair = work.pair
    folder = out if isinstance(out, OutputFolder) else OutputFolder(out, "align", [pair.small_name, pair.large_name],
                                                                    resume, overwrite)
    examples = excluded(work.examples, list(exclude))
    if len(examples) < 10:
        raise BildError(f"{len(examples)} prompts are left for the calibration set: give at least 10")
    stopping = minutes if isinstance(minutes, Stopping) else Stopping(seconds=60 * minutes)
    prompts = prompt_ids(pair, [*examples, *evaluation], work.chat, work.system)  # all render before OUT opens
    folder.open()
    try:
        return fine_tune(dataclasses.replace(work, examples=examples), folder, stopping, recipe or AlignRecipe(),
                         len(exclude), list(evaluation), bool(folder.manifest["entries"]), prompts)
    finally:
        folder.close_unused()


def fine_tune(work: Workload, folder: OutputFolder, stopping: Stopping, recipe: AlignRecipe, excluded_count: int,
              evaluation: list[Example], resume: bool, prompts: dict[str, list[int]]) -> dict[str, Any]:
    pair, examples, out, length = work.pair, work.examples, folder.path, work.config.max_new_tokens
    keep_settings(folder, {"data": recipe.data, "max_new_tokens": length, "teacher_top_k": recipe.teacher_top_k,
                           "prompts": prompts_hash(examples, prompts), "eval": prompts_hash(evaluation, prompts)},
                  resume)
    started = time.monotonic()
    records = build_data(work, out / "data", recipe.data, recipe.teacher_top_k, folder.wrote, prompts)
    data_seconds = time.monotonic() - started
    dev, train_records = dev_split(records)
    heldout: list[dict[str, Any]] = []
    before = None
    if evaluation:
        heldout = build_data(dataclasses.replace(work, examples=evaluation), out / "work" / "eval-data", "large",
                             recipe.teacher_top_k, folder.wrote, prompts)
        before = evaluate(pair, heldout, evaluation, length, prompts)
    report = train(pair.small, Split(train_records, dev, pair.vocab_size), recipe, stopping, out / "work", resume,
                   work.progress, folder.wrote)
    present = {p.name for p in out.iterdir()}
    pair.small.save_pretrained(out)
    pair.tokenizer.save_pretrained(out)
    folder.wrote(*sorted({p.name for p in out.iterdir()} - present), "align.json", "align-curve.png")
    summary = {"small": pair.small_name, "large": pair.large_name, "data": recipe.data, "loss": recipe.loss,
               "prompts": len(records), "continuation_tokens": length, "top_k": recipe.teacher_top_k,
               "lr": recipe.lr, "batch": recipe.batch, "data_seconds": data_seconds, **report,
               "excluded": excluded_count, "dev_prompts": len(dev), "train_prompts": len(train_records)}
    if evaluation:
        summary["eval"] = {"prompts": len(evaluation), "before": before,
                           "after": evaluate(pair, heldout, evaluation, length, prompts)}
    write_atomic(out / "align.json", json.dumps(summary, indent=2) + "\n")
    curve_plot(summary, out / "align-curve.png")
    return summary


def prompts_hash(examples: list[Example], prompts: dict[str, list[int]]) -> str:
    """What a calibration set's prompts were: their ids and rendered token ids."""
    return hashlib.sha256(json.dumps([[e.id, prompts[e.id]] for e in examples]).encode()).hexdigest()[:16]


def keep_settings(folder: OutputFolder, settings: dict[str, Any], resume: bool) -> None:
    """Record what the calibration set is built with; a resumed run must use the same, or it would train on
    the first run's shards while reporting its own settings."""
    path = folder.path / "work" / SETTINGS
    if resume and path.exists():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = None
        if not isinstance(before, dict):
            raise BildError(f"{str(path)!r} is torn: rerun with --overwrite to start afresh")
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            named = ", ".join(f"--{k.replace('_', '-')} {before.get(k)!r} (now {settings[k]!r})"
                              if k not in ("prompts", "eval") else f"other {k} than before" for k in changed)
            raise BildError(f"--resume: {str(folder.path)!r} was built with {named}: rerun with the first run's "
                            "settings, or --overwrite to start afresh")
        return
    folder.wrote(path)
    write_atomic(path, json.dumps(settings, indent=2) + "\n")


def kept_after_interrupt(out: str) -> str:
    """What an interrupted `bild align` leaves in OUT, and how to continue."""
    folder = Path(out).expanduser()
    shards = len(list((folder / "data").glob("shard-*.pt")))
    if not shards and not (folder / "work" / CHECKPOINT).exists():
        return f"nothing finished was kept in {out} (no calibration shard yet): rerun with --resume to start again"
    if (folder / "work" / CHECKPOINT).exists():
        return (f"the calibration set's {shards} finished shard(s) and a training checkpoint are in {out}: rerun "
                "with --resume to continue")
    return (f"the calibration set's {shards} finished shard(s) are in {out}, but no training step (none had "
            "finished): rerun with --resume to continue from the calibration set")


def run_align(options: AlignOptions) -> dict[str, Any]:
    """`bild align`: every input and OUT checked before the pair loads, then `align`, then one line."""
    from bild.lab.experiment import load_pair
    from bild.lab.tasks import load_examples, load_jsonl

    examples = load_examples(options.prompts, options.task, options.n, options.offset, options.data_dir)
    exclude = load_jsonl(options.exclude) if options.exclude else []
    evaluation = load_jsonl(options.eval) if options.eval else []
    folder = OutputFolder(options.out, "align", [options.prompts, options.exclude, options.eval, options.small,
                                                 options.large], options.resume, options.overwrite)
    left = excluded(examples, exclude)
    if len(left) < 10:
        raise BildError(f"{len(left)} prompts are left for the calibration set after --exclude: give at least 10")
    stopping = Stopping(60 * options.minutes, options.patience, options.max_epochs, options.eval_every)
    work = Workload(load_pair(options), examples, options.generation, chat=options.chat, system=options.system)
    summary = align(work, folder, stopping, options.recipe, exclude, evaluation)
    for line in report_lines(summary, options.out):
        print(line)
    return summary


def report_lines(summary: dict[str, Any], out: str) -> list[str]:
    """What `bild align` prints: the run, whether it helped, the held-out check (its fall on the last line)."""
    why = {"patience": f"no dev gain in {summary['patience']} evaluations in a row", "minutes": "the time budget",
           "max_epochs": f"the cap of {summary['max_epochs']:g} epochs"}[summary["stopped"]]
    lines = [f"{summary['steps']} steps ({summary['epochs']:.1f} epochs, {summary['evaluations']} evaluations) in "
             f"{summary['seconds'] / 60:.1f} min on {summary['train_prompts']} training prompts; stopped by {why}; "
             f"dev agreement {summary['dev_agreement_before']:.3f} -> {summary['dev_agreement_best']:.3f}"]
    if summary["improved"]:
        lines.append(f"kept the best step ({summary['best_step']}); written to {out}")
    else:
        lines.append(f"alignment did not help: no step beat the original small model on the dev split, so {out} holds "
                     "the original weights (improved: false)")
    if "eval" in summary:
        b, a = summary["eval"]["before"], summary["eval"]["after"]
        lines.append(f"held-out agreement {b['agreement']:.3f} -> {a['agreement']:.3f}, expected accepted run "
                     f"{b['expected_accepted_run']:.2f} -> {a['expected_accepted_run']:.2f}")
        if a["agreement"] < b["agreement"]:
            lines.append(f"warning: the held-out agreement FELL ({b['agreement']:.3f} -> {a['agreement']:.3f}): the "
                         "dev split did not predict the held-out prompts; keep the original small model, or align on "
                         "more prompts closer to them")
    return lines
