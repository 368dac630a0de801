"""Fuzzing the user-facing inputs: recipes, task data files and the HTTP endpoint.

Whatever a user writes, every case ends in a result or one `UserError` line (never another
exception), and the server answers 200/400/413/422 (never a 500). Examples are derandomised, so
a CI run tries the same cases every time; the whole file runs in well under a minute.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import string
import tempfile
import tomllib
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import tomli_w
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from distill.data.datasets import load_task, read_examples
from distill.errors import UserError
from distill.recipe import DataFiles, Recipe, TaskSection, load_recipe, parse_recipe

settings.register_profile(
    "fuzz",
    derandomize=True,  # the same cases on every run: CI stays deterministic
    deadline=None,  # a shared CI core can stall any single example
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
FUZZ = settings.get_profile("fuzz")

# --------------------------------------------------------------------------- value strategies

# Text TOML and JSON can carry: no lone surrogates, which UTF-8 files cannot hold.
SAFE_CHARS = st.characters(blacklist_categories=("Cs",))
texts = st.text(SAFE_CHARS, max_size=12)
keys = st.one_of(st.text(string.ascii_lowercase + "_", min_size=1, max_size=10), st.text(SAFE_CHARS, max_size=6))
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.0, 1e-6, 1e308, math.nan, math.inf, -math.inf]),
)
ints = st.one_of(st.integers(-5, 600), st.integers(-(2**63), 2**63 - 1))
scalars = st.one_of(
    ints,
    floats,
    texts,
    st.booleans(),
    st.dates(),
    st.datetimes(),
    st.times(),
)


def toml_values(scalar: st.SearchStrategy = scalars) -> st.SearchStrategy:
    """Any value a TOML file can hold: scalars, arrays (mixed types allowed) and tables."""
    return st.recursive(
        scalar,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
        max_leaves=6,
    )


def _misspell(name: str, how: int, extra: str) -> str:
    edits = [
        name[:-1],  # a letter dropped
        name + name[-1],  # a letter doubled
        name.upper(),
        name.capitalize(),
        name.replace("_", "-"),
        name + "s",
        name[1:2] + name[:1] + name[2:],  # first two letters swapped
        name + extra,
    ]
    return edits[how % len(edits)] or name + "_"


def misspelt(names: list[str]) -> st.SearchStrategy[str]:
    return st.builds(_misspell, st.sampled_from(names), st.integers(0, 7), st.text(string.ascii_lowercase, max_size=3))


def _members(annotation: Any) -> list[Any]:
    """The types a field accepts, without None."""
    if get_origin(annotation) in (Union, UnionType):
        return [member for member in get_args(annotation) if member is not type(None)]
    return [annotation]


def plausible(annotation: Any, depth: int, scalar: st.SearchStrategy = scalars) -> st.SearchStrategy:
    """Values close to what a recipe field expects (so that some recipes come out valid)."""
    members = _members(annotation)
    options = []
    for member in members:
        origin = get_origin(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            options.append(tables(member, depth + 1, scalar))
        elif origin is Literal:
            options.append(st.sampled_from(get_args(member)))
        elif origin is list:
            (item,) = get_args(member)
            options.append(st.lists(plausible(item, depth, scalar), max_size=4))
        elif member is bool:
            options.append(st.booleans())
        elif member is int:
            options.append(st.integers(-2, 300))
        elif member is float:
            options.append(st.one_of(st.floats(-1, 5), st.sampled_from([0.1, 0.8, 1e-4, 2.0])))
        elif member is str:
            options.append(st.one_of(st.sampled_from(["auto", "cpu", "random", "builtin:tweets", "x.csv"]), texts))
        else:  # a type this fuzzer does not know yet: any value
            options.append(toml_values(scalar))
    return st.one_of(options)


@st.composite
def tables(draw, model: type[BaseModel], depth: int = 0, scalar: st.SearchStrategy = scalars) -> dict[str, Any]:
    """A table for `model`: some of its real keys with plausible or random values, maybe a misspelt key."""
    names = [name for name in model.model_fields if name != "source"]
    table: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=4 if depth < 2 else 2)):
        annotation = model.model_fields[name].annotation
        nested = any(isinstance(m, type) and issubclass(m, BaseModel) for m in _members(annotation))
        if depth >= 3 and nested:
            continue
        junk = draw(st.integers(0, 6)) == 0  # a value of any type
        table[name] = draw(toml_values(scalar) if junk else plausible(annotation, depth, scalar))
    if draw(st.integers(0, 5 if depth == 0 else 12)) == 0:  # a misspelt or made-up key
        table.setdefault(draw(st.one_of(misspelt(names), keys)), draw(toml_values(scalar)))
    return table


recipes = tables(Recipe)
# What a Python caller might pass that TOML cannot hold.
python_recipes = tables(Recipe, scalar=st.one_of(scalars, st.none(), st.just(b"bytes"), st.just(object()), st.just(1j)))

# --------------------------------------------------------------------------- recipe helpers


def _named_key(error: UserError) -> str:
    """The dotted key an error line names."""
    what = error.what
    if what.startswith("unknown key '"):
        assert what.endswith("'"), what
        return what[len("unknown key '") : -1]
    assert what.startswith("bad value for '"), what
    return what[len("bad value for '") : what.index("' = ")]


def _shown(key: str) -> str:
    """A key as error lines show it: escaped when it holds line breaks or control characters."""
    return key if key.isprintable() else repr(key)[1:-1]


def _path_exists(data: Any, dotted: str) -> bool:
    """Whether `dotted` (as shown) names a value inside `data` (keys may themselves hold dots)."""
    if dotted == "":
        return True
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = [(str(index), value) for index, value in enumerate(data)]
    else:
        return False
    for key, value in items:
        key = _shown(str(key))
        if dotted == key or (dotted.startswith(key + ".") and _path_exists(value, dotted[len(key) + 1 :])):
            return True
    return False


def check_recipe_error(error: UserError, data: dict[str, Any]) -> None:
    line = error.line()
    assert len(line.splitlines()) == 1, line
    key = _named_key(error)  # may be '' (TOML allows `"" = 1`)
    event(f"UserError: {error.what.split(' ')[0]} {error.what.split(' ')[1]}")
    assert _path_exists(data, key), f"{line!r} names a key that is not in the recipe"
    assert error.fix, line


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# --------------------------------------------------------------------------- recipes


@FUZZ
@given(data=recipes)
@example(data={})
@example(data={"task": {"split": [math.nan, math.nan, math.nan]}})
@example(data={"stages": {"finetune": {"epochs": math.inf, "lr": 1e308}}})
@example(data={"task": {"dataset": {"train": "a.csv", "tst": "b.csv"}}})
@example(data={"task": {"dataset": {"train": 3}}})
@example(data={"stages": {"data_distill": {"augment": {"unk": 0.9, "pos_swap": 0.9}}}})
@example(data={"run": {"name": dt.date(2024, 1, 1)}, "Run": {}})
@example(data={"teacher": {"model": "teach\x00er"}, "run": {"out_dir": "\x00"}})
@example(data={"run": {"na\nme": "x", "\u2028": 1}})
@example(data={"source": "elsewhere.toml"})
def test_parse_recipe_gives_a_recipe_or_one_user_error_naming_a_key(data):
    try:
        recipe = parse_recipe(data)
    except UserError as error:
        check_recipe_error(error, data)
        return
    assert isinstance(recipe, Recipe)
    event("valid recipe")
    # The resolved recipe a run writes into its directory parses back to the same recipe.
    again = parse_recipe(tomllib.loads(recipe.to_toml()))
    assert again.to_toml() == recipe.to_toml()


@FUZZ
@given(data=python_recipes)
@example(data={"run": {"seed": None}, "task": {1: 2}})
def test_parse_recipe_survives_values_toml_cannot_hold(data):
    """Python callers may pass None, bytes or non-string keys: still a Recipe or one UserError."""
    try:
        parse_recipe(data)
    except UserError as error:
        check_recipe_error(error, data)


@FUZZ
@given(data=recipes)
def test_written_and_loaded_recipes_give_a_recipe_or_one_user_error(data, scratch):
    text = tomli_w.dumps(data)
    with tempfile.NamedTemporaryFile("w", suffix=".toml", dir=scratch, delete=False, encoding="utf-8") as handle:
        handle.write(text)
    path = Path(handle.name)
    try:
        recipe = load_recipe(path)
    except UserError as error:
        assert "not valid TOML" not in error.what, text
        check_recipe_error(error, data)
        assert str(path) in error.line()
        return
    finally:
        path.unlink()
    event("valid recipe")
    assert recipe.source == str(path.resolve())
    assert recipe.run.name  # recorded, so the run directory is named the same after a reload
    # Every local path in a loaded recipe is absolute, so a run never depends on its working folder.
    for value in (recipe.teacher.model, recipe.student.init):
        assert value.startswith("builtin:") or value in ("teacher-layers", "random") or Path(value).is_absolute()


@FUZZ
@given(raw=st.binary(max_size=200))
@example(raw=b"\xff\xfe[run]\n")
@example(raw=b"[run\nname = 1")
@example(raw=b"[run]\nname = \"a\"\n[run]\nname = \"b\"\n")
def test_recipe_files_of_random_bytes_are_user_errors(raw, scratch):
    path = scratch / "bytes.toml"
    path.write_bytes(raw)
    try:
        load_recipe(path)
    except UserError as error:
        assert len(error.line().splitlines()) == 1, error.line()


def test_nul_byte_in_a_path_is_a_user_error(scratch):
    """Path.resolve() used to raise ValueError('embedded null byte') from load_recipe."""
    path = scratch / "nul.toml"
    path.write_text(tomli_w.dumps({"teacher": {"model": "teach\x00er"}}), encoding="utf-8")
    with pytest.raises(UserError, match="teacher.model"):
        load_recipe(path)


@pytest.mark.parametrize(
    "data",
    [
        {"stages": {"finetune": {"epochs": math.inf}}},
        {"task": {"split": [math.nan, math.nan, math.nan]}},
        {"stages": {"task_specific": {"temperature": math.inf}}},
    ],
    ids=["inf-epochs", "nan-split", "inf-temperature"],
)
def test_non_finite_numbers_are_user_errors(data):
    """`epochs = inf` used to overflow in the training loop, `split = [nan, nan, nan]` to break the split."""
    with pytest.raises(UserError, match="bad value"):
        parse_recipe(data)


def test_unknown_key_with_a_line_break_stays_one_line():
    """TOML allows any quoted key; a line break in it used to split the one-line error."""
    with pytest.raises(UserError) as info:
        parse_recipe({"run": {"na\nme": "x"}})
    assert len(info.value.line().splitlines()) == 1
    assert "run.na\\nme" in info.value.line()


def test_top_level_source_key_is_unknown():
    """`source` is a Recipe field set by load_recipe; a recipe used to set it silently."""
    with pytest.raises(UserError, match="unknown key 'source'"):
        parse_recipe({"source": "elsewhere.toml"})


# --------------------------------------------------------------------------- data files

COLUMN_NAMES = ["text", "label", "pair", "Text", "sentence", "", "label ", "text", "two\nlines"]
CELLS = st.one_of(
    st.sampled_from(["good", "bad", "ok", "", " ", "positive", "negative", '"', '""', "a,b", "a\tb", "x\ny", "\r"]),
    st.text(SAFE_CHARS, max_size=8),
)


@st.composite
def delimited_files(draw, delimiter: str) -> bytes:
    """CSV/TSV bytes: a header (maybe lacking columns), ragged rows, quotes, odd encodings."""
    header = draw(st.lists(st.sampled_from(COLUMN_NAMES), min_size=0, max_size=4))
    rows = draw(st.lists(st.lists(CELLS, max_size=5), max_size=12))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONE, None]))
    # hand-made: unbalanced quotes and stray separators
    text = "\n".join([delimiter.join(header)] + [delimiter.join(row) for row in rows])
    if quoting is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting, escapechar="\\")
        try:
            writer.writerows([header, *rows])
            text = buffer.getvalue()
        except csv.Error:  # e.g. QUOTE_NONE cannot write a lone empty field: keep the hand-made text
            pass
    raw = text.encode("utf-8")
    ending = draw(st.sampled_from(["keep", "bom", "latin1", "truncate", "crlf", "nul"]))
    if ending == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif ending == "latin1":
        raw = raw + "caf\xe9".encode("latin-1")
    elif ending == "truncate" and raw:
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif ending == "crlf":
        raw = raw.replace(b"\n", b"\r\n")
    elif ending == "nul":
        raw = raw + b"\x00text\n"
    return raw


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(SAFE_CHARS, max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
json_rows = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"text": json_values, "label": json_values},
        optional={"pair": json_values, "other": json_values},
    ),
    st.fixed_dictionaries({"text": st.sampled_from(["good one", "bad one", "fine"]), "label": st.sampled_from(["pos", "neg", " pos "])}),
)


@st.composite
def jsonl_files(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from(["{", "not json", '{"text": "a", "label": }', "\u2028", "[]", "   "])))
        else:
            lines.append(json.dumps(draw(json_rows), ensure_ascii=draw(st.booleans())))
    raw = "\n".join(lines).encode("utf-8")
    if draw(st.integers(0, 5)) == 0:
        raw += b"\n\xc3\x28"  # invalid UTF-8
    return raw


@st.composite
def nearly_valid_files(draw) -> tuple[str, bytes]:
    """A good labelled file (CSV, TSV or JSONL) with at most one defect, so that many load."""
    suffix = draw(st.sampled_from([".csv", ".tsv", ".jsonl"]))
    count = draw(st.integers(8, 40))
    labels = draw(st.sampled_from([["pos", "neg"], ["a", "b", "c"], ["only"], ["pos", "neg", " "]]))
    rows = [(f"{draw(st.sampled_from(['good', 'bad', 'fine', 'so so']))} text {i}", labels[i % len(labels)]) for i in range(count)]
    if suffix == ".jsonl":
        lines = [json.dumps({"text": text, "label": label}) for text, label in rows]
    else:
        separator = "," if suffix == ".csv" else "\t"
        lines = ["text" + separator + "label"] + [text + separator + label for text, label in rows]
    defect = draw(st.sampled_from(["none", "none", "short", "long", "quote", "bad-byte", "blank", "duplicate", "header"]))
    at = draw(st.integers(1, len(lines) - 1))
    if defect == "short":
        lines[at] = lines[at].split(",")[0].split("\t")[0]
    elif defect == "long":
        lines[at] += "," if suffix == ".csv" else "\t" if suffix == ".tsv" else " 1"
    elif defect == "quote":
        lines[at] = '"' + lines[at]
    elif defect == "blank":
        lines.insert(at, "")
    elif defect == "duplicate":
        lines.append(lines[at])
    elif defect == "header":
        lines = lines[1:]
    raw = "\n".join(lines).encode("utf-8")
    if defect == "bad-byte":
        raw = raw.replace(b"text", b"t\xffxt", 1)
    return suffix, raw


data_files = st.one_of(
    nearly_valid_files(),
    nearly_valid_files(),
    st.tuples(st.just(".csv"), delimited_files(",")),
    st.tuples(st.just(".tsv"), delimited_files("\t")),
    st.tuples(st.just(".jsonl"), jsonl_files()),
    st.tuples(st.sampled_from([".csv", ".tsv", ".jsonl", ".txt", ""]), st.binary(max_size=64)),
)
task_options = st.fixed_dictionaries(
    {},
    optional={
        "format": st.sampled_from(["csv", "tsv", "jsonl"]),
        "text_column": st.sampled_from(["text", "Text", "sentence"]),
        "label_column": st.sampled_from(["label", "text"]),
        "text_pair_column": st.sampled_from(["pair", "missing"]),
        "limit_train": st.integers(1, 5),
        "limit_eval": st.integers(1, 3),
    },
)
HUGE = b"text,label\n" + b'"' + b"x" * 200_000 + b'",good\nshort,bad\n'


def _read_and_load(path: Path, options: dict[str, Any], carve: bool) -> None:
    task = TaskSection(dataset=DataFiles(train=str(path)) if carve else str(path), **options)
    try:
        examples = read_examples(path, task)
    except UserError as error:
        assert len(error.line().splitlines()) == 1, error.line()
    else:
        assert all(isinstance(e.text, str) and isinstance(e.label, str) for e in examples)
    try:
        data = load_task(task, seed=0)
    except UserError as error:
        assert len(error.line().splitlines()) == 1, error.line()
        event(f"UserError: {error.what[:24]}")
    else:
        assert len(data.labels) >= 2 and data.train and data.dev and data.test
        event("loaded and split")


@FUZZ
@given(file=data_files, options=task_options, carve=st.booleans())
@example(file=(".csv", b""), options={}, carve=False)
@example(file=(".csv", b"text,label\n"), options={}, carve=False)
@example(file=(".tsv", b"text\tlabel\n"), options={}, carve=True)
@example(file=(".jsonl", b"\n\n"), options={}, carve=False)
@example(file=(".jsonl", b'[1, 2]\n"text"\n'), options={}, carve=False)
@example(file=(".csv", HUGE), options={}, carve=False)
@example(file=(".tsv", HUGE.replace(b",", b"\t")), options={}, carve=False)
@example(file=(".csv", b'text,label\n"unclosed,good\nfine,bad\n'), options={}, carve=False)
@example(file=(".jsonl", b'{"text": "a", "label": "x"}\n{"text": "b"}\n'), options={}, carve=False)
@example(file=(".csv", b"text,label\na,b,c,d\ne\n"), options={"text_pair_column": "pair"}, carve=False)
@example(file=(".csv", b'"two\nlines",label\na,b\n'), options={}, carve=False)
def test_malformed_data_files_end_in_success_or_one_user_error(file, options, carve, scratch):
    suffix, raw = file
    path = scratch / f"data{suffix}"
    path.write_bytes(raw)
    _read_and_load(path, options, carve)


@st.composite
def labelled_rows(draw) -> list[tuple[str, str]]:
    """Rows whose texts repeat every `period` rows: duplicates and conflicting labels when it is short."""
    labels = draw(st.lists(st.sampled_from(["pos", "neg", "neu", " ", "pos"]), min_size=1, max_size=60))
    period = draw(st.integers(1, 70))
    words = ["good film", "bad film", "fine", "", " ", "ok ok"]
    return [(f"{words[(i % period) % len(words)]} {i % period}" if i % 7 else words[i % len(words)], label) for i, label in enumerate(labels)]


@FUZZ
@given(
    rows=labelled_rows(),
    options=st.fixed_dictionaries({}, optional={"limit_train": st.integers(2, 40), "limit_eval": st.integers(1, 5)}),
)
def test_well_formed_but_tiny_data_sets_split_or_fail_cleanly(rows, options, scratch):
    """Duplicates, conflicting labels, single classes, empty splits: all UserErrors or a valid split."""
    path = scratch / "rows.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    _read_and_load(path, options, carve=False)


# A few whole `distill validate` calls (the command imports torch and loads the teacher's tokenizer).
VALIDATE_CASES = [
    (".csv", b""),
    (".csv", b"text,label\n" + b"".join(b"good film %d,pos\nbad film %d,neg\n" % (i, i) for i in range(10))),
    (".tsv", b"text\tlabel\n\xff\xfe broken\tx\n"),
    (".jsonl", b'{"text": "a", "label": 1}\n[1]\n'),
    (".csv", HUGE),
]


@settings(FUZZ, max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(file=st.one_of(st.sampled_from(VALIDATE_CASES), data_files))
def test_validate_command_exits_0_or_2_without_traceback(file, scratch, distill_main):
    suffix, raw = file
    data = scratch / f"validate{suffix}"
    data.write_bytes(raw)
    recipe = scratch / "validate.toml"
    recipe.write_text(
        tomli_w.dumps({"task": {"dataset": data.name, "format": "csv" if suffix not in (".tsv", ".jsonl") else suffix[1:]}}),
        encoding="utf-8",
    )
    code, out, err = distill_main("validate", str(recipe))
    assert code in (0, 2), err
    assert "Traceback" not in err and "Traceback" not in out
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err


# --------------------------------------------------------------------------- the HTTP endpoint

SERVE_LABELS = ["negative", "positive"]
SERVE_TEXTS = ["a good film", "bad plot", "the acting was awful", "good good good", "fine"]
MAX_BATCH = 4
MAX_CHARS = 64
ALLOWED = {200, 400, 413, 422}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """FastAPI's in-process client over a real OnnxPredictor of a tiny exported BOW model."""
    import torch
    from fastapi.testclient import TestClient

    from distill.data.words import WordTokenizer, WordVocab
    from distill.export.onnx import export_shallow
    from distill.export.runtime import OnnxPredictor
    from distill.export.serve import create_app
    from distill.models.shallow import ShallowConfig, build_shallow

    splitter = WordTokenizer("en")
    vocab = WordVocab.build(splitter.split(text) for text in SERVE_TEXTS)
    config = ShallowConfig(
        kind="bow",
        vocab_size=len(vocab),
        num_labels=len(SERVE_LABELS),
        embed_dim=8,
        hidden=8,
        max_len=16,
        id2label=dict(enumerate(SERVE_LABELS)),
    )
    torch.manual_seed(0)
    model = build_shallow(config).eval()
    exported = export_shallow(model, config, vocab, tmp_path_factory.mktemp("onnx"), "bow", SERVE_TEXTS)
    predictor = OnnxPredictor(exported.manifest_path, threads=1, batch_size=2)
    # raise_server_exceptions=False: a bug must show up as the 500 a real client would get.
    with TestClient(create_app(predictor, MAX_BATCH, MAX_CHARS), raise_server_exceptions=False) as http:
        yield http


def check_prediction_response(response, body: Any) -> None:
    assert response.status_code in ALLOWED, (response.status_code, response.text[:500])
    payload = response.json()
    if response.status_code != 200:
        assert "detail" in payload
        return
    texts = body["texts"]
    assert len(payload["predictions"]) == len(texts)
    for prediction in payload["predictions"]:
        assert prediction["label"] in SERVE_LABELS
        assert set(prediction["probabilities"]) == set(SERVE_LABELS)
        assert math.isclose(sum(prediction["probabilities"].values()), 1.0, abs_tol=1e-4)


# Unicode of every kind, lone surrogates included (valid escaped JSON, not valid UTF-8 text).
any_text = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(whitelist_categories=("Cs", "Co", "Cn", "Zl", "Zp", "Mn", "So")), max_size=10),
    st.sampled_from(["", " ", "\x00", "\u2028", "\ufeff", "😀" * 30, "x" * MAX_CHARS, "x" * (MAX_CHARS + 1), "é" * 10_000]),
)
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=8,
)
bodies = st.one_of(
    any_json,
    st.fixed_dictionaries({"texts": any_json}),
    st.fixed_dictionaries({"texts": st.lists(any_text, max_size=MAX_BATCH + 2)}),
    st.fixed_dictionaries({"texts": st.lists(any_text, min_size=1, max_size=MAX_BATCH)}, optional={"extra": any_json}),
    st.dictionaries(st.sampled_from(["texts", "text", "Texts", "inputs", ""]), any_json, max_size=3),
)


@FUZZ
@given(body=bodies)
@example(body={"texts": ["\ud800"]})
@example(body={"texts": ["\x00", "\u2028", ""]})
@example(body={"texts": [math.nan]})
@example(body={"texts": ["good"] * (MAX_BATCH + 1)})
@example(body={"texts": ["x" * (MAX_CHARS + 1)]})
@example(body={"texts": ["a" * 1_000_000]})
def test_json_bodies_never_500(client, body):
    raw = json.dumps(body).encode()  # ensure_ascii: lone surrogates travel as \ud800 escapes
    response = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    check_prediction_response(response, body)


content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "application/vnd.api+json",
        "",
        "\u00e9/\u00e9",  # sent as Latin-1 bytes
    ]
)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda body: json.dumps(body).encode(), bodies),
    st.builds(lambda body: json.dumps(body).encode("utf-16"), st.just({"texts": ["good"]})),
    st.sampled_from([b"", b"{", b'{"texts": ["a"]', b"\xff\xfe", b"null", b'{"texts": ["\xff"]}', b"--xyz\r\n\r\n--xyz--"]),
)


@FUZZ
@given(raw=raw_bodies, content_type=content_types)
def test_raw_bytes_and_wrong_content_types_never_500(client, raw, content_type):
    headers = {} if content_type is None else {"content-type": content_type.encode("latin-1")}
    response = client.post("/predict", content=raw, headers=headers)
    assert response.status_code in ALLOWED, (response.status_code, response.text[:500])
    if response.status_code == 200:  # only a well-formed request is answered
        body = json.loads(raw)
        check_prediction_response(response, body)


def test_the_server_still_answers_after_the_fuzzing(client):
    response = client.post("/predict", json={"texts": SERVE_TEXTS[:MAX_BATCH]})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == MAX_BATCH
    assert client.get("/health").json() == {"status": "ok"}
