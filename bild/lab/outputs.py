"""Where commands write, under one rule: a command never deletes or overwrites what it did not write.

- **An output is never an input** of the same command (prompts, models, tokenizers, cost models,
  fronts, configs, traces, reports): paths are compared resolved, through symlinks, and a file
  inside an input folder (a model's `config.json`) counts as the input.
- **An existing output file is replaced only when it is what the command writes**: each `Kind`
  recognises its files by content (a bench report, a cost model, a plot, ...). Anything else is
  refused, naming the file.
- **An output folder carries a manifest** (`.bild-output.json`) of the files the command wrote in
  it; `--overwrite` deletes only those files (then the folders they leave empty), never a file
  put there since, and a non-empty folder without a manifest, or whose manifest names anything
  but plain files inside it, is refused, naming what would have been deleted.
- **Checks first, changes after**: `check_output` and `OutputFolder(...)` only look; nothing is
  created or deleted until every check of the command has passed (and before models load, so a
  bad path costs a second, not a minute).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
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
    """A figure bild saved: an image whose metadata carries bild's mark (a user's own image of the same name
    is never replaced)."""
    from bild.lab.render import PLOT_MARK

    try:
        with path.open("rb") as f:
            data = f.read(1 << 26)
    except OSError:
        return False
    looks = data.startswith((b"\x89PNG", b"%PDF")) or b"<svg" in data[:512] or data.startswith(b"<?xml")
    return looks and PLOT_MARK.encode() in data


REPORT = Kind("bench report", json_with("setup", "methods"))
SAMPLES = Kind("bench samples file", jsonl_with("method", "index"))
COST_MODEL = Kind("bild cost model", json_with(format="bild-cost-model/"))
FRONT = Kind("tune front", json_with("front", "policy"))
TRACES = Kind("traces file", jsonl_with("prompt", "mismatch"))
TRACES_META = Kind("traces metadata file", json_with("rows", "vocab_size"))
CLASSIFIER = Kind("learned-policy classifier", json_with(format="bild-learned-policy/"))
PLOT = Kind("plot bild wrote", image)


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


def tree_files(folder: Path) -> list[str]:
    """Every file (and link) in a folder's tree, as sorted relative POSIX paths; links are not followed."""
    if not folder.is_dir():
        return []
    found = []
    for root, dirs, names in os.walk(folder):
        here = Path(root).relative_to(folder)
        found += [(here / n).as_posix() for n in names]
        found += [(here / d).as_posix() for d in dirs if (Path(root) / d).is_symlink()]
    return sorted(found)


class OutputFolder:
    """A folder a command writes into, with a manifest of the files it wrote there.

    The manifest lists files, as plain relative paths inside the folder (never a folder, never `..`,
    never absolute): a copied, hand-edited or corrupted manifest naming anything else marks the folder
    as not written by bild, and nothing in it is touched. Construction only checks; `open()` creates
    the folder (and, with `overwrite`, deletes the files the manifest lists, then the folders they
    leave empty); `wrote()` records files as they are written, before writing them where it can, so
    an interrupted write is still the command's.
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
        files = tree_files(self.path)
        if files:
            listed = set(self.manifest["entries"]) if self.manifest else set()
            foreign = [f for f in files if f != MANIFEST and not _owned(f, listed)]
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
        """The manifest, or None when there is none; a manifest that lists anything but plain files inside the
        folder refuses the folder (it was not written by bild, or was edited since)."""
        try:
            data = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if not (isinstance(data, dict) and isinstance(data.get("entries"), list)
                and isinstance(data.get("command"), str)):
            return None
        for entry in data["entries"]:
            problem = self.outside(entry)
            if problem:
                raise BildError(f"--out {str(self.path)!r}: its manifest {MANIFEST} lists {entry!r}, {problem}: the "
                                "folder was not written by bild (or its manifest was edited); bild touches nothing "
                                "in it: pick another folder, or delete it by hand")
        return data

    def outside(self, entry: Any) -> str | None:
        """Why a manifest entry is not a plain file inside the folder, or None when it is."""
        if not isinstance(entry, str) or not entry or "\\" in entry:
            return "which is not a relative file path"
        rel = PurePosixPath(entry)
        if rel.is_absolute() or any(part in ("", ".", "..") for part in entry.split("/")) or entry == MANIFEST:
            return "which is not a plain path inside it"
        target = self.path / rel
        if target.is_dir() and not target.is_symlink():
            return "a folder (bild lists the files it wrote, never a folder)"
        if target.parent.resolve() != _resolved(self.path) / rel.parent:
            return "which lies behind a link out of the folder"
        return None

    def open(self) -> None:
        """Create the folder; with `overwrite`, delete what the earlier run wrote (and only that)."""
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        if self.overwrite and self.manifest:
            listed = set(self.manifest["entries"])
            for entry in tree_files(self.path):
                if entry != MANIFEST and _owned(entry, listed):
                    (self.path / entry).unlink()
            for entry in sorted({str(PurePosixPath(e).parent) for e in listed} - {"."}, key=len, reverse=True):
                for folder in (self.path / entry, *(self.path / entry).parents):  # the folders they leave empty
                    if folder == self.path:
                        break
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            self.manifest = None
        if self.manifest is None:
            self.manifest = {"command": self.command, "entries": []}
            self.save()

    def wrote(self, *paths: str | Path) -> None:
        """Record files this command writes (or is about to write): relative to the folder or inside it; a
        folder stands for the files now in it."""
        root = _resolved(self.path)
        new: list[str] = []
        for given in paths:
            target = Path(given) if Path(given).is_absolute() else self.path / given
            rel = _resolved(target.parent).relative_to(root) / target.name
            if target.is_dir() and not target.is_symlink():
                new += [(rel / f).as_posix() for f in tree_files(target)]
            else:
                new.append(rel.as_posix())
        new = [e for e in dict.fromkeys(new) if e not in self.manifest["entries"]]
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


TEMPORARY = re.compile(r"^\.?(?P<name>.+?)(\.\d+)?\.tmp$")  # write_atomic's `.NAME.PID.tmp`, a shard's `NAME.tmp`


def _owned(entry: str, listed: set[str]) -> bool:
    """Whether a file is one the manifest lists, or the temporary file of one (a write cut off midway)."""
    if entry in listed:
        return True
    rel = PurePosixPath(entry)
    match = TEMPORARY.match(rel.name)
    return bool(match) and (rel.parent / match["name"]).as_posix() in listed
