"""What a result was measured on: the machine, the models, and the keys a cost model must match.

`pair_identity` names the models three ways: as given (hub id or folder), by content (the config
and a sample of every weight: two folders holding the same weights hash alike) and by shape (the
config without weights). A pass costs what the model's shape, the hardware, the dtype and the fast
path make it cost, whatever its weights: an aligned small model is priced by its original's cost
model. `COST_KEYS` are those facts; `cost_mismatch` says which of them a cost model was not
measured with.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
import transformers

from bild.pair import ModelPair

DISTRIBUTION = "big-little-decoder"  # the package index name ("bild" there is another project)
COST_KEYS = ("small_shape", "large_shape", "hardware", "dtype", "fast_path", "placement")
SHAPE_IGNORED = ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bild_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def hardware(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def machine_info(pair: ModelPair) -> dict[str, Any]:
    info = {
        "platform": platform.platform(), "processor": cpu_name(), "cores": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "bild": bild_version(), "device": str(pair.device), "dtype": str(pair.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }
    if pair.device.type == "cuda":
        info["gpu"] = hardware(pair.device)
    return info


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short content hash: the config and a sample of every weight (cheap even for large models; a weight split
    by tensor parallelism is sampled in this rank's shard)."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, param in model.state_dict().items():
        local = param.to_local() if hasattr(param, "to_local") else param
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(local.detach().reshape(-1)[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def shape_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of what a pass's cost depends on: the config, less names, versions and dtype."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in SHAPE_IGNORED}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pair_identity(pair: ModelPair) -> dict[str, str]:
    """What a result or a cost model was measured on: the models (names, content, shape), device, dtype."""
    return {"small": pair.small_name, "large": pair.large_name, "small_hash": model_fingerprint(pair.small),
            "large_hash": model_fingerprint(pair.large), "small_shape": shape_fingerprint(pair.small),
            "large_shape": shape_fingerprint(pair.large), "device": str(pair.device),
            "hardware": hardware(pair.device), "dtype": str(pair.dtype).removeprefix("torch.")}


def cost_mismatch(cost_identity: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """The `COST_KEYS` whose values differ between a cost model's identity and `identity`."""
    return sorted(k for k in COST_KEYS if k in identity and k in cost_identity and identity[k] != cost_identity[k])
