"""Where commands write, under one rule: a command never deletes or overwrites what it did not write.

- **An output is never an input** of the same command (prompts, models, tokenizers, cost models,
  fronts, configs, traces, reports): paths are compared resolved, through symlinks, and a file
  inside an input folder (a model's `config.json`) counts as the input.
- **An existing output file is replaced only when it is what the command writes**: each `Kind`
  recognises its files by content (a bench report, a cost model, a plot, ...). Anything else is
  refused, naming the file.
- **An output folder carries a manifest** (`.bild-output.json`) of what the command wrote in it;
  `--overwrite` deletes only what the manifest lists, and a non-empty folder without one is
  refused, naming what would have been deleted.
- **Checks first, changes after**: `check_output` and `OutputFolder(...)` only look; nothing is
  created or deleted until every check of the command has passed (and before models load, so a
  bad path costs a second, not a minute).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from bild.errors import BildError
from bild.files import write_atomic

MANIFEST = ".bild-output.json"


class Kind(NamedTuple):
    """A kind of output file and how to recognise one by its content."""

    name: str
    recognise: Callable[[Path], bool]


def _first_json(path: Path, lines: bool) -> Any:
    with path.open("rb") as f:
        text = f.readline() if lines else f.read(1 << 24)
    return json.loads(text) if text.strip() else None


def json_with(*keys: str, **values: str) -> Callable[[Path], bool]:
    """A JSON object holding `keys`, whose `values` fields start with the given text."""
    def recognise(path: Path) -> bool:
        try:
            data = _first_json(path, lines=False)
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and all(k in data for k in keys) and all(
            str(data.get(k, "")).startswith(v) for k, v in values.items())

    return recognise


def jsonl_with(*keys: str) -> Callable[[Path], bool]:
    """JSON lines whose first line holds `keys` (an empty file too: a run that wrote no row yet)."""
    def recognise(path: Path) -> bool:
        try:
            data = _first_json(path, lines=True)
        except (OSError, ValueError):
            return False
        return data is None or (isinstance(data, dict) and all(k in data for k in keys))

    return recognise


def image(path: Path) -> bool:
    try:
        head = path.read_bytes()[:512]
    except OSError:
        return False
    return head.startswith((b"\x89PNG", b"%PDF")) or b"<svg" in head or head.startswith(b"<?xml")


REPORT = Kind("bench report", json_with("setup", "methods"))
SAMPLES = Kind("bench samples file", jsonl_with("method", "index"))
COST_MODEL = Kind("bild cost model", json_with(format="bild-cost-model/"))
FRONT = Kind("tune front", json_with("front", "policy"))
TRACES = Kind("traces file", jsonl_with("prompt", "mismatch"))
TRACES_META = Kind("traces metadata file", json_with("rows", "vocab_size"))
CLASSIFIER = Kind("learned-policy classifier", json_with(format="bild-learned-policy/"))
PLOT = Kind("plot", image)


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def refuse_inputs(out: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output that is one of `inputs` or lies inside an input folder."""
    target = _resolved(out)
    for given in filter(None, inputs):
        source = _resolved(given)
        if target == source or source in target.parents:
            where = "also an input" if target == source else f"inside the input {str(given)!r}"
            raise BildError(f"the output {str(out)!r} is {where}: writing it would destroy that input; pick "
                            "another output path")


def check_writable(folder: Path, what: str) -> None:
    """`folder` exists and is writable, or can be created under a writable folder (probed with a temporary
    file that is gone at once: permissions alone do not tell, for root or on a read-only mount)."""
    existing = folder.expanduser().absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BildError(f"cannot create the folder of {what!r}: {str(existing)!r} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise BildError(f"cannot write {what!r}: the folder {str(existing)!r} is not writable ({e.strerror}); pick "
                        "another path") from None


def check_output(out: str | Path, inputs: Iterable[str | Path | None], kind: Kind) -> Path:
    """`out` as a path a command may write, after the checks (nothing is created here)."""
    path = Path(out).expanduser()
    refuse_inputs(path, inputs)
    if path.is_dir():
        raise BildError(f"the output {str(out)!r} is a folder: give a file path, e.g. {path / 'out.json'}")
    if path.exists() and not kind.recognise(path):
        raise BildError(f"{str(out)!r} exists and is not a {kind.name}: bild only replaces files it wrote; pick "
                        "another path or move that file away")
    check_writable(path.parent, str(out))
    return path


class OutputFolder:
    """A folder a command writes into, with a manifest of what it wrote there.

    Construction only checks; `open()` creates the folder (and, with `overwrite`, deletes what the
    manifest lists); `wrote()` adds entries to the manifest as they are written.
    """

    def __init__(self, path: str | Path, command: str, inputs: Iterable[str | Path | None] = (),
                 resume: bool = False, overwrite: bool = False) -> None:
        self.path, self.command, self.overwrite = Path(path).expanduser(), command, overwrite
        self.created = False
        flag = "--out"
        if resume and overwrite:
            raise BildError("--resume continues what the folder holds and --overwrite deletes it: give one of them")
        refuse_inputs(self.path, inputs)
        for given in filter(None, inputs):  # an input inside the folder would be deleted by --overwrite
            if overwrite and self.path.exists() and _resolved(self.path) in _resolved(given).parents:
                raise BildError(f"{flag} {str(path)!r} holds the input {str(given)!r}: --overwrite would delete it; "
                                "pick another folder")
        if self.path.exists() and not self.path.is_dir():
            raise BildError(f"{flag} {str(path)!r} is a file: give a folder")
        self.manifest = self.read_manifest()
        entries = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        if entries:
            listed = set(self.manifest["entries"]) if self.manifest else set()
            foreign = [e for e in entries if e != MANIFEST and e not in listed]
            if self.manifest is None:
                what = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise BildError(f"{flag} {str(path)!r} holds {len(foreign)} entries bild did not write ({what}): "
                                f"`bild {command}` writes only into a new or empty folder, or one it wrote before")
            if self.manifest["command"] != command:
                raise BildError(f"{flag} {str(path)!r} was written by `bild {self.manifest['command']}`, not "
                                f"`bild {command}`: pick another folder")
            if not (resume or overwrite):
                raise BildError(f"{flag} {str(path)!r} holds an earlier `bild {command}`: --resume continues it, "
                                "--overwrite deletes what that run wrote and starts afresh")
        check_writable(self.path, str(path))

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        ok = isinstance(data, dict) and isinstance(data.get("entries"), list) and isinstance(data.get("command"), str)
        return data if ok else None

    def open(self) -> None:
        """Create the folder; with `overwrite`, delete what the earlier run wrote (and only that)."""
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        if self.overwrite and self.manifest:
            for entry in self.manifest["entries"]:
                target = self.path / entry
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            self.manifest = None
        if self.manifest is None:
            self.manifest = {"command": self.command, "entries": []}
            self.save()

    def wrote(self, *entries: str) -> None:
        """Record top-level entries (files or folders) this command has written."""
        new = [e for e in entries if e not in self.manifest["entries"]]
        if new:
            self.manifest["entries"] += new
            self.save()

    def save(self) -> None:
        write_atomic(self.path / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")

    def close_unused(self) -> None:
        """After a failure: remove the folder again if this run created it and wrote nothing in it."""
        if self.created and self.manifest is not None and not self.manifest["entries"]:
            (self.path / MANIFEST).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # something else appeared in it meanwhile: leave it
                self.path.rmdir()
