"""What a machine and a model shape are, as the cost of a pass sees them: one name each.

`hardware` names the device (the GPU's name, else the CPU's model name); `config_shape` hashes a
model's config less its names, versions and dtype: two models of one shape cost alike whatever
their weights. Cost models (bild/lab/calibrate.py) and the CPU dtype choice (bild/precision.py)
are cached under these names.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch

SHAPE_IGNORED = ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> str:
    """The GPU's name; for a CPU, its model name and the vector instructions torch uses on it (one model name
    covers CPUs with and without AVX-512, whose costs and best dtype differ)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()})"


def config_shape(config: Any) -> str:
    """A short hash of a model config, less names, versions and dtype."""
    kept = {k: v for k, v in config.to_dict().items() if k not in SHAPE_IGNORED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]
