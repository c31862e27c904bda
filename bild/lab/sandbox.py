"""Running generated code against a task's tests (HumanEval's pass@1), only when the user opts in.

Model output is untrusted code. `--execute-code` runs each answer as its own program: a fresh
Python (`-I`: no user site, no PYTHON* variables) in a temporary folder that is deleted after, with
an environment of PATH and a locale only (no inherited tokens, keys or proxies), in a session of
its own (a timeout kills the whole process group), under resource limits (address space, CPU
time, file size, no core files). What it did is one word: `passed`, `failed` (a test raised, or
the code did not parse), `timeout`, or `killed` (a signal: the memory limit, a crash, an exit by
signal); the last line of its stderr says why. A problem that hangs, allocates without bound or
kills its process costs its timeout and no more, and the other problems are still scored.

What runs: the task's stub (its imports and helpers), then the answer's code, then the tests and
`check(entry_point)`. A chat answer's first fenced code block is its code (the stub before it is
harmless: a redefinition wins); a completion continues the stub and is cut at the first line
that starts a new top-level statement (HumanEval's stop sequences).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, NamedTuple

from bild.lab.tasks import Example

TIMEOUT = 10.0  # seconds of wall time per problem (HumanEval's own harness uses 3; CPU machines are slow)
MEMORY_MIB = 1024  # address space per problem
FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
Status = Literal["passed", "failed", "timeout", "killed"]


class TestResult(NamedTuple):
    status: Status
    detail: str  # the last line of stderr, or what stopped it


def has_tests(example: Example) -> bool:
    return isinstance(example.meta.get("test"), str) and isinstance(example.meta.get("entry_point"), str)


def answer_code(example: Example, text: str) -> str:
    """The code of an answer: its first fenced block, else a completion of the stub cut at the next top-level
    statement."""
    block = FENCE.search(text)
    if block:
        return example.meta["stub"] + "\n" + block.group(1)
    cut = min((i for i in (text.find(s) for s in COMPLETION_STOPS) if i >= 0), default=len(text))
    return example.meta["stub"] + text[:cut]


def program(example: Example, text: str) -> str:
    return f"{answer_code(example, text)}\n\n{example.meta['test']}\n\ncheck({example.meta['entry_point']})\n"


# The child limits itself before it reads the answer (no preexec_fn: answers are checked from threads).
BOOT = ("import resource as r, runpy, sys\n"
        "for limit, value in ((r.RLIMIT_AS, {memory}), (r.RLIMIT_CPU, {cpu}), (r.RLIMIT_FSIZE, {files}), "
        "(r.RLIMIT_CORE, 0)):\n"
        "    r.setrlimit(limit, (value, value))\n"
        "runpy.run_path('answer.py', run_name='__main__')\n")


def run_program(code: str, timeout: float = TIMEOUT, memory_mib: int = MEMORY_MIB) -> TestResult:
    """Run `code` in a fresh, limited Python process in a temporary folder; what it did."""
    with tempfile.TemporaryDirectory(prefix="bild-sandbox-") as folder:
        path = Path(folder) / "answer.py"
        path.write_text(code)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": folder, "TMPDIR": folder}
        boot = BOOT.format(memory=memory_mib << 20, cpu=int(timeout) + 1, files=16 << 20)
        process = subprocess.Popen([sys.executable, "-I", "-B", "-c", boot], cwd=folder, env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        try:
            _, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return TestResult("timeout", f"still running after {timeout:g} s")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    last = (err.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:200]
    if process.returncode == 0:
        return TestResult("passed", "")
    if process.returncode < 0:
        return TestResult("killed", f"signal {signal.Signals(-process.returncode).name}" + (f": {last}" if last
                                                                                             else ""))
    return TestResult("failed", last or f"exit code {process.returncode}")


def check_answers(pairs: list[tuple[Example, str]], workers: int = 2) -> list[TestResult]:
    """Each (example, answer) run against its example's tests, a few at a time."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda pair: run_program(program(*pair)), pairs))
