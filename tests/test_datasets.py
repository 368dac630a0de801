import json
from collections import Counter

import pytest
from conftest import LABEL_SIZES, tiny_rows, write_rows

from distill.data.datasets import (
    SPLITS,
    Example,
    clean,
    guess_format,
    load_prepared,
    load_task,
    read_examples,
    read_split,
    stratified_split,
    stratified_subset,
    write_split,
)
from distill.errors import UserError
from distill.recipe import DataFiles, TaskSection

FRACTIONS = dict(zip(SPLITS, (0.8, 0.1, 0.1)))


def examples(sizes: dict[str, int] = LABEL_SIZES) -> list[Example]:
    return [Example(f"{label} text {index}", label) for label, size in sizes.items() for index in range(size)]


def keys(items: list[Example]) -> set[tuple[str, str | None]]:
    return {(e.text, e.text_pair) for e in items}


def assert_stratified(parts: dict[str, list[Example]], sizes: dict[str, int], fractions: dict[str, float]) -> None:
    for name, part in parts.items():
        counts = Counter(e.label for e in part)
        for label, size in sizes.items():
            assert abs(counts[label] - size * fractions[name]) <= 1, (name, label, counts)


def task(dataset, **settings) -> TaskSection:
    return TaskSection(dataset=dataset, **settings)


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_every_format_reads_custom_columns(tmp_path, suffix):
    columns = {"text": "sentence", "pair": "question", "label": "gold"}
    path = write_rows(tmp_path / f"data{suffix}", tiny_rows()[:5], columns)
    settings = {"text_column": "sentence", "text_pair_column": "question", "label_column": "gold"}
    read = read_examples(path, task(str(path), **settings))
    assert read == [Example(row["text"], row["label"], row["pair"]) for row in tiny_rows()[:5]]


@pytest.mark.parametrize("suffix, fmt", [(".csv", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"), (".TSV", "tsv")])
def test_format_is_guessed_from_the_suffix(tmp_path, suffix, fmt):
    assert guess_format(tmp_path / f"d{suffix}", None) == fmt
    assert guess_format(tmp_path / f"d{suffix}", "csv") == "csv"


def test_declared_format_wins_over_the_suffix(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("text\tlabel\nhello, world\tpos\n", encoding="utf-8")
    with pytest.raises(UserError, match="cannot tell the format"):
        read_examples(path, task(str(path)))
    assert read_examples(path, task(str(path), format="tsv")) == [Example("hello, world", "pos")]


def test_jsonl_labels_may_be_numbers_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 0}\n', encoding="utf-8")
    assert read_examples(path, task(str(path))) == [Example("a", "1"), Example("b", "0")]


def test_utf8_bom_and_non_ascii_text_are_read(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\n很好的书,positive\ncafé,negative\n".encode("utf-8-sig"))
    assert read_examples(path, task(str(path))) == [Example("很好的书", "positive"), Example("café", "negative")]


def test_jsonl_text_may_hold_unicode_line_separators(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a\u2028b", "label": "x"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_examples(path, task(str(path))) == [Example("a\u2028b", "x")]


def test_tsv_fields_keep_their_quotes(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('text\tlabel\n"great" film\tpos\n"no closing quote\tneg\nplain\tpos\n', encoding="utf-8")
    assert read_examples(path, task(str(path))) == [
        Example('"great" film', "pos"),
        Example('"no closing quote', "neg"),
        Example("plain", "pos"),
    ]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.csv", None, "data file not found"),
        ("empty.csv", b"", "no rows"),
        ("header.csv", b"text,label\n", "no rows"),
        ("column.csv", b"sentence,label\nhi,a\n", "column 'text' not found (columns: sentence, label)"),
        ("latin.csv", b"text,label\nfine,a\ncaf\xe9,b\n", "not UTF-8 text (byte 21, line 3)"),
        ("short.csv", b"text,label\nfine,a\nno label\n", "line 3 has no 'label' field"),
        ("field.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b"}\n', "line 2 has no 'label' field"),
        ("broken.jsonl", b'{"text": "a", "label": "x"}\n{"text": \n', "invalid JSON on line 2"),
        ("list.jsonl", b'["a", "x"]\n', "line 1 is not a JSON object"),
    ],
)
def test_bad_files_are_user_errors_naming_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as info:
        read_examples(path, task(str(path)))
    assert message in info.value.line()
    assert name in info.value.line()


# --------------------------------------------------------------------------- cleaning


def test_clean_counts_empty_duplicate_and_conflicting_rows():
    rows = [
        Example("good film", "pos"),
        Example("  good   film ", "pos"),  # duplicate once whitespace is normalised
        Example("good film", "pos"),  # duplicate
        Example("bad film", "neg"),
        Example("", "neg"),  # empty text
        Example("   ", "pos"),  # empty text
        Example("no label", ""),  # empty label
        Example("odd film", "pos"),  # conflicting: seen with two labels
        Example("odd film", "neg"),
        Example("odd film", "pos"),
        Example("q", "pos", text_pair="a"),
        Example("q", "neg", text_pair="b"),  # a different pair is a different example
    ]
    kept, counts = clean(rows)
    assert kept == [
        Example("good film", "pos"),
        Example("bad film", "neg"),
        Example("q", "pos", "a"),
        Example("q", "neg", "b"),
    ]
    assert (counts.read, counts.empty, counts.duplicates, counts.conflicting, counts.kept) == (12, 3, 2, 3, 4)


# --------------------------------------------------------------------------- splitting


def test_split_is_deterministic_stratified_and_disjoint():
    data = examples()
    first = stratified_split(data, FRACTIONS, seed=1)
    assert first == stratified_split(data, FRACTIONS, seed=1)
    assert first != stratified_split(data, FRACTIONS, seed=2)
    assert_stratified(first, LABEL_SIZES, FRACTIONS)
    assert sum(len(part) for part in first.values()) == len(data)
    assert keys(first["train"]) | keys(first["dev"]) | keys(first["test"]) == keys(data)
    assert not keys(first["train"]) & keys(first["dev"])
    assert not keys(first["train"]) & keys(first["test"])
    assert not keys(first["dev"]) & keys(first["test"])


@pytest.mark.parametrize("seed", [0, 7, 42])
@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.5, 0.3, 0.2)])
def test_split_keeps_label_shares_for_any_seed(seed, fractions):
    sizes = {"a": 101, "b": 37, "c": 12, "d": 3}
    shares = dict(zip(SPLITS, fractions))
    assert_stratified(stratified_split(examples(sizes), shares, seed), sizes, shares)


def test_subset_keeps_label_shares():
    sizes = {"a": 60, "b": 30, "c": 10}
    data = examples(sizes)
    for limit in (7, 10, 33, 50):
        subset = stratified_subset(data, limit, seed=3)
        assert len(subset) <= limit and len(subset) >= limit - 1
        assert len(keys(subset)) == len(subset)
        counts = Counter(e.label for e in subset)
        for label, size in sizes.items():
            assert abs(counts[label] - size * limit / len(data)) <= 1, (limit, counts)
    assert stratified_subset(data, 10, seed=3) == stratified_subset(data, 10, seed=3)
    assert stratified_subset(data, None, seed=3) is data
    assert stratified_subset(data, 1000, seed=3) is data


# --------------------------------------------------------------------------- load_task


def test_single_file_is_cleaned_and_split(tmp_path):
    rows = tiny_rows() + [tiny_rows()[0], {"text": "", "pair": "", "label": "positive"}]
    path = write_rows(tmp_path / "d.csv", rows)
    data = load_task(task(str(path)), seed=42)
    assert data.labels == ["negative", "neutral", "positive"]
    assert (len(data.train), len(data.dev), len(data.test)) == (40, 5, 5)
    assert_stratified({"train": data.train, "dev": data.dev, "test": data.test}, LABEL_SIZES, FRACTIONS)
    assert data.counts["all"].read == 52 and data.counts["all"].duplicates == 1 and data.counts["all"].empty == 1
    stats = data.stats()
    assert stats["sizes"] == {"train": 40, "dev": 5, "test": 5}
    assert stats["label_counts"]["train"] == {"negative": 21, "neutral": 11, "positive": 8}
    assert stats["cleaning"]["all"]["kept"] == 50
    assert load_task(task(str(path)), seed=42).train == data.train
    assert load_task(task(str(path)), seed=43).train != data.train


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_explicit_train_dev_test_files_are_used_as_given(tmp_path, suffix):
    rows = tiny_rows()
    train = write_rows(tmp_path / f"train{suffix}", rows[0:20] + rows[25:35] + rows[40:45])
    dev = write_rows(tmp_path / f"dev{suffix}", rows[20:23] + rows[35:37] + rows[45:47])
    test = write_rows(tmp_path / f"test{suffix}", rows[23:25] + rows[37:40] + rows[47:50])
    files = DataFiles(train=str(train), dev=str(dev), test=str(test))
    data = load_task(task(files, text_pair_column="pair"), seed=5)
    assert sorted(e.text for e in data.dev) == sorted(row["text"] for row in rows[20:23] + rows[35:37] + rows[45:47])
    assert sorted(e.text for e in data.test) == sorted(row["text"] for row in rows[23:25] + rows[37:40] + rows[47:50])
    assert len(data.train) == 35
    assert data.train[0].text_pair is not None
    assert set(data.counts) == {"train", "dev", "test"}
    assert data.removed_overlap == 0


def test_train_only_file_has_dev_and_test_carved_out(tmp_path):
    train = write_rows(tmp_path / "train.csv", tiny_rows())
    data = load_task(task(DataFiles(train=str(train))), seed=42)
    assert (len(data.train), len(data.dev), len(data.test)) == (40, 5, 5)
    assert not keys(data.train) & (keys(data.dev) | keys(data.test))
    assert not keys(data.dev) & keys(data.test)
    assert set(data.counts) == {"train"}


def test_train_and_test_files_have_dev_carved_out_of_train(tmp_path):
    rows = tiny_rows()
    train = write_rows(tmp_path / "train.csv", rows[:20] + rows[25:37] + rows[40:48])
    test = write_rows(tmp_path / "test.csv", rows[20:25] + rows[37:40] + rows[48:])
    data = load_task(task(DataFiles(train=str(train), test=str(test))), seed=42)
    assert sorted(e.text for e in data.test) == sorted(row["text"] for row in rows[20:25] + rows[37:40] + rows[48:])
    assert data.dev and not keys(data.dev) & keys(data.train)
    assert len(data.train) + len(data.dev) == 40


def test_train_rows_whose_text_is_held_out_are_removed(tmp_path):
    rows = tiny_rows()
    dev_rows, test_rows = rows[20:23] + rows[40:42], rows[23:25] + rows[42:44]
    leaked = [rows[20], rows[23], {**rows[41], "text": "  " + rows[41]["text"] + " "}]
    train = write_rows(tmp_path / "train.csv", rows[:20] + rows[25:40] + rows[44:] + leaked)
    dev = write_rows(tmp_path / "dev.csv", dev_rows + [rows[30]])
    test = write_rows(tmp_path / "test.csv", test_rows)
    data = load_task(task(DataFiles(train=str(train), dev=str(dev), test=str(test))), seed=42)
    assert data.removed_overlap == 4
    assert not keys(data.train) & (keys(data.dev) | keys(data.test))
    assert len(data.train) == 20 + 15 + 6 - 1
    assert data.stats()["removed_train_overlap"] == 4


def test_limits_keep_label_shares(tmp_path):
    doubled = tiny_rows() + [{**row, "text": row["text"] + " again"} for row in tiny_rows()]
    path = write_rows(tmp_path / "d.csv", doubled)
    data = load_task(task(str(path), limit_train=20, limit_eval=6, split=[0.6, 0.2, 0.2]), seed=42)
    assert len(data.train) in (19, 20)
    assert len(data.dev) in (5, 6) and len(data.test) in (5, 6)
    for part, size in ((data.train, 20), (data.dev, 6), (data.test, 6)):
        counts = Counter(e.label for e in part)
        for label, share in LABEL_SIZES.items():
            assert abs(counts[label] - size * share / 50) <= 1, counts


def test_single_class_is_a_user_error(tmp_path):
    path = write_rows(tmp_path / "d.csv", [row for row in tiny_rows() if row["label"] == "negative"])
    with pytest.raises(UserError, match=r"single class \(negative\)"):
        load_task(task(str(path)), seed=42)


def test_label_only_in_dev_is_a_user_error(tmp_path):
    rows = tiny_rows()
    train = write_rows(tmp_path / "train.csv", rows[:40])
    dev = write_rows(tmp_path / "dev.csv", rows[40:45])
    test = write_rows(tmp_path / "test.csv", rows[:2])
    with pytest.raises(UserError, match="dev data has labels absent from training: positive"):
        load_task(task(DataFiles(train=str(train), dev=str(dev), test=str(test))), seed=42)


def test_too_little_data_for_a_split_is_a_user_error(tmp_path):
    path = write_rows(tmp_path / "d.csv", tiny_rows()[:3] + tiny_rows()[-3:])
    with pytest.raises(UserError, match="split is empty"):
        load_task(task(str(path)), seed=42)


def test_unknown_builtin_is_a_user_error():
    with pytest.raises(UserError, match="builtin:tweets"):
        load_task(task("builtin:nope"), seed=42)


# --------------------------------------------------------------------------- builtins


@pytest.mark.parametrize(
    "name, labels, sizes",
    [
        ("builtin:tweets", ["negative", "neutral", "positive"], (29749, 3718, 3718)),
        ("builtin:zh-reviews", ["negative", "positive"], (13889, 1736, 1736)),
    ],
)
def test_builtin_data_sets(name, labels, sizes):
    data = load_task(task(name), seed=42)
    assert data.labels == labels
    assert (len(data.train), len(data.dev), len(data.test)) == sizes
    assert all(e.text for e in data.test)
    assert not keys(data.train) & keys(data.test)


def test_builtin_limits_apply(tmp_path):
    data = load_task(task("builtin:zh-reviews", language="zh", limit_train=300, limit_eval=50), seed=42)
    assert len(data.train) in (299, 300) and len(data.dev) in (49, 50) and len(data.test) in (49, 50)
    assert data.labels == ["negative", "positive"]


# --------------------------------------------------------------------------- prepared files


def test_prepared_split_round_trips_unicode_line_separators(tmp_path):
    write_split([Example("a\u2028b", "x")], tmp_path / "train.jsonl")
    assert read_split(tmp_path / "train.jsonl") == [Example("a\u2028b", "x")]


def test_prepared_split_round_trips(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    parts = {
        "train": [Example("a", "x"), Example("b", "y", "pair"), Example("引号 \"q\"\n", "y")],
        "dev": [Example("c", "x")],
        "test": [Example("d", "y")],
    }
    for name, part in parts.items():
        write_split(part, data_dir / f"{name}.jsonl")
    (data_dir / "labels.json").write_text(json.dumps(["x", "y"]), encoding="utf-8")
    assert read_split(data_dir / "train.jsonl") == parts["train"]
    first_line = (data_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert json.loads(first_line) == {"text": "a", "label": "x"}
    prepared = load_prepared(data_dir)
    assert prepared.labels == ["x", "y"]
    assert prepared.test == parts["test"]
    assert prepared.targets("train") == [0, 1, 1]


# --------------------------------------------------------------------------- task families


def test_multi_label_cells_split_at_the_delimiter_and_json_lists_are_sets(tmp_path):
    rows = [{"text": f"text {i}", "label": ("PER;LOC", "", "ORG", "LOC")[i % 4]} for i in range(40)]
    path = write_rows(tmp_path / "multi.csv", rows)
    data = load_task(task(str(path), type="multi_label", label_delimiter=";"), seed=0)
    assert data.labels == ["LOC", "ORG", "PER"]
    assert {e.label for e in data.train + data.dev + data.test} == {("LOC", "PER"), (), ("ORG",), ("LOC",)}
    assert data.stats()["label_counts"]["train"].keys() == {"(none)", "LOC", "ORG", "PER"}
    jsonl = tmp_path / "multi.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"t{i}", "label": [["b", "a"], []][i % 2]}) + "\n" for i in range(20)))
    data = load_task(task(str(jsonl), type="multi_label"), seed=0)
    assert data.labels == ["a", "b"] and {e.label for e in data.train} == {("a", "b"), ()}


def test_multi_label_prepared_split_round_trips_and_rejects_unknown_names(tmp_path):
    from distill.tasks import family

    multi = family("multi_label")
    parts = {"train": [Example("a", ("x", "y")), Example("b", ())], "dev": [Example("c", ("x",))], "test": [Example("d", ("y",))]}
    for name, part in parts.items():
        write_split(part, tmp_path / f"{name}.jsonl")
    (tmp_path / "labels.json").write_text(json.dumps(["x", "y"]), encoding="utf-8")
    prepared = load_prepared(tmp_path, multi)
    assert prepared.train == parts["train"] and prepared.targets("train") == [[1.0, 1.0], [0.0, 0.0]]
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "d", "label": ["z"]}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="label 'z' is not in labels.json") as error:
        load_prepared(tmp_path, multi)
    assert "test.jsonl:1" in error.value.where


def test_regression_targets_must_be_finite_numbers_named_by_line(tmp_path):
    rows = [{"text": f"text {i}", "label": str(i / 10)} for i in range(30)]
    data = load_task(task(str(write_rows(tmp_path / "scores.csv", rows)), type="regression"), seed=3)
    assert data.labels == ["score"] and len(data.train) + len(data.dev) + len(data.test) == 30
    assert sorted(e.label for e in data.train + data.dev + data.test) == [i / 10 for i in range(30)]
    for bad, message in (("n/a", "is not a number"), ("nan", "not a finite number"), ("9", "outside")):
        broken = rows[:5] + [{"text": "odd", "label": bad}] + rows[5:]
        path = write_rows(tmp_path / "bad.csv", broken)
        with pytest.raises(UserError, match=f"line 7: .*{message}"):
            load_task(task(str(path), type="regression", target_range=[0.0, 5.0]), seed=0)


def test_regression_with_one_target_value_is_refused(tmp_path):
    rows = [{"text": f"text {i}", "label": "1.0"} for i in range(30)]
    with pytest.raises(UserError, match="every training row has the same target"):
        load_task(task(str(write_rows(tmp_path / "flat.csv", rows)), type="regression"), seed=0)


def test_a_builtin_of_another_task_type_names_the_type_to_set():
    with pytest.raises(UserError, match="'builtin:tweets' is a classification data set") as error:
        load_task(task("builtin:tweets", type="multi_label"), seed=0)
    assert 'type = "classification"' in error.value.fix
