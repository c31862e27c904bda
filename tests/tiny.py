"""Tiny real transformers pairs, built in-process and saved with `save_pretrained`.

Weights are random, but the small model is the large one with its upper layers removed (it
shares the embeddings and the first layers), so the two agree often enough for drafts to be
accepted, rejected and rolled back, as with a trained pair. A larger `initializer_range`
makes the distributions peaked, so greedy argmaxes are far from ties.
"""

from __future__ import annotations

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


def _config(family: str, vocab: int, layers: int):
    common = dict(vocab_size=vocab, pad_token_id=PAD, eos_token_id=EOS)
    if family == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                           num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
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
               tokenizer: PreTrainedTokenizerFast | None = None) -> tuple[Path, Path]:
    """Save a (small, large) pair under `root`; return the two directories."""
    tokenizer = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    cls = MODEL_CLASSES[family]
    large = cls(_config(family, len(tokenizer), large_layers)).eval()
    small = cls(_config(family, len(tokenizer), small_layers)).eval()
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
