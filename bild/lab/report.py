"""Writing a bench's results as they come, so nothing measured is lost and a rerun resumes.

`<out>` holds the summary (rewritten atomically after every prompt, `"complete": false` until
the end, and from the start, so even a run killed during its warm-up leaves one) and
`<out>.samples.jsonl` one line per method and prompt (appended). Rerunning the same command
resumes: prompts whose every method is in the samples file are kept and not measured again; a
changed setup is refused, naming what differs; `overwrite` starts afresh. A lock file
(`<out>.lock`, holding the writer's pid) refuses a second writer of the same report while the
first is alive. Outputs follow bild/lab/outputs.py's rule: never an input, and an existing file
is replaced only when it is a bench report (or samples file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bild.errors import BildError
from bild.files import write_atomic
from bild.lab.outputs import REPORT, SAMPLES, check_output
from bild.lab.schema import checked


def samples_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".json") + ".samples.jsonl")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """`<path>.lock` with this process's pid; a live holder is an error, a dead one is replaced."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path.with_name(path.name + ".lock")
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    holder = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    holder = 0
                if holder and holder != os.getpid() and _alive(holder):
                    raise BildError(f"another {what} (pid {holder}) is writing {str(path)!r}: wait for it to "
                                    f"finish or write elsewhere (remove {self.path} if that process is gone)") from None
                self.path.unlink(missing_ok=True)  # left by a process that died
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return
        raise BildError(f"cannot lock {str(path)!r}: {self.path} keeps reappearing")

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def setup_difference(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


class ReportWriter:
    """The summary and samples of one bench; `done` holds the sample records a rerun keeps."""

    def __init__(self, out: str | Path | None, setup: dict[str, Any], inputs: list[str | Path | None] = (),
                 overwrite: bool = False) -> None:
        self.out = None if out is None else check_output(out, list(inputs), REPORT)
        self.done: list[dict[str, Any]] = []
        self.lock = None
        if self.out is None:
            return
        self.samples = samples_path(self.out)
        check_output(self.samples, list(inputs), SAMPLES)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.lock = Lock(self.out, "bench")
        try:
            if not overwrite:
                self.done = self.resume(setup)
            write_atomic(self.samples, "".join(json.dumps(r) + "\n" for r in self.done))
        except BaseException:
            self.lock.release()
            raise

    def resume(self, setup: dict[str, Any]) -> list[dict[str, Any]]:
        """The sample records of a previous run of this setup (whole prompts only)."""
        if not self.out.exists() or not self.samples.exists():
            return []
        try:
            old = json.loads(self.out.read_text())
            records = [json.loads(line) for line in self.samples.read_text().splitlines() if line.strip()]
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise BildError(f"cannot resume from {str(self.out)!r} ({type(e).__name__}): rerun with --overwrite "
                            "to start afresh") from None
        differ = setup_difference(old.get("setup", {}), setup)
        if differ == ["policy_code"]:
            edited = setup_difference(old["setup"].get("policy_code") or {}, setup["policy_code"])
            raise BildError(f"{str(self.out)!r} holds a bench of other code for {', '.join(edited)}: rerun with "
                            "--overwrite to measure it again, or write elsewhere")
        if differ:
            raise BildError(f"{str(self.out)!r} holds a bench with other settings ({', '.join(differ)} differ): "
                            "rerun with its settings to resume it, --overwrite to replace it, or write elsewhere")
        methods = setup.get("methods", [])
        by_prompt: dict[int, dict[str, dict]] = {}
        for r in records:
            by_prompt.setdefault(r.get("index", -1), {})[r.get("method")] = r
        kept = []
        for index in range(len(by_prompt)):  # prompts run in order; keep the complete ones
            found = by_prompt.get(index, {})
            if set(found) != set(methods):
                break
            kept.extend(found[m] for m in methods)
        return kept

    def sample(self, record: dict[str, Any]) -> None:
        if self.out:
            with self.samples.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def summary(self, report: dict[str, Any]) -> None:
        if self.out:  # checked against the schema (bild/lab/schema.py) every time it is written
            write_atomic(self.out, json.dumps(checked(report), indent=2) + "\n")

    def close(self) -> None:
        if self.lock:
            self.lock.release()
