"""KV-cache handling: the only module that touches transformers' cache API.

transformers moves this API between releases (5.24 renamed the forward kwarg
`past_key_values` to `cache`, and `DynamicCache.crop` takes a negative count of tokens to
drop). Everything version-dependent lives here so the engine speaks in positions only:
`new_cache` builds an empty cache for a model, `rewind` cuts it back to a length.

Limits: dynamic caches only. Sliding-window layers cannot be rewound once the window is
full; `rewind` turns transformers' error into a `BildError`.
"""

from __future__ import annotations

import inspect

from torch import nn
from transformers import DynamicCache, EncoderDecoderCache
from transformers.cache_utils import Cache

from bild.errors import BildError


def cache_kwarg(model: nn.Module) -> str:
    """Name of the forward kwarg that takes the cache: `cache` (>= 5.24) or `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model: nn.Module, encoder_decoder: bool) -> Cache:
    """An empty cache for `model`; encoder-decoders get self- and cross-attention halves."""
    if encoder_decoder:
        return EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
    return DynamicCache(config=model.config)


def rewind(cache: Cache, length: int) -> None:
    """Cut the (self-attention) cache back to its first `length` positions, in place."""
    drop = cache.get_seq_length() - length
    if drop < 0:
        raise ValueError(f"cannot rewind a cache of {length + drop} positions to {length}")
    if drop == 0:
        return
    try:
        cache.crop(-drop)
    except (RuntimeError, ValueError) as e:
        raise BildError(f"this model's KV cache cannot be rewound ({e}); use a model without "
                        "sliding-window attention") from e
