"""Tiny real transformers pairs, built in-process and saved with `save_pretrained`.

Weights are random, but the small model is the large one with its upper layers removed (it
shares the embeddings and the first layers), so the two agree often enough for drafts to be
accepted, rejected and rolled back, as with a trained pair. A larger `initializer_range`
makes the distributions peaked, so greedy argmaxes are far from ties.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

PAD, EOS = 0, 1
CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "the quick brown fox jumps over the lazy dog. ",
    "import os\nimport sys\nif __name__ == '__main__':\n    main()\n",
] * 20


def build_tokenizer(vocab_size: int = 258) -> PreTrainedTokenizerFast:
    """Byte-level BPE; 258 (the bytes and two specials) means no merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


FAMILIES = ("llama", "qwen2", "gpt2", "t5", "bart")  # qwen2: grouped-query attention


def _config(family: str, vocab: int, layers: int, positions: int = 128):
    common = dict(vocab_size=vocab, pad_token_id=PAD, eos_token_id=EOS)
    if family == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                           num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=positions,
                           initializer_range=0.3, bos_token_id=EOS, **common)
    if family == "qwen2":  # its tokenizer class adds <|endoftext|>; a padded output layer covers it
        common["vocab_size"] = vocab + 8
        return Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3,
                           use_sliding_window=False, bos_token_id=EOS, **common)
    if family == "mistral-sliding":  # sliding-window attention: what a static cache cannot serve
        return MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
                             num_key_value_heads=1, max_position_embeddings=128, sliding_window=8,
                             initializer_range=0.3, bos_token_id=EOS, **common)
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=layers, n_head=2, n_positions=128,
                          initializer_range=0.3, bos_token_id=EOS, **common)
    if family == "t5":
        return T5Config(d_model=32, d_kv=16, d_ff=64, num_layers=layers, num_decoder_layers=layers,
                        num_heads=2, initializer_factor=3.0, decoder_start_token_id=PAD, **common)
    if family == "bart":
        return BartConfig(d_model=32, encoder_layers=layers, decoder_layers=layers,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=128, init_std=0.3,
                          decoder_start_token_id=EOS, bos_token_id=PAD, forced_eos_token_id=None,
                          **common)
    raise ValueError(family)


MODEL_CLASSES = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "mistral-sliding": MistralForCausalLM,
                 "gpt2": GPT2LMHeadModel,
                 "t5": T5ForConditionalGeneration, "bart": BartForConditionalGeneration}


def build_pair(root: Path, family: str = "llama", seed: int = 0, large_layers: int = 3,
               small_layers: int = 1, upper_scale: float = 0.5,
               tokenizer: PreTrainedTokenizerFast | None = None, positions: int = 128) -> tuple[Path, Path]:
    """Save a (small, large) pair under `root`; return the two directories (`positions`: Llama's context)."""
    tokenizer = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    cls = MODEL_CLASSES[family]
    large = cls(_config(family, len(tokenizer), large_layers, positions)).eval()
    small = cls(_config(family, len(tokenizer), small_layers, positions)).eval()
    # The small model is the large one truncated: same embeddings and lower layers. The
    # upper layers are damped so they perturb rather than replace the lower layers' output.
    with torch.no_grad():
        for name, param in large.named_parameters():
            layer = re.search(r"\.(?:layers|h|block)\.(\d+)\.", name)
            if layer and int(layer.group(1)) >= small_layers and param.dim() >= 2:
                param.mul_(upper_scale)
    small.load_state_dict(large.state_dict(), strict=False)
    paths = root / f"{family}-{seed}-small", root / f"{family}-{seed}-large"
    for model, path in zip((small, large), paths, strict=True):
        model.generation_config.pad_token_id = PAD
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return paths


# --- local copies of the hub tasks, and a chat pair -------------------------------------------------

GERMAN = [("Das Haus ist klein.", "The house is small."), ("Wir gehen nach Hause.", "We are going home.")]


def dataset_card(folder: Path, config: str, split: str, path: str) -> None:
    """The dataset card's `configs` block, as the hub's parquet conversions carry it."""
    (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: {config}\n  data_files:\n  - split: {split}\n"
                                      f"    path: {path}\n---\n")


def parquet(rows: dict, path: Path) -> None:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows).to_parquet(str(path))


def build_task_copies(root: Path) -> Path:
    """Local copies of every hub task under `root`, laid out as its repository is (or a save_to_disk folder)."""
    import datasets

    translations = {"translation": [{"de": de, "en": en} for de, en in GERMAN]}
    parquet(translations, root / "wmt14-de-en" / "de-en" / "test-00000-of-00001.parquet")
    dataset_card(root / "wmt14-de-en", "de-en", "test", "de-en/test-*")
    parquet(translations, root / "iwslt2017-de-en" / "iwslt2017-de-en" / "test" / "0000.parquet")  # parquet branch
    parquet({"article": ["A long article. " * 20, "Another one. " * 20], "highlights": ["Short.", "Brief."],
             "id": ["a1", "a2"]}, root / "cnn_dailymail" / "3.0.0" / "test-00000-of-00001.parquet")
    dataset_card(root / "cnn_dailymail", "3.0.0", "test", "3.0.0/test-*")
    parquet({"document": ["A document about a storm. " * 10], "summary": ["A storm came."], "id": ["x1"]},
            root / "xsum" / "default" / "test" / "0000.parquet")
    words = " ".join(f"w{i}" for i in range(80))
    parquet({"text": ["", " = Heading = \n", words + "\n"]}, root / "wikitext2" / "wikitext-2-raw-v1"
            / "test-00000-of-00001.parquet")
    dataset_card(root / "wikitext2", "wikitext-2-raw-v1", "test", "wikitext-2-raw-v1/test-*")
    gsm = datasets.DatasetDict({"test": datasets.Dataset.from_dict({
        "question": ["Tom has 3 apples and buys 4. How many?"], "answer": ["3 + 4 = 7\n#### 7"]})})
    gsm.save_to_disk(str(root / "gsm8k"))  # the other form of a local copy
    parquet({"prompt": [["Write a haiku.", "Now make it rhyme."], ["What is 2 + 2?", "And 3 + 3?"]],
             "prompt_id": [11, 12], "category": ["writing", "math"], "reference": [[], ["4", "6"]]},
            root / "mt-bench" / "data" / "train-00000-of-00001.parquet")
    (root / "humaneval").mkdir()
    import gzip

    (root / "humaneval" / "HumanEval.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(row) + "\n" for row in [
        {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Add them.\"\"\"\n",
         "canonical_solution": "    return a + b\n", "entry_point": "add",
         "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}]).encode()))
    (root / "spec-bench").mkdir()
    (root / "spec-bench" / "question.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [
        {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter, please."]},
        {"question_id": 161, "category": "translation", "turns": ["Translate German to English: Hallo Welt"]},
        {"question_id": 241, "category": "math_reasoning", "turns": ["What is 12 * 3?"]}]))
    return root


CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def build_chat_pair(root: Path, seed: int = 5) -> tuple[Path, Path]:
    """A tiny Llama pair whose tokenizer has a chat template, with room for conversations."""
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return build_pair(root, "llama", seed, positions=1024, tokenizer=tokenizer)


# --- GGUF files, as llama.cpp's converter writes them -----------------------------------------------


def write_gguf(folder: Path, out: Path) -> Path:
    """A tiny Qwen2 folder written as a float32 GGUF file (tensors under llama.cpp's names, the tokenizer as
    `gpt2` BPE tokens and merges): what `from_pretrained(..., gguf_file=...)` reads back."""
    import gguf
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    model, tokenizer = Qwen2ForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    config = model.config
    writer = gguf.GGUFWriter(str(out), "qwen2")
    writer.add_name(folder.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab] + [f"[PAD{i}]" for i in range(config.vocab_size - len(vocab))]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in tokenizer.all_special_tokens or t.startswith("[PAD") else 1 for t in tokens])
    writer.add_token_scores([0.0] * len(tokens))
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.eos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
