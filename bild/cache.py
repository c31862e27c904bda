"""KV-cache handling: the only module that touches transformers' cache API.

transformers moves this API between releases (5.24 renamed the forward kwarg
`past_key_values` to `cache`; `DynamicCache.crop` takes a negative count of tokens to drop;
`StaticCache.crop(-k)` only moves each layer's position pointer, a device tensor, and leaves
the stale slots to be masked out by causal position and overwritten by the next write). A static
cache's pointers are moved here by one fused operation for all layers instead (`_foreach_sub_`):
on a GPU a rewind is then one kernel launch, not one per layer, and never a host sync.
Everything version-dependent lives here, so the rest of the engine speaks in positions only.

Two kinds: a dynamic cache grows with every pass (the default, any model); a static cache is
preallocated for `capacity` positions and never reallocates, which is what CUDA graphs need.
The caller keeps the host-side count of positions a cache holds and passes counts to `rewind`:
reading a static cache's length would sync with the device. Rewinds are relative, so a
generation starts from an absolute position instead: `restart` sets every layer's pointer to
zero on the device, whatever an interrupted pass left there.

Limits: a static cache serves decoder-only models whose layers all use full attention;
`static_unsupported` names why another model cannot use one. Sliding-window dynamic layers
cannot be rewound once the window is full; `rewind` turns transformers' error into a
`BildError`.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache, StaticCache
from transformers.cache_utils import Cache, StaticLayer

from bild.errors import BildError


def cache_kwarg(model: nn.Module) -> str:
    """Name of the forward kwarg that takes the cache: `cache` (>= 5.24) or `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def given_length(cache: Cache | None) -> int:
    """Positions a cache handed to a forward call holds (0 without one), for counting passes made elsewhere
    (transformers' own generate: a dynamic cache, so reading it costs no device sync)."""
    return int(cache.get_seq_length()) if cache is not None else 0


def dynamic_cache(model: nn.Module, encoder_decoder: bool) -> Cache:
    """An empty growing cache; encoder-decoders get self- and cross-attention halves."""
    if encoder_decoder:
        return EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
    return DynamicCache(config=model.config)


def static_cache(model: nn.Module, capacity: int) -> Cache:
    """An empty preallocated cache of `capacity` positions (allocated on the first write)."""
    return StaticCache(config=model.config, max_cache_len=capacity)


def layer_types(model: nn.Module) -> list[str]:
    config = model.config.get_text_config(decoder=True)
    types = getattr(config, "layer_types", None)
    if types is None:
        sliding = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
        types = ["sliding_attention" if sliding else "full_attention"] * config.num_hidden_layers
    return list(types)


def static_unsupported(model: nn.Module) -> str | None:
    """Why a static cache cannot serve `model`, or None when it can."""
    if model.config.is_encoder_decoder:
        return "encoder-decoder models keep a dynamic cache"
    kinds = sorted(set(layer_types(model)) - {"full_attention"})
    if kinds:
        return f"the model has {', '.join(kinds)} layers, which a static cache cannot rewind"
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"{type(model).__name__} does not support static caches in this transformers"
    return None


def rewind(cache: Cache, drop: int) -> None:
    """Forget the last `drop` positions of the (self-attention) cache, in place."""
    if drop < 0:
        raise ValueError(f"cannot rewind by {drop} positions")
    if drop == 0:
        return
    grouped = pointers(cache)
    for group in grouped:
        torch._foreach_sub_(group, drop)
    if grouped:
        return
    try:
        cache.crop(-drop)
    except (RuntimeError, ValueError) as e:
        raise BildError(f"this model's KV cache cannot be rewound ({e}); use a model without "
                        "sliding-window attention") from e


def restart(cache: Cache) -> None:
    """Empty a static cache for a new generation: every layer's position pointer to 0, on the device
    (no host sync; the stale keys are masked out by position and overwritten, as after `rewind`)."""
    grouped = pointers(cache)
    for group in grouped:
        torch._foreach_zero_(group)
    if not grouped:
        for layer in cache.layers:
            layer.reset()


def pointers(cache: Cache) -> list[list[torch.Tensor]]:
    """A static cache's per-layer position pointers, grouped by device (one group unless the model is spread
    over devices), for one fused operation per device; empty for any other cache, whose layers keep
    bookkeeping of their own (sliding windows, indexers) that only their `crop` and `reset` know."""
    layers = getattr(cache, "layers", [])
    if not layers or any(type(layer) is not StaticLayer for layer in layers):
        return []
    groups: dict[torch.device, list[torch.Tensor]] = {}
    for layer in layers:
        groups.setdefault(layer.cumulative_length.device, []).append(layer.cumulative_length)
    return list(groups.values())
