"""Prompt sets: JSONL files, the built-in offline `pycode` task, and the paper's datasets.

A prompt set is a list of `Example`s: an id, the prompt text and an optional reference.

- JSONL: one object per line with `prompt` (required), `reference` and `id` (optional); other
  fields (`source`, ...) are kept as metadata. Errors name the line.
- `pycode`: code completion cut deterministically from held-out files of the local Python
  standard library (see bild/lab/corpus.py): a prompt of `PYCODE_PROMPT_CHARS` characters, the
  true next `PYCODE_REFERENCE_CHARS` as the reference. Needs no network.
- Hugging Face `datasets` tasks (optional extra `big-little-decoder[datasets]`, network on first use): the
  paper's IWSLT 2017 and WMT 2014 De-En, CNN/DailyMail and XSum, plus WikiText-2, in the prompt
  formats the T5 checkpoints expect.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bild.errors import BildError, unknown_name
from bild.lab.corpus import read_texts, stdlib_files

PYCODE_PROMPT_CHARS = 480
PYCODE_REFERENCE_CHARS = 240


class Example(BaseModel):
    id: str
    prompt: str
    reference: str | None = None
    meta: dict[str, Any] = {}


# --- JSONL ---------------------------------------------------------------------------------------


def load_jsonl(path: str | Path) -> list[Example]:
    path = Path(path)
    if path.is_dir():
        raise BildError(f"prompt file {str(path)!r} is a folder: give a JSONL file")
    if not path.is_file():
        raise BildError(f"prompt file {str(path)!r} does not exist")
    examples = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BildError(f"{path}:{number}: not UTF-8 text (byte {e.start}); a prompt file is JSON lines "
                                "in UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BildError(f"{path}:{number}: not valid JSON ({e.msg}); each line must be one JSON object") from e
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
                raise BildError(f"{path}:{number}: each line needs a non-empty string field 'prompt'")
            reference = row.get("reference")
            if reference is not None and not isinstance(reference, str):
                raise BildError(f"{path}:{number}: 'reference' must be a string")
            for field in ("prompt", "reference"):
                try:
                    (row.get(field) or "").encode("utf-8")
                except UnicodeEncodeError:
                    raise BildError(f"{path}:{number}: '{field}' holds a lone surrogate (an escape like \\ud800 "
                                    "that is not a character): fix the text") from None
            meta = {k: v for k, v in row.items() if k not in ("id", "prompt", "reference")}
            examples.append(Example(id=str(row.get("id", number)), prompt=row["prompt"], reference=reference,
                                    meta=meta))
    if not examples:
        raise BildError(f"prompt file {str(path)!r} holds no prompts")
    return examples


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


# --- Hugging Face datasets --------------------------------------------------------------------


class HubTask(BaseModel):
    path: str
    name: str | None
    split: str
    prompt_field: str
    reference_field: str
    prefix: str = ""


HUB_TASKS = {
    "iwslt2017-de-en": HubTask(path="IWSLT/iwslt2017", name="iwslt2017-de-en", split="test",
                               prompt_field="translation.de", reference_field="translation.en",
                               prefix="translate German to English: "),
    "wmt14-de-en": HubTask(path="wmt/wmt14", name="de-en", split="test", prompt_field="translation.de",
                           reference_field="translation.en", prefix="translate German to English: "),
    "cnn_dailymail": HubTask(path="abisee/cnn_dailymail", name="3.0.0", split="test", prompt_field="article",
                             reference_field="highlights", prefix="summarize: "),
    "xsum": HubTask(path="EdinburghNLP/xsum", name=None, split="test", prompt_field="document",
                    reference_field="summary", prefix="summarize: "),
    "wikitext2": HubTask(path="Salesforce/wikitext", name="wikitext-2-raw-v1", split="test",
                         prompt_field="text", reference_field="text"),
}


def _field(row: dict, dotted: str) -> str:
    for key in dotted.split("."):
        row = row[key]
    return row


def hub_examples(task: str, n: int) -> list[Example]:
    spec = HUB_TASKS[task]
    try:
        import datasets
    except ImportError:
        raise BildError(f"task {task!r} needs the datasets package: pip install 'big-little-decoder[datasets]' "
                        "(or use --task pycode, which works offline)") from None
    try:
        rows = datasets.load_dataset(spec.path, spec.name, split=spec.split)
    except Exception as e:  # datasets raises many types for "offline" and "not found"
        raise BildError(f"could not load task {task!r} from the Hugging Face hub ({type(e).__name__}); "
                        "it needs network on first use: use --task pycode or --prompts FILE.jsonl offline") from e
    examples = []
    for i, row in enumerate(rows):
        if task == "wikitext2":  # language modelling: first half of a paragraph -> the rest
            words = row["text"].split()
            if len(words) < 64:
                continue
            prompt, reference = " ".join(words[:48]), " ".join(words[48:96])
        else:
            prompt, reference = spec.prefix + _field(row, spec.prompt_field), _field(row, spec.reference_field)
        examples.append(Example(id=f"{task}-{i}", prompt=prompt, reference=reference))
        if len(examples) == n:
            break
    return examples


# --- entry point -------------------------------------------------------------------------------

TASKS = ["pycode", *HUB_TASKS]


def load_examples(prompts: str | None = None, task: str | None = None, n: int | None = None,
                  offset: int = 0) -> list[Example]:
    """Examples `offset` to `offset + n` of a JSONL file or a named task."""
    if (prompts is None) == (task is None):
        raise BildError("give exactly one of --prompts FILE.jsonl or --task NAME")
    if n is not None and n < 1:
        raise BildError(f"--n must be at least 1, got {n}")
    if offset < 0:
        raise BildError(f"--offset must be at least 0, got {offset}")
    if prompts is not None:
        examples = load_jsonl(prompts)
    elif task == "pycode":
        examples = pycode_examples(offset + (n or 32))
    elif task in HUB_TASKS:
        examples = hub_examples(task, offset + (n or 32))
    else:
        raise unknown_name("task", task, TASKS)
    if offset >= len(examples):
        raise BildError(f"--offset {offset} is beyond the {len(examples)} prompts of "
                        f"{prompts or task}: use an offset below {len(examples)}")
    return examples[offset: offset + n if n else None]
