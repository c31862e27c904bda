"""What a result was measured on: the machine, the models, and the keys a cost model must match.

`pair_identity` names the models three ways: as given (hub id or folder), by content (the config
and a sample of every weight: two folders holding the same weights hash alike) and by shape (the
config without weights). A pass costs what the model's shape, the hardware, the dtype and the fast
path make it cost, whatever its weights: an aligned small model is priced by its original's cost
model. `COST_KEYS` are those facts; `cost_mismatch` says which of them a cost model was not
measured with. `policy_origin` says where a policy's code comes from (its distribution and
version, or its file, with a hash of that file), so results of edited code never mix.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import platform
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
import transformers

from bild.machine import config_shape, cpu_name, hardware
from bild.pair import ModelPair
from bild.policy import Policy
from bild.registry import ENTRY_POINT_GROUP

DISTRIBUTION = "big-little-decoder"  # the package index name ("bild" there is another project)
COST_KEYS = ("small_shape", "large_shape", "hardware", "dtype", "fast_path", "placement")


def bild_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def machine_info(pair: ModelPair) -> dict[str, Any]:
    info = {
        "platform": platform.platform(), "processor": cpu_name(), "cores": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "bild": bild_version(), "device": str(pair.device), "dtype": str(pair.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "dtype_choice": pair.dtype_choice,
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
        if local.device.type != "meta":  # a layer offloaded to disk is named and shaped, not read
            digest.update(local.detach().reshape(-1)[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def shape_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of what a pass's cost depends on: the config, less names, versions and dtype."""
    return config_shape(model.config)


def pair_identity(pair: ModelPair) -> dict[str, str]:
    """What a result or a cost model was measured on: the models (names, the GGUF files they were made from,
    content, shape), device, dtype."""
    files = {f"{which}_gguf_sha256": made["sha256"] for which, made in pair.origins.items()}
    return {"small": pair.small_name, "large": pair.large_name, **files, "small_hash": model_fingerprint(pair.small),
            "large_hash": model_fingerprint(pair.large), "small_shape": shape_fingerprint(pair.small),
            "large_shape": shape_fingerprint(pair.large), "device": str(pair.device),
            "hardware": hardware(pair.device), "dtype": str(pair.dtype).removeprefix("torch.")}


def cost_mismatch(cost_identity: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """The `COST_KEYS` whose values differ between a cost model's identity and `identity`."""
    return sorted(k for k in COST_KEYS if k in identity and k in cost_identity and identity[k] != cost_identity[k])


# --- where a policy comes from --------------------------------------------------------------------


def policy_origin(cls: type[Policy]) -> dict[str, Any]:
    """Where `cls` comes from, for a result's provenance: the distribution and version behind its entry point,
    else its module and file; with a hash of that file (`code`) when it can be read, `{"source": "unknown"}`
    when neither can be found."""
    target = f"{cls.__module__}:{cls.__qualname__}"
    code = {"code": digest} if (digest := code_hash(cls)) else {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value == target and ep.dist is not None:
            return {"source": "entry point", "name": ep.name, "distribution": ep.dist.metadata["Name"],
                    "version": ep.dist.version, "object": target, **code}
    if not code:  # defined in a notebook cell or with exec
        return {"source": "unknown", "object": target}
    return {"source": "module", "object": target, "file": inspect.getsourcefile(cls), **code}


def code_hash(cls: type[Policy]) -> str | None:
    """A hash of the file that defines `cls`: its module-level helpers and constants decide too, and an editable
    install keeps its version while the code changes. None when there is no such file."""
    try:
        return hashlib.sha256(Path(inspect.getsourcefile(cls)).read_bytes()).hexdigest()[:16]
    except (OSError, TypeError):
        return None
