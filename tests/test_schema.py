"""The bench report's schema (bild/lab/schema.py): what a bench writes is what the models declare, docs/bench.md's
block lists the same fields, and a report of the previous schema still opens in `compare`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bild import GenerationConfig
from bild.costs import CostModel
from bild.lab.bench import run_bench
from bild.lab.compare import compare, load_report
from bild.lab.methods import parse_methods
from bild.lab.schema import BenchReport, LoopSplit, MethodRow, Oracle, undeclared
from bild.lab.tasks import Example
from bild.lab.workload import Workload

from conftest import PROMPTS, cheap_costs

DOCS = (Path(__file__).resolve().parents[1] / "docs" / "bench.md").read_text()


def names(model) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


def quoted(text: str) -> set[str]:
    """The quoted names of a part of the block, its `//` comments left out."""
    return {name for line in text.splitlines() for name in re.findall(r'"([a-z_0-9]+)"', line.split("//")[0])}


def block() -> str:
    return DOCS[DOCS.index('```json\n{\n  "schema"'):]


def section(opening: str, closing: str) -> str:
    text = block()
    start = text.index(opening) + len(opening)
    return text[start: text.index(closing, start)]


def test_docs_list_the_fields_the_models_declare_both_ways():
    assert quoted(section('"NAME": {', '"stats": {')) | {"stats"} == names(MethodRow)
    assert quoted(section('"oracle": {', "}")) == names(Oracle)
    assert quoted(section('"without_loops": {', "}")) == names(LoopSplit)
    top = {line.split('"')[1] for line in block().splitlines() if re.match(r'^  "[a-z_]+"', line)}
    top |= {"ranks"}  # listed beside `machines`, on its line
    assert top == names(BenchReport)


def test_a_bench_writes_only_what_the_schema_declares(load_pair, tmp_path, caplog):
    examples = [Example(id=str(i), prompt=p, reference="x = 1", category="a" if i % 2 else "b")
                for i, p in enumerate(PROMPTS[:4])]
    costs = CostModel.load(cheap_costs(tmp_path))
    with caplog.at_level("WARNING", logger="bild"):
        report, _ = run_bench(Workload(load_pair("llama"), examples, GenerationConfig(max_new_tokens=24), costs=costs,
                                       progress=False),
                              parse_methods("large,hf-assisted,exact,pld,adaptive"), out=str(tmp_path / "r.json"))
    parsed = BenchReport.model_validate(report)
    assert undeclared(parsed) == [] and not [r for r in caplog.records if "does not declare" in r.getMessage()]
    assert parsed.oracle.modelled_speedup and parsed.categories and parsed.methods["exact"].sources
    assert load_report(str(tmp_path / "r.json")).methods["exact"].efficiency_own is not None


def test_a_report_of_the_previous_schema_opens_in_compare(tmp_path):
    old = {"schema": "bild-bench/1", "setup": {"n": 2}, "machine": {"device": "cpu"},
           "methods": {"large": {"tokens_per_s": 10.0, "speedup_vs_large": 1.0, "stats": None},
                       "exact": {"tokens_per_s": 12.0, "speedup_vs_large": 1.2,
                                 "stats": {"mean_accepted_draft_length": 1.5, "small_calls": 10}}}}
    paths = []
    for name in ("a", "b"):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(old))
    assert load_report(str(paths[0])).methods["exact"].stat("mean_accepted_tokens") == 2.5
    assert "exact" in compare([str(p) for p in paths])
