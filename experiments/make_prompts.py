"""Cut code-completion prompt sets from installed Python packages (writes experiments/data/).

The shared pycode pair was trained on the standard library and on moto, networkx, pip,
pygments, cfnlint, libcst, IPython, setuptools, pydantic, hypothesis, docutils, awscli,
botocore, prompt_toolkit, _pytest, trio, jedi, graphql, pkg_resources and numpy (its README).
Figures are reported on projects it never saw, and tuned on other projects it never saw:

    pycode_eval.jsonl    sqlalchemy, optuna, yaml, tqdm         report here, never tune here
    pycode_tune.jsonl    jinja2, click, rich, requests, alembic tune thresholds and policies here
    out/pycode_align.jsonl  pip, setuptools, pygments,       align the small model here (not
                         _pytest, networkx, numpy,         committed: large, and the pair's own
                         pydantic (training sources only)  training data); up to 4 windows a file

Each prompt is 480 characters of a file at an offset chosen by a hash of its path, with the next
240 characters as the reference (the `pycode` task's format); files are visited in an order set
by a hash of their path, round-robin over the projects, so every project contributes evenly.
Run from the repository root with the project's venv: `python experiments/make_prompts.py`.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

from bild.lab.tasks import code_examples

HERE = Path(__file__).resolve().parent
SETS = {
    HERE / "data" / "pycode_eval.jsonl": (["sqlalchemy", "optuna", "yaml", "tqdm"], 96),
    HERE / "data" / "pycode_tune.jsonl": (["jinja2", "click", "rich", "requests", "alembic"], 48),
    HERE.parent / "out" / "pycode_align.jsonl": (["pip", "setuptools", "pygments", "_pytest", "networkx", "numpy",
                                                  "pydantic"], 2000),
}
WINDOWS = {"pycode_align.jsonl": 4}


def project_files(name: str) -> dict[Path, str]:
    root = Path(sysconfig.get_paths()["purelib"]) / name
    files = sorted(root.rglob("*.py"), key=lambda p: hashlib.sha256(str(p.relative_to(root)).encode()).hexdigest())
    return {p: f"{name}/{p.relative_to(root).as_posix()}" for p in files if "test" not in p.name}


def main() -> None:
    for path, (projects, n) in SETS.items():
        per_project = {name: project_files(name) for name in projects}
        order: list[Path] = []
        names: dict[Path, str] = {}
        for files in per_project.values():
            names |= files
        queues = [list(files) for files in per_project.values()]
        while any(queues):
            for q in queues:
                if q:
                    order.append(q.pop(0))
        examples = code_examples(order, n, names, WINDOWS.get(path.name, 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(e.model_dump(exclude={"meta"}) | e.meta) + "\n" for e in examples))
        print(f"{path.name}: {len(examples)} prompts from {', '.join(projects)}")


if __name__ == "__main__":
    main()
