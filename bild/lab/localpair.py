"""A small/large pair the project builds itself, offline, from the local Python standard library.

One byte-level BPE tokenizer and two Llama-style models of one width and different depth. The
large model trains first; the small one starts as the large one cut to its first layers and is
then distilled from it on the KL divergence to the large model's predictions alone (the cheap
version of the paper's "prediction alignment": the small model's job is to predict the large
one, not the data; on the `cpu` preset this doubles the accepted drafts per verification of a
cross-entropy + KL mix). Each trains for a fixed number of optimizer steps on a fixed seed, so
a pair built on any machine is the same pair up to floating-point rounding (a wall-time budget
made it depend on the machine's speed, and the demo's figures with it).

The result is cached under `$BILD_CACHE` (default `~/.cache/bild`) as two ordinary Hugging Face
model directories that `ModelPair.from_pretrained` loads like any other pair; a partially built
pair is never left there (it is written elsewhere, then moved).

Presets: `cpu` takes about 7 minutes on a 2-core machine; `gpu` trains a stronger pair, meant
to take about 10 minutes on one GPU (its step counts are an estimate, not yet timed on a GPU).
This pair is a demo and a test bed, not a good code model.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from pydantic import BaseModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bild.errors import BildError
from bild.lab.corpus import read_texts, stdlib_files
from bild.lab.training import adamw, learning_rate, smooth, update
from bild.paths import cache_dir

EOS = "<|endoftext|>"


class ModelShape(BaseModel):
    layers: int
    train_steps: int


class Preset(BaseModel):
    vocab_size: int
    corpus_chars: int
    context: int
    batch: int
    lr: float
    hidden: int
    heads: int
    mlp: int
    small: ModelShape
    large: ModelShape
    minutes: float  # about how long a build takes on the machine the preset is meant for


PRESETS = {
    # Small batches: on 2 CPU cores, more optimizer steps beat bigger ones in a few minutes. A
    # large model 8 layers deep against a small one of 1 makes a draft cost about a fifth of a
    # verification (a shallower pair is bound by per-pass overhead and cannot show a speedup).
    "cpu": Preset(vocab_size=4096, corpus_chars=8_000_000, context=256, batch=4, lr=2e-3,
                  small=ModelShape(layers=1, train_steps=390),
                  large=ModelShape(layers=8, train_steps=360), hidden=384, heads=6, mlp=1024, minutes=7),
    "gpu": Preset(vocab_size=8192, corpus_chars=40_000_000, context=512, batch=64, lr=1e-3,
                  small=ModelShape(layers=2, train_steps=1500),
                  large=ModelShape(layers=12, train_steps=3000), hidden=384, heads=6, mlp=1024, minutes=10),
}


BUILD = 3  # bumped when the presets change, so a cached pair of older presets is not reused


def pair_dir(preset: str) -> Path:
    return cache_dir() / "pairs" / f"stdlib-{preset}-v{BUILD}"


# --- tokenizer and data --------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS)


def token_stream(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """All files as one stream of ids, each file followed by EOS. # [N]"""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


# --- training --------------------------------------------------------------------------------


def build_model(shape: ModelShape, preset: Preset, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    eos = tokenizer.eos_token_id
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=preset.hidden, intermediate_size=preset.mlp,
                         num_hidden_layers=shape.layers, num_attention_heads=preset.heads,
                         num_key_value_heads=preset.heads, max_position_embeddings=4 * preset.context,
                         tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    return LlamaForCausalLM(config)


def train(model: LlamaForCausalLM, stream: torch.Tensor, preset: Preset, steps: int, device: torch.device,
          label: str, seed: int, teacher: LlamaForCausalLM | None = None) -> float:
    """Train on random windows of `stream` for `steps` steps; return the last smoothed loss.

    Without a `teacher` the loss is cross-entropy on the data; with one, the KL divergence to the
    teacher's predictions.
    """
    model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    opt = adamw(model, preset.lr, weight_decay=0.1, betas=(0.9, 0.95))
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    loss_avg = float("nan")
    bar = tqdm(range(steps), desc=f"training {label}", unit="step", leave=True)
    for step in bar:
        offsets = torch.randint(0, len(stream) - preset.context - 1, (preset.batch,), generator=gen)
        batch = torch.stack([stream[o: o + preset.context + 1] for o in offsets.tolist()]).to(device)  # [B, T+1]
        with amp:
            logits = model(input_ids=batch[:, :-1]).logits  # [B, T, V]
            logp = torch.log_softmax(logits.flatten(0, 1).float(), dim=-1)  # [B*T, V]
            if teacher is None:
                loss = torch.nn.functional.nll_loss(logp, batch[:, 1:].flatten())
            else:
                with torch.no_grad():
                    target = torch.log_softmax(teacher(input_ids=batch[:, :-1]).logits.flatten(0, 1).float(), -1)
                loss = torch.nn.functional.kl_div(logp, target, log_target=True, reduction="batchmean")
        loss_avg = smooth(loss_avg, update(model, opt, loss, learning_rate(preset.lr, step, step / steps)))
        bar.set_postfix(loss=f"{loss_avg:.3f}")
    return loss_avg


def save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path, loss: str) -> None:
    model.eval().to("cpu").save_pretrained(path)
    tokenizer.save_pretrained(path)
    print(f"{path.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {loss}")


def build_local_pair(preset: str = "cpu", force: bool = False, device: str | None = None) -> Path:
    """Build (or reuse) the local pair; return the directory holding `small/` and `large/`."""
    if preset not in PRESETS:
        raise BildError(f"unknown local-pair preset {preset!r}: use one of {', '.join(PRESETS)}")
    target = pair_dir(preset)
    if (target / "large" / "config.json").exists() and not force:
        return target
    spec = PRESETS[preset]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    texts = [text for _, text in read_texts(stdlib_files(held_out=False), spec.corpus_chars)]
    if not texts:
        raise BildError("no Python standard library sources found to train the local pair on")
    print(f"building the local pair '{preset}' from {len(texts)} stdlib files on {dev} "
          f"(~{spec.minutes:g} min); cached in {target}")
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    stream = token_stream(tokenizer, texts)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        torch.manual_seed(0)
        large = build_model(spec.large, spec, tokenizer)
        loss = train(large, stream, spec, spec.large.train_steps, dev, "large", seed=0)
        save(large, tokenizer, work / "large", f"cross-entropy {loss:.3f}")
        small = build_model(spec.small, spec, tokenizer)
        small.load_state_dict(large.state_dict(), strict=False)  # embeddings, lower layers, final norm
        large.to(dev).eval().requires_grad_(False)
        loss = train(small, stream, spec, spec.small.train_steps, dev, "small", seed=1, teacher=large)
        save(small, tokenizer, work / "small", f"KL to the large model {loss:.3f}")
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
