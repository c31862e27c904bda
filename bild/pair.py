"""The model pair: a small and a large model that share one tokenizer.

`ModelPair.from_pretrained(small, large)` loads any Hugging Face pair by hub id, local
directory or GGUF file (dequantized once into a cached folder, bild/gguf.py), decoder-only
(`AutoModelForCausalLM`) or encoder-decoder (`AutoModelForSeq2SeqLM`), chosen from the config.
Before anything runs it checks that the pair can be compared token for token: both tokenizers
map the same strings to the same ids, both models emit logits over that vocabulary (output
widths may differ by padding; the engine compares the common prefix) and encoder-decoders
start decoding from the same token.

Device defaults to CUDA when available, else CPU; dtype defaults to bfloat16 (float16 where
unsupported) on CUDA, and on a CPU to float32, or for a model of 100M parameters or more to
whichever of float32 and bfloat16 decodes it faster on this machine (measured once per machine
and shape, bild/precision.py; `dtype_choice` says which and why). A `Placement` puts one model elsewhere: on a device
of its own, spread over devices by accelerate's big-model inference (`device_map`, `max_memory`,
layers offloaded to disk), or split by transformers' tensor-parallel plan over the ranks of a
`torchrun` launch. The engine moves only token ids between the two models, so each may live
anywhere; `placement()` says where they are. The pair also keeps each model's long-lived
runners (`runner`; bild/forward.py: caches, static buffers, captured graphs), so they are built
once per process and reused by every generation.
"""

from __future__ import annotations

import functools
import os
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from bild import forward, gguf, precision
from bild.costs import CostModel
from bild.errors import BildError

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


# --- device and dtype ----------------------------------------------------------------------

def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise BildError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise BildError(f"device {device!r} asked for, but no CUDA GPU is available: use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise BildError(f"device {device!r} asked for, but there are {torch.cuda.device_count()} GPUs")
    elif resolved.type != "cpu":
        available = getattr(torch, resolved.type, None)
        if available is None or not getattr(available, "is_available", lambda: False)():
            raise BildError(f"device {device!r} is not available to this torch: use cpu or cuda")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise BildError(f"unknown dtype {dtype!r}: use one of {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


# --- loading -------------------------------------------------------------------------------

def _looks_local(name: str) -> bool:
    """A name that can only be a path (a hub id is `name` or `org/name`)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


@functools.cache
def hub_reachable() -> bool:
    """Whether the Hugging Face hub answers; checked once, in seconds rather than after retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy may reach what we cannot see; let huggingface_hub try
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def source(name: str) -> tuple[str, dict]:
    """Where to load `name` from: a local path (a GGUF file's converted folder), or a hub id (from the local
    cache only when offline)."""
    if gguf.is_gguf(name):
        return str(gguf.folder_for(name)), {}
    if _looks_local(name) or Path(name).exists():
        path = Path(name).expanduser()
        if not path.exists():
            raise BildError(f"model path {name!r} does not exist: pass an existing directory or a hub id")
        return str(path), {}
    return name, {} if hub_reachable() else {"local_files_only": True}


def load_config(name: str) -> PretrainedConfig:
    path, kwargs = source(name)
    try:
        return AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        if Path(name).exists():
            raise BildError(f"{name!r} is not a Hugging Face model directory (no usable config.json): "
                            f"{str(e).splitlines()[0]}") from e
        where = "did not serve it" if hub_reachable() else "is unreachable and it is not in the local cache"
        raise BildError(f"could not load {name!r}: it is not a local directory and the Hugging Face hub "
                        f"{where} (check the id and your network, or pass a local directory)") from e


class Placement(BaseModel):
    """Where one model's weights go (default: the pair's device)."""

    device: str | None = None  # one device of its own
    device_map: str | dict[str, Any] | None = None  # auto, balanced, sequential, or module -> device (accelerate)
    max_memory: dict[str, str] = {}  # device -> budget for a device_map, e.g. {"0": "20GiB", "cpu": "64GiB"}
    offload_folder: str | None = None  # where layers a device_map puts on "disk" go
    tensor_parallel: bool = False  # split over the ranks of a torchrun launch (transformers' tp_plan="auto")


def placement_kwargs(placement: Placement) -> dict[str, Any]:
    """`from_pretrained`'s arguments for a placement (none for a single device: the model is moved after)."""
    if placement.tensor_parallel:
        from transformers import DistributedConfig

        return {"distributed_config": DistributedConfig(tp_plan="auto")}
    if placement.device_map is None:
        return {}
    kwargs: dict[str, Any] = {"device_map": placement.device_map}
    if placement.max_memory:
        kwargs["max_memory"] = {int(k) if k.isdigit() else k: v for k, v in placement.max_memory.items()}
    if placement.offload_folder:
        kwargs["offload_folder"] = placement.offload_folder
    return kwargs


def check_covered(name: str, auto: Any, config: PretrainedConfig, device_map: dict[str, Any]) -> None:
    """A device map given module by module must place every weight: modules it leaves out would be put
    somewhere without a word. Checked on the model's skeleton (no weights: accelerate's empty init)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        skeleton = auto.from_config(config)
    prefixes = [str(k) for k in device_map]
    unplaced = sorted({n.rsplit(".", 1)[0] for n, _ in skeleton.named_parameters()
                       if not any(k == "" or n == k or n.startswith(k + ".") for k in prefixes)})
    if unplaced:
        shown = ", ".join(unplaced[:4]) + (f" and {len(unplaced) - 4} more" if len(unplaced) > 4 else "")
        raise BildError(f"the device map for {name!r} leaves {len(unplaced)} module(s) unplaced ({shown}): map "
                        "every module (a parent's name covers its children), or use --large-device-map auto")


def load_model(name: str, config: PretrainedConfig, device: torch.device, dtype: torch.dtype,
               placement: Placement | None = None) -> PreTrainedModel:
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    path, kwargs = source(name)
    spread = placement_kwargs(placement or Placement())
    if spread:
        try:
            import accelerate  # noqa: F401  (transformers places weights through it)
        except ImportError:
            raise BildError(f"placing {name!r} over devices needs accelerate: pip install "
                            "'big-little-decoder[multi-device]'") from None
    if placement is not None and isinstance(placement.device_map, dict):
        check_covered(name, auto, config, placement.device_map)
    try:
        model = auto.from_pretrained(path, config=config, dtype=dtype, **kwargs, **spread)
    except Exception as e:  # torn files, shapes that do not match config.json, a placement that does not fit, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if spread:
            raise BildError(f"could not place {name!r} as asked ({first}): give more --large-max-memory, an offload "
                            "folder (--large-offload DIR) or more devices") from None
        raise BildError(f"could not load the weights of {name!r} as a {auto.__name__[4:]} ({first}); the files "
                        "may be incomplete or not match config.json: copy or download the model again") from None
    if not spread:
        model = model.to(device)
    placed = set((getattr(model, "hf_device_map", None) or {}).values())
    if placed and placed <= {"disk"}:
        raise BildError(f"the device map put all of {name!r} on disk, which cannot run a pass: give a device room "
                        "for its embeddings at least (--large-max-memory cpu=... or 0=...)")
    return model.eval().requires_grad_(False)


def devices_of(model: PreTrainedModel) -> list[str]:
    """The devices a model's weights are on (several for a device_map; `disk` for offloaded layers)."""
    placed = getattr(model, "hf_device_map", None)
    if placed:
        return sorted({str(torch.device(d)) if isinstance(d, int) else str(d) for d in placed.values()})
    return [str(model.device)]


def load_tokenizer(name: str) -> PreTrainedTokenizerBase | None:
    path, kwargs = source(name)
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, TypeError):
        return None


# --- compatibility checks ------------------------------------------------------------------

def output_width(model: PreTrainedModel) -> int:
    return model.get_output_embeddings().weight.shape[0]


def check_tokenizers(small: PreTrainedTokenizerBase, large: PreTrainedTokenizerBase) -> None:
    """Same ids for the same tokens, same special tokens; the message names what differs."""
    vs, vl = small.get_vocab(), large.get_vocab()
    if vs != vl:
        only_small = sorted(set(vs) - set(vl))
        moved = sorted(t for t in set(vs) & set(vl) if vs[t] != vl[t])
        if moved:
            t = moved[0]
            what = f"token {t!r} is id {vs[t]} in the small model's tokenizer but {vl[t]} in the large one's"
        elif only_small:
            what = f"token {only_small[0]!r} is only in the small model's tokenizer"
        else:
            what = f"token {sorted(set(vl) - set(vs))[0]!r} is only in the large model's tokenizer"
        raise BildError(f"the two models do not share a tokenizer ({len(vs)} vs {len(vl)} tokens; {what}): "
                        "BiLD needs a small and a large model of one family")
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id"):
        if getattr(small, attr) != getattr(large, attr):
            raise BildError(f"the tokenizers disagree on {attr}: {getattr(small, attr)} (small) vs "
                            f"{getattr(large, attr)} (large)")


def check_models(small: PreTrainedModel, large: PreTrainedModel, vocab: int) -> int:
    """Return the logit width both models share; it must cover the tokenizer's vocabulary."""
    if small.config.is_encoder_decoder != large.config.is_encoder_decoder:
        kinds = {True: "encoder-decoder", False: "decoder-only"}
        raise BildError(f"the small model is {kinds[small.config.is_encoder_decoder]} but the large "
                        f"model is {kinds[large.config.is_encoder_decoder]}: use two models of one family")
    for name, model in (("small", small), ("large", large)):
        if output_width(model) < vocab:
            raise BildError(f"the {name} model emits {output_width(model)} logits but the tokenizer has "
                            f"{vocab} tokens: its logits cannot be compared to the other model's")
    if small.config.is_encoder_decoder:
        s, lg = small.config.decoder_start_token_id, large.config.decoder_start_token_id
        if s != lg:
            raise BildError(f"the models start decoding from different tokens ({s} vs {lg})")
    return min(output_width(small), output_width(large))


# --- the pair ------------------------------------------------------------------------------

@dataclass
class ModelPair:
    """A small and a large model with one tokenizer, on one device."""

    small: PreTrainedModel
    large: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    small_name: str = "small"
    large_name: str = "large"
    cost_model: CostModel | None = None  # what `generate` prices passes with unless given `costs=` (else a prior)
    origins: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model made from a GGUF file: that file
    dtype_choice: dict[str, Any] = field(default_factory=dict)  # how the dtype was chosen (bild/precision.py)
    _runners: dict[tuple[str, str], forward.Runner] = field(default_factory=dict, repr=False)
    _paths: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)  # (model, asked) -> fast path

    def __post_init__(self) -> None:
        self.vocab_size = check_models(self.small, self.large, len(self.tokenizer))
        self.device = self.large.device
        self.dtype = self.large.dtype

    def model(self, which: str) -> PreTrainedModel:
        if which not in ("small", "large"):
            raise BildError(f"unknown model {which!r}: use 'small' or 'large'")
        return self.small if which == "small" else self.large

    def runner(self, which: str, fast_path: str, most: int = 1) -> forward.Runner:
        """The long-lived runner of one model on the fast path that `fast_path` resolves to for it
        (decided once per model and request), its padded passes going up to `most` tokens."""
        model = self.model(which)
        if (which, fast_path) not in self._paths:
            self._paths[which, fast_path] = forward.resolve_fast_path(fast_path, model, which)
        key = (which, self._paths[which, fast_path])
        if key not in self._runners:
            self._runners[key] = forward.make_runner(model, self.vocab_size, key[1], most, self.context_length(model),
                                                     which)
        runner = self._runners[key]
        runner.widen(most)
        return runner

    @property
    def eos_ids(self) -> set[int]:
        """The tokens that end a generation (read each time: a user may change the generation config)."""
        eos = self.large.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        return set() if eos is None else set(eos) if isinstance(eos, list) else {eos}

    @property
    def pad_id(self) -> int | None:
        """The token that pads a batch: the tokenizer's pad token, else its EOS (many decoders have no pad)."""
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    @property
    def encoder_decoder(self) -> bool:
        return bool(self.large.config.is_encoder_decoder)

    @functools.cached_property
    def prior_costs(self) -> CostModel:
        """What passes cost before any calibration: a prior from the two models' depths."""
        depth = [m.config.get_text_config(decoder=True).num_hidden_layers for m in (self.small, self.large)]
        return CostModel.prior(*depth)

    @property
    def costs(self) -> CostModel:
        """The calibrated cost model, else the prior."""
        return self.cost_model or self.prior_costs

    @staticmethod
    def context_length(model: PreTrainedModel) -> int | None:
        """How many positions the model can attend over, when its config says."""
        config = model.config.get_text_config(decoder=True)
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def placement(self) -> dict[str, dict[str, Any]]:
        """Where each model is: its devices, and how it was spread (one device, a device_map, tensor parallel)."""
        found = {}
        for which in ("small", "large"):
            model = self.model(which)
            found[which] = {"devices": devices_of(model), "spread": forward.spread_over(model) or "one device"}
        return found

    @classmethod
    def from_pretrained(
        cls,
        small: str,
        large: str,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        small_placement: Placement | None = None,
        large_placement: Placement | None = None,
    ) -> ModelPair:
        """Load both models (hub ids or local directories) and check that they fit together. Each model goes to
        `device` unless its placement says otherwise."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        small_config, large_config = load_config(small), load_config(large)
        tok_small, tok_large = load_tokenizer(small), load_tokenizer(large)
        if tok_small is None and tok_large is None:
            raise BildError(f"neither {small!r} nor {large!r} has a tokenizer: save one with "
                            "tokenizer.save_pretrained next to the model")
        if tok_small is not None and tok_large is not None:
            check_tokenizers(tok_small, tok_large)
        small_dev = resolve_device(small_placement.device) if small_placement and small_placement.device else dev
        large_dev = resolve_device(large_placement.device) if large_placement and large_placement.device else dev
        measure = dtype is None and small_dev.type == large_dev.type == "cpu" and not (
            large_placement and (large_placement.device_map or large_placement.tensor_parallel))
        chosen = precision.cached_choice(large_config, large_dev) if measure else None
        dt = DTYPES[chosen["dtype"]] if chosen else dt
        small_model = load_model(small, small_config, small_dev, dt, small_placement)
        large_model = load_model(large, large_config, large_dev, dt, large_placement)
        if measure and chosen is None and precision.parameters(large_model) >= precision.MEASURED_FROM:
            chosen = precision.choose_cpu_dtype(large_model)
            if chosen["dtype"] == "bfloat16":
                small_model, large_model = small_model.to(torch.bfloat16), large_model.to(torch.bfloat16)
        choice = chosen or {"dtype": str(dt).removeprefix("torch."), "by": "given" if dtype else "default"}
        named = {"small": small, "large": large}
        origins = {which: gguf.origin(name) for which, name in named.items() if gguf.is_gguf(name)}
        return cls(small_model, large_model, tok_large or tok_small, small_name=small, large_name=large,
                   origins=origins, dtype_choice=choice)
