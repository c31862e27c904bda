"""A GGUF file as a model: dequantized once into a plain Hugging Face folder, then loaded like any folder.

`folder_for(path)` gives the folder a `.gguf` file stands for: `$BILD_CACHE/gguf/<sha256>/`, made on
first use. transformers reads the file (`from_pretrained(..., gguf_file=...)`, which needs the `gguf`
package) and dequantizes every tensor to float32, the exact values the quantized blocks stand for;
the folder keeps those (a run in bf16 casts them as it loads, as it would the GGUF itself), the
config without its `quantization_config`, the tokenizer and chat template the file carries, and
`bild-gguf.json` (the file's sha256, size, name and architecture). The folder is written beside its
final name and renamed into place whole: an interrupted or failed conversion caches nothing.

The sha256 is the file's identity: a pair made from GGUF files records it (`ModelPair.origins`),
so reports and cost models say which file was run, whatever its path. Hashing a gigabyte takes
seconds; the hash of a path is remembered by its size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from bild.errors import BildError
from bild.paths import cache_dir

MAGIC = b"GGUF"
RECORD = "bild-gguf.json"


def is_gguf(name: str) -> bool:
    return name.lower().endswith(".gguf")


def sha256_of(path: Path) -> str:
    """The file's sha256, remembered per path, size and modification time (a changed file is hashed again)."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    memo = cache_dir() / "gguf" / "hashes" / key
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    found = digest.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(found + "\n")
    return found


def check_file(name: str) -> Path:
    """The path of an existing GGUF file, or one line naming what is wrong."""
    path = Path(name).expanduser()
    if not path.exists():
        raise BildError(f"GGUF file {name!r} does not exist: give the path of a .gguf file")
    if not path.is_file():
        raise BildError(f"{name!r} is a folder, not a GGUF file: give the .gguf file inside it")
    with path.open("rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise BildError(f"{name!r} is not a GGUF file (it starts with {head!r}, not {MAGIC!r}): give a .gguf model "
                        "file, or a model folder")
    return path


def origin(name: str) -> dict[str, Any]:
    """What a GGUF-made model records about its file (the folder's `bild-gguf.json`)."""
    return json.loads((folder_for(name) / RECORD).read_text())


def folder_for(name: str, progress: bool = True) -> Path:
    """The plain model folder a GGUF file stands for, converted on first use."""
    path = check_file(name)
    sha = sha256_of(path)
    folder = cache_dir() / "gguf" / sha[:32]
    if (folder / RECORD).is_file():
        return folder
    convert(path, sha, folder, progress)
    return folder


def general_name(path: Path) -> str:
    """The model name the file declares (`general.name`), else the file's stem."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.name")
    return bytes(field.parts[field.data[0]]).decode() if field is not None else path.stem


def convert(path: Path, sha: str, folder: Path, progress: bool) -> None:
    """Dequantize `path` into `folder` (float32 weights, config, tokenizer), all or nothing."""
    try:
        import gguf  # noqa: F401  (transformers reads the file through it)
    except ImportError:
        raise BildError(f"reading {str(path)!r} needs the gguf package: pip install 'big-little-decoder[gguf]'"
                        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if progress:
        print(f"bild: dequantizing {path.name} into a model folder (once per file; minutes for a 1B model)",
              flush=True)
    work = folder.with_name(folder.name + f".{int(time.time() * 1e6)}.partial")
    started = time.monotonic()
    shown = hf_logging.is_progress_bar_enabled()
    try:
        if not progress:
            hf_logging.disable_progress_bar()
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        # the dequantized weights are plain tensors: save them as a plain model (transformers refuses to
        # serialise a model it still marks as GGUF-quantized)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        record = {"file": path.name, "sha256": sha, "bytes": path.stat().st_size, "name": general_name(path),
                  "architecture": type(model).__name__, "seconds": round(time.monotonic() - started, 1)}
        (work / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        del model
        if folder.exists():  # another process finished first: keep its folder
            shutil.rmtree(work)
            return
        work.rename(folder)
    except Exception as e:  # gguf and transformers raise many types for a torn or foreign file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BildError(f"could not read the GGUF file {str(path)!r} ({type(e).__name__}: {first}): the file may be "
                        "truncated or of an architecture transformers cannot load from GGUF") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if shown and not progress:
            hf_logging.enable_progress_bar()
