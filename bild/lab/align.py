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
    train   the small model for a wall-time budget against the large model's distributions:
            `ce` (its greedy tokens), `fkl` (forward KL), `rkl` (reverse KL), `tvd` (total
            variation, what greedy acceptance depends on), `mix` (ce + fkl), all over the top-k
            support; AdamW with a cosine schedule over the budget. Batches are left-padded so
            the output layer runs on the continuation positions only. The checkpoint with the best
            top-1 agreement on a dev split is kept (OUT/work/best), so Ctrl-C loses nothing; a
            checkpoint every minute lets `--resume` continue.
    out     OUT is a Hugging Face model folder (`ModelPair.from_pretrained(OUT, large)` loads it)
            with `align.json`: data, loss, steps, time, agreement before and after, and with
            `--eval FILE` agreement, expected accepted run length and small-alone chrF on held-out
            prompts, before and after.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bild.errors import BildError
from bild.files import write_atomic
from bild.lab.options import AlignOptions
from bild.lab.outputs import OutputFolder
from bild.lab.tasks import Example
from bild.pair import ModelPair

SHARD = 64  # prompts per cached shard
BATCH = 16  # sequences per generation batch
RUN_CAP = 10  # accepted runs are counted up to the engine's default draft cap


# --- the calibration set ------------------------------------------------------------------------


def left_padded(pair: ModelPair, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    pad = pair.tokenizer.pad_token_id if pair.tokenizer.pad_token_id is not None else pair.tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=pair.device)  # [B, T]
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=pair.device)  # [B, T]
    return ids, mask


@torch.inference_mode()
def continuations(pair: ModelPair, prompts: list[list[int]], length: int, source: str) -> list[list[int]]:
    """Greedy continuations of the large model, or samples of the small one, for a batch of prompts."""
    ids, mask = left_padded(pair, prompts)
    model = pair.large if source == "large" else pair.small
    pad = pair.tokenizer.pad_token_id if pair.tokenizer.pad_token_id is not None else pair.tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0} if source == "small" else {"do_sample": False}
    out = model.generate(ids, attention_mask=mask, max_new_tokens=length, min_new_tokens=length, pad_token_id=pad,
                         **sampling)
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


def build_data(pair: ModelPair, examples: list[Example], data_dir: Path, length: int, source: str, k: int,
               progress: bool = True) -> list[dict[str, Any]]:
    """The calibration set, from the cached shards plus the prompts they do not cover yet."""
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
    bar = tqdm(total=len(todo), desc=f"calibration set ({source})", unit="prompt", disable=not progress)
    for start in range(0, len(todo), SHARD):
        chunk, shard_records = todo[start: start + SHARD], []
        for b in range(0, len(chunk), BATCH):
            batch = chunk[b: b + BATCH]
            prompts = [pair.tokenizer(e.prompt)["input_ids"][-192:] for e in batch]
            kinds = [source if source != "mix" else ("large", "small")[(start + b + i) % 2] for i in range(len(batch))]
            tails: list[list[int]] = [[] for _ in batch]
            for kind in set(kinds):
                index = [i for i, k_ in enumerate(kinds) if k_ == kind]
                for i, tail in zip(index, continuations(pair, [prompts[i] for i in index], length, kind), strict=True):
                    tails[i] = tail
            for e, p, t, kind, (top_ids, top_logp) in zip(batch, prompts, tails, kinds,
                                                          teacher(pair, prompts, tails, k), strict=True):
                shard_records.append({"id": e.id, "kind": kind, "ids": torch.tensor(p + t, dtype=torch.int32),
                                      "start": len(p), "top_ids": top_ids, "top_logp": top_logp})
            bar.update(len(batch))
        path = data_dir / f"shard-{len(list(data_dir.glob('shard-*.pt'))):05d}.pt"
        tmp = path.with_name(path.name + ".tmp")
        torch.save(shard_records, tmp)
        tmp.replace(path)  # a shard is there whole or not at all
        records += shard_records
    bar.close()
    wanted = {e.id for e in examples}
    return [r for r in records if r["id"] in wanted]


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


def train(model: torch.nn.Module, records: list[dict[str, Any]], dev: list[dict[str, Any]], vocab: int,
          loss_name: str, seconds: float, work: Path, lr: float, batch_size: int, resume: bool,
          progress: bool = True) -> dict[str, Any]:
    """Fine-tune for `seconds` of wall time; keep the best dev agreement under `work/best`."""
    device = next(model.parameters()).device
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    state = {"step": 0, "elapsed": 0.0, "best": agreement_runs(model, dev, vocab, device)[0], "best_step": 0,
             "losses": []}
    checkpoint = work / "checkpoint.pt"
    if resume and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state = saved["state"]
    start_agreement = state["best"]
    gen = torch.Generator().manual_seed(state["step"])
    begun, last_eval, last_save = time.monotonic() - state["elapsed"], time.monotonic(), time.monotonic()
    bar = tqdm(total=round(seconds), initial=round(state["elapsed"]), desc=f"aligning ({loss_name})", unit="s",
               disable=not progress)
    smoothed = float("nan")

    def evaluate_and_keep() -> None:
        agreement = agreement_runs(model, dev, vocab, device)[0]
        if agreement > state["best"]:
            state["best"], state["best_step"] = agreement, state["step"]
            model.save_pretrained(work / "best")
        bar.set_postfix(agreement=f"{agreement:.3f}", best=f"{state['best']:.3f}", loss=f"{smoothed:.3f}")

    try:
        while (elapsed := time.monotonic() - begun) < seconds or state["step"] == 0:  # one step, at least
            frac = min(elapsed / seconds, 1.0)
            for group in opt.param_groups:  # warm up, then cosine down over the wall-time budget
                group["lr"] = lr * min(1.0, (state["step"] + 1) / 20) * 0.5 * (1 + math.cos(math.pi * frac))
            pick = torch.randint(len(records), (batch_size,), generator=gen).tolist()
            batch = batch_of([records[i] for i in pick], device)
            loss = divergence(student_logp(model, batch, vocab), batch["top_ids"], batch["top_logp"], loss_name)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            state["step"] += 1
            if state["step"] == 1 and time.monotonic() - begun > seconds:
                raise BildError(f"the budget of {seconds / 60:g} minutes is shorter than one training step "
                                f"({time.monotonic() - begun:.0f} s here): give a larger --minutes")
            smoothed = loss.item() if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * loss.item()
            now = time.monotonic()
            state["elapsed"] = now - begun
            bar.update(round(state["elapsed"]) - bar.n)
            if now - last_eval > max(20.0, seconds / 30):
                evaluate_and_keep()
                last_eval = now
            if now - last_save > 60:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state}, checkpoint)
                last_save = now
        evaluate_and_keep()
    finally:
        bar.close()
        model.eval().requires_grad_(False)
    return {"steps": state["step"], "seconds": state["elapsed"], "dev_agreement_before": start_agreement,
            "dev_agreement_best": state["best"], "best_step": state["best_step"]}


# --- the command --------------------------------------------------------------------------------


def excluded(examples: list[Example], exclude: list[Example]) -> list[Example]:
    """The examples whose prompt is not in the held-out set (by text, and by id)."""
    texts, ids = {e.prompt for e in exclude}, {e.id for e in exclude}
    return [e for e in examples if e.prompt not in texts and e.id not in ids]


def small_quality(pair: ModelPair, examples: list[Example], length: int) -> float | None:
    """chrF of the small model's greedy continuations against the references."""
    from bild.lab.metrics import chrf

    refs = [e.reference for e in examples]
    if not examples or any(r is None for r in refs):
        return None
    texts = []
    for b in range(0, len(examples), BATCH):
        prompts = [pair.tokenizer(e.prompt)["input_ids"][-192:] for e in examples[b: b + BATCH]]
        ids, mask = left_padded(pair, prompts)
        with torch.inference_mode():
            out = pair.small.generate(ids, attention_mask=mask, max_new_tokens=length, do_sample=False,
                                      pad_token_id=pair.tokenizer.pad_token_id or pair.tokenizer.eos_token_id)
        texts += [pair.tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out.tolist()]
    return chrf(texts, refs)


def evaluate(pair: ModelPair, records: list[dict[str, Any]], examples: list[Example], length: int) -> dict[str, Any]:
    agreement, run = agreement_runs(pair.small, records, pair.vocab_size, pair.device)
    return {"agreement": agreement, "expected_accepted_run": run,
            "small_chrf": small_quality(pair, examples, length)}


def align(pair: ModelPair, examples: list[Example], out: str | Path | OutputFolder, minutes: float, loss: str = "ce",
          data: str = "large", length: int = 64, top_k: int = 32, lr: float = 1e-4, batch_size: int = 32,
          exclude: list[Example] = (), evaluation: list[Example] = (), resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Build (or resume) the calibration set, fine-tune the small model, write OUT and OUT/align.json.

    OUT follows bild/lab/outputs.py's rule: a new or empty folder, or one an earlier `bild align`
    wrote (`resume` continues it; `overwrite` deletes what that run wrote, and only that).
    """
    folder = out if isinstance(out, OutputFolder) else OutputFolder(out, "align", [pair.small_name, pair.large_name],
                                                                    resume, overwrite)
    examples = excluded(examples, list(exclude))
    if len(examples) < 10:
        raise BildError(f"{len(examples)} prompts are left for the calibration set: give at least 10")
    folder.open()
    try:
        return fine_tune(pair, examples, folder, minutes, loss, data, length, top_k, lr, batch_size, len(exclude),
                         list(evaluation), bool(folder.manifest["entries"]), progress)
    finally:
        folder.close_unused()


def fine_tune(pair: ModelPair, examples: list[Example], folder: OutputFolder, minutes: float, loss: str, data: str,
              length: int, top_k: int, lr: float, batch_size: int, excluded_count: int, evaluation: list[Example],
              resume: bool, progress: bool) -> dict[str, Any]:
    out = folder.path
    folder.wrote("data", "work")
    started = time.monotonic()
    records = build_data(pair, examples, out / "data", length, data, top_k, progress)
    data_seconds = time.monotonic() - started
    dev = [r for r in records if hash_fraction(r["id"]) < 0.1] or records[:1]
    train_records = [r for r in records if hash_fraction(r["id"]) >= 0.1]
    heldout: list[dict[str, Any]] = []
    before = None
    if evaluation:
        heldout = build_data(pair, evaluation, out / "work" / "eval-data", length, "large", top_k, progress)
        before = evaluate(pair, heldout, evaluation, length)
    small = pair.small.float()  # trained in float32 whatever the pair's dtype
    report = train(small, train_records, dev, pair.vocab_size, loss, minutes * 60, out / "work", lr, batch_size,
                   resume, progress)
    best = out / "work" / "best"
    if best.exists():  # the best checkpoint, else the model as trained (no dev improvement)
        small.load_state_dict(type(small).from_pretrained(best).state_dict())
    present = {p.name for p in out.iterdir()}
    small.save_pretrained(out)
    pair.tokenizer.save_pretrained(out)
    folder.wrote(*sorted({p.name for p in out.iterdir()} - present), "align.json")
    summary = {"small": pair.small_name, "large": pair.large_name, "data": data, "loss": loss, "prompts": len(records),
               "continuation_tokens": length, "top_k": top_k, "lr": lr, "batch": batch_size,
               "data_seconds": data_seconds, **report, "excluded": excluded_count}
    if evaluation:
        summary["eval"] = {"prompts": len(evaluation), "before": before,
                           "after": evaluate(pair, heldout, evaluation, length)}
    write_atomic(out / "align.json", json.dumps(summary, indent=2) + "\n")
    return summary


def run_align(options: AlignOptions) -> dict[str, Any]:
    """`bild align`: every input and OUT checked before the pair loads, then `align`, then one line."""
    from bild.lab.experiment import load_pair
    from bild.lab.tasks import load_examples, load_jsonl

    examples = load_examples(options.prompts, options.task, options.n, options.offset)
    exclude = load_jsonl(options.exclude) if options.exclude else []
    evaluation = load_jsonl(options.eval) if options.eval else []
    folder = OutputFolder(options.out, "align", [options.prompts, options.exclude, options.eval, options.small,
                                                 options.large], options.resume, options.overwrite)
    left = excluded(examples, exclude)
    if len(left) < 10:
        raise BildError(f"{len(left)} prompts are left for the calibration set after --exclude: give at least 10")
    summary = align(load_pair(options), examples, folder, options.minutes, options.loss, options.data,
                    options.generation.max_new_tokens, options.teacher_top_k, options.lr, options.batch, exclude,
                    evaluation)
    line = (f"{summary['steps']} steps in {summary['seconds'] / 60:.1f} min on {summary['prompts']} prompts; dev "
            f"agreement {summary['dev_agreement_before']:.3f} -> {summary['dev_agreement_best']:.3f}")
    if "eval" in summary:
        b, a = summary["eval"]["before"], summary["eval"]["after"]
        line += (f"; held-out agreement {b['agreement']:.3f} -> {a['agreement']:.3f}, accepted run "
                 f"{b['expected_accepted_run']:.2f} -> {a['expected_accepted_run']:.2f}")
    print(f"{line}; written to {options.out}")
    return summary


def hash_fraction(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 1000 / 1000
