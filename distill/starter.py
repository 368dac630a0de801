"""`distill init`: a commented starter recipe from a data file, each guess with its evidence.

A newcomer has a CSV and no idea which keys matter. This reads the file with the readers the
`prepare` stage uses, guesses the text, pair and label columns, the task, the language and a
`max_length` from the teacher tokenizer's view of the texts, and writes those choices with the
figures behind them as comments, so a wrong guess is easy to spot and fix.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from distill.data.datasets import CleaningCounts, Example, clean, read_examples, read_rows, shown_column
from distill.errors import UserError
from distill.recipe import BUILTIN_PREFIX, MAX_LENGTH_LIMIT, TaskSection, TeacherSection

DEFAULT_TEACHER = TeacherSection().model
# Column names that say what a column holds, best first (compared lower-cased).
TEXT_NAMES = ("text", "sentence", "sentence1", "text_a", "review", "content", "comment", "tweet", "question", "query", "premise", "document", "body")
PAIR_NAMES = ("text_pair", "pair", "sentence2", "text_b", "hypothesis", "context", "passage", "answer")
LABEL_NAMES = ("label", "labels", "class", "category", "sentiment", "target", "intent", "polarity", "stance", "y")
ID_NAMES = ("id", "idx", "index", "uid", "guid")
SAMPLE_TEXTS = 5000  # texts tokenised and scanned for CJK: percentiles settle long before this
LENGTH_PERCENTILE = 95  # max_length covers this share of the texts whole
LENGTH_MULTIPLE = 8  # max_length is rounded up to a multiple of this (friendlier to kernels)
CJK_SHARE_ZH = 0.3  # language = "zh" when at least this share of the letters are CJK ideographs
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df]")


@dataclass(frozen=True)
class Columns:
    text: str
    label: str
    pair: str | None
    ignored: list[str]


@dataclass(frozen=True)
class LengthProposal:
    max_length: int
    truncation: str  # head | head+tail
    percentiles: dict[str, int]  # p50, p90, p95, p99, max (tokens, special tokens included)
    longer_share: float  # share of the texts longer than max_length
    limit: int  # the teacher's position limit


def _cells(rows: list[tuple[int, dict]], name: str) -> list[object]:
    return [row[name] for _, row in rows if row.get(name) not in (None, "")]


def _text_like(values: list[object]) -> bool:
    """Mostly distinct, non-numeric strings: free text, not a label, an id number or a score."""
    texts = [value for value in values if isinstance(value, str)]
    if not values or len(texts) < len(values):
        return False
    numeric = sum(_is_number(text) for text in texts)
    return numeric < len(texts) / 2 and len(set(texts)) >= len(texts) / 2


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _mean_chars(values: list[object]) -> float:
    return sum(len(str(value)) for value in values) / max(len(values), 1)


def _distinct(values: list[object]) -> int:
    return len({json.dumps(value, sort_keys=True) for value in values})  # lists and objects too


def _named(columns: list[str], names: Sequence[str]) -> str | None:
    by_name = {column.strip().lower(): column for column in columns}
    return next((by_name[name] for name in names if name in by_name), None)


def detect_columns(rows: list[tuple[int, dict]], columns: list[str], where: str) -> Columns:
    """Text, label and optional pair columns: by name first, else by what the cells hold.

    A label column has few distinct values (at most half the rows); the text column is the
    text-like column with the longest cells; a second text-like column about as long (at least
    half the text's length) is the pair.
    """
    cells = {name: _cells(rows, name) for name in columns}
    usable = [name for name in columns if name.strip().lower() not in ID_NAMES and not name.lower().endswith("_id")]
    label = _named(usable, LABEL_NAMES)
    if label is None:
        few = [name for name in usable if 2 <= _distinct(cells[name]) <= len(rows) / 2]
        # fewest distinct values; on a tie the later column (labels tend to come last)
        label = min(reversed(few), key=lambda name: _distinct(cells[name]), default=None)
    if label is None:
        raise UserError(
            f"no label column found (columns: {', '.join(map(shown_column, columns))})",
            where,
            "name the label column 'label', or give a column with a few distinct values",
        )
    rest = [name for name in usable if name != label]
    text = _named(rest, TEXT_NAMES)
    if text is None:
        text_like = [name for name in rest if _text_like(cells[name])]
        text = max(text_like, key=lambda name: _mean_chars(cells[name]), default=None)
    if text is None:
        raise UserError(
            f"no text-like column found (columns: {', '.join(map(shown_column, columns))})",
            where,
            "give a column of free text (mostly distinct, non-numeric strings), e.g. named 'text'",
        )
    others = [name for name in rest if name != text]
    pair = _named(others, PAIR_NAMES)
    if pair is None:
        long_enough = _mean_chars(cells[text]) / 2
        pair = next((n for n in others if _text_like(cells[n]) and _mean_chars(cells[n]) >= long_enough), None)
    ignored = [name for name in columns if name not in (text, label, pair)]
    return Columns(text=text, label=label, pair=pair, ignored=ignored)


def check_task(rows: list[tuple[int, dict]], label: str, where: str) -> None:
    """Only single-label classification exists: refuse multi-label and regression targets."""
    values = _cells(rows, label)
    if any(isinstance(value, (list, dict)) for value in values):
        raise UserError(
            f"column '{shown_column(label)}' holds lists or objects (a multi-label task?)",
            where,
            "distill trains single-label classifiers: give one label per row",
        )
    numbers = [str(value) for value in values if _is_number(str(value))]
    fractional = [number for number in numbers if not float(number).is_integer()]
    if numbers and len(numbers) == len(values) and fractional and len(set(numbers)) > 10:
        raise UserError(
            f"column '{shown_column(label)}' holds {len(set(numbers))} distinct fractional numbers (a regression task?)",
            where,
            "distill trains single-label classifiers: give class labels",
        )


def cjk_share(texts: Sequence[str]) -> float:
    """Share of the letters that are CJK ideographs (0 when there are no letters)."""
    letters = cjk = 0
    for text in texts:
        letters += sum(char.isalpha() for char in text)
        cjk += len(_CJK.findall(text))
    return cjk / letters if letters else 0.0


def _percentile(ordered: list[int], percent: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(math.ceil(percent / 100 * len(ordered)) - 1, 0)]


def propose_length(lengths: Sequence[int], limit: int) -> LengthProposal:
    """max_length: the 95th percentile rounded up to a multiple of 8, at most `limit`.

    When even `limit` cuts more than 5% of the texts, head+tail truncation keeps each long text's
    start and end (where reviews and posts tend to state their verdict); else head.
    """
    ordered = sorted(lengths)
    percentiles = {f"p{p}": _percentile(ordered, p) for p in (50, 90, LENGTH_PERCENTILE, 99)}
    percentiles["max"] = ordered[-1]
    wanted = math.ceil(percentiles[f"p{LENGTH_PERCENTILE}"] / LENGTH_MULTIPLE) * LENGTH_MULTIPLE
    max_length = max(min(wanted, limit), LENGTH_MULTIPLE)
    longer = sum(length > max_length for length in ordered) / len(ordered)
    truncation = "head+tail" if wanted > limit else "head"
    return LengthProposal(max_length, truncation, percentiles, longer, limit)


def token_lengths(examples: Sequence[Example], teacher_dir: Path) -> tuple[list[int], int]:
    """(ids per example as the teacher reads it, special tokens included; the teacher's position limit)."""
    from distill.data.tokenize import TextEncoder

    config = json.loads((teacher_dir / "config.json").read_text(encoding="utf-8"))
    limit = min(int(config.get("max_position_embeddings", 512)), MAX_LENGTH_LIMIT)
    encoder = TextEncoder.from_pretrained_dir(teacher_dir, max_length=10**9)  # no truncation: the true lengths
    return [len(encoder.encode_one(e.text, e.text_pair)) for e in examples], limit


def _relative(path: Path, base: Path) -> str:
    """`path` as the recipe at `base` should name it (recipes resolve paths against their folder)."""
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def _commented(assignment: str, comment: str) -> str:
    """A recipe line with its comment in the column every comment of the starter recipe uses."""
    return f"{assignment:<28} # {comment}"


def _balance(counts: Counter[str]) -> str:
    """Count and share of the ten commonest labels, and how uneven the classes are (a comment line)."""
    total = sum(counts.values())
    shown = [f"{shown_column(label)} {count} ({100 * count / total:.1f}%)" for label, count in counts.most_common(10)]
    if len(counts) > 10:
        shown.append(f"and {len(counts) - 10} more")
    ratio = max(counts.values()) / min(counts.values())
    return f"{', '.join(shown)}; largest/smallest {ratio:.1f}x"


@dataclass(frozen=True)
class DataProfile:
    """What init learnt from the data file: every guess the starter recipe states."""

    columns: Columns
    counts: CleaningCounts  # rows read and kept by the `prepare` stage's cleaning
    labels: Counter[str]  # label -> rows, after cleaning
    cjk_share: float
    language: str  # en | zh
    sampled: int  # texts scanned for CJK and tokenised
    length: LengthProposal


def profile_data(data_file: Path, teacher: str) -> DataProfile:
    """Read `data_file` as `prepare` will, guess its columns, task and language, and measure its
    texts with `teacher`'s tokenizer; a UserError for a file distill cannot train on."""
    from distill.models.teacher import resolve_model_path

    where = str(data_file)
    fmt, rows, names = read_rows(data_file)
    columns = detect_columns(rows, names, where)
    check_task(rows, columns.label, where)
    task = TaskSection(
        dataset=str(data_file), format=fmt, text_column=columns.text, text_pair_column=columns.pair, label_column=columns.label
    )
    examples, counts = clean(read_examples(data_file, task))
    labels = Counter(example.label for example in examples)
    if len(labels) < 2:
        raise UserError(
            f"the label column '{shown_column(columns.label)}' has a single class ({next(iter(labels), 'none')})",
            where,
            "a classifier needs at least two labels",
        )
    sample = random.Random(0).sample(examples, min(SAMPLE_TEXTS, len(examples)))
    share = cjk_share([example.joined for example in sample])
    lengths, limit = token_lengths(sample, resolve_model_path(teacher, "--teacher"))
    return DataProfile(
        columns=columns,
        counts=counts,
        labels=labels,
        cjk_share=share,
        language="zh" if share >= CJK_SHARE_ZH else "en",
        sampled=len(sample),
        length=propose_length(lengths, limit),
    )


def starter_recipe(data_file: Path, teacher: str | None, recipe_path: Path) -> str:
    """The text of a commented starter recipe for `data_file`, to be written at `recipe_path`;
    `teacher` None is the recipe's default teacher."""
    teacher = teacher or DEFAULT_TEACHER
    profile = profile_data(data_file, teacher)
    found, counts, length, language = profile.columns, profile.counts, profile.length, profile.language
    base = recipe_path.parent
    teacher_value = teacher if teacher.startswith(BUILTIN_PREFIX) else _relative(Path(teacher), base)
    lines = [
        f"# Starter recipe for {data_file.name}, written by `distill init`. The guesses below come from",
        f"# the file: check them, then `distill run {recipe_path.name}` (init already ran `distill validate`).",
        "#",
        f"# rows: {counts.read} read, {counts.kept} kept ({counts.empty} empty, {counts.duplicates} duplicates, "
        f"{counts.conflicting} with two labels)",
        f"# columns: text {found.text!r}, label {found.label!r}, pair {'none' if found.pair is None else repr(found.pair)}"
        + (f"; ignored: {', '.join(map(shown_column, found.ignored))}" if found.ignored else ""),
        f"# task: single-label classification, {len(profile.labels)} labels",
        f"# label balance: {_balance(profile.labels)}",
        f"# language: {language} ({100 * profile.cjk_share:.1f}% of the letters are CJK)",
        f"# token lengths ({teacher} tokenizer, special tokens included, {profile.sampled} texts): "
        + ", ".join(f"{name} {value}" for name, value in length.percentiles.items()),
        "",
        "[run]",
        "seed = 42",
        _commented("# threads = 2", "torch threads (default: torch's choice)"),
        "",
        "[task]",
        f"dataset = {_toml(_relative(data_file, base))}",
        f"text_column = {_toml(found.text)}",
    ]
    if found.pair is not None:
        lines.append(f"text_pair_column = {_toml(found.pair)}")
    longer = f"{100 * length.longer_share:.1f}% of the texts are longer"
    if length.truncation == "head":
        length_note = f"p{LENGTH_PERCENTILE} rounded up to a multiple of {LENGTH_MULTIPLE}; {longer} and lose their tail"
        truncation_note = "a long text keeps its start"
    else:
        length_note = f"the teacher's {length.limit} positions; {longer}"
        truncation_note = "a long text keeps its start and its end"
    lines += [
        f"label_column = {_toml(found.label)}",
        f'language = "{language}"',
        _commented(f"max_length = {length.max_length}", length_note),
        _commented(f'truncation = "{length.truncation}"', truncation_note),
        _commented("split = [0.8, 0.1, 0.1]", "train/dev/test, seeded and stratified by label"),
        "",
        "[teacher]",
        f"model = {_toml(teacher_value)}",
    ]
    if language == "zh" and teacher == DEFAULT_TEACHER:
        lines.append("# this teacher is English: for Chinese, give a Chinese BERT (see recipes/zh-reviews.toml)")
    pos_swap, pos_note = ("0.1", "jieba's POS tags") if language == "zh" else ("0.0", "English POS swap needs the spacy extra")
    lines += [
        "",
        "[student]",
        _commented("layers = 2", "a 2-layer transformer initialised from teacher layers"),
        'init = "teacher-layers"',
        "",
        _commented("[stages.finetune]", "the teacher, fine-tuned on your labels"),
        "epochs = 3",
        "lr = 5e-5",
        "batch_size = 32",
        "",
        _commented("[stages.task_specific]", "the transformer student, on teacher soft labels and gold labels"),
        "epochs = 3",
        "lr = 1e-4",
        "batch_size = 32",
        "",
    ]
    if found.pair is None:  # word-level students read one text
        lines += [
            _commented("[stages.data_distill]", "BOW and CNN students, on augmented texts the teacher labels"),
            'students = ["bow", "cnn"]',
            "epochs = 4",
            _commented(f"augment = {{ unk = 0.1, pos_swap = {pos_swap}, n_sampling = 0.3, multiplier = 4 }}", pos_note),
            "",
        ]
    else:
        lines += ["# no [stages.data_distill]: its BOW/CNN students read single texts, not pairs", ""]
    lines += [
        "[export]",
        'quantize = "int8"',
        "",
        "[report]",
        _commented("recommend_tolerance = 0.01", "recommended model: the fastest within 1 accuracy point of the best student"),
        _commented("# latency_budget_ms = 5.0", "or: the most accurate model within this batch-size-1 latency"),
    ]
    return "\n".join(lines) + "\n"
