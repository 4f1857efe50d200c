"""Labelled documents from JSONL or CSV, validated up front so a bad line stops the run before training."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Any file not named .csv is read as JSON lines; a JSON error in one not named as such says so (a .tsv or
# .txt file is more likely another format than broken JSON).
JSON_SUFFIXES = frozenset({".jsonl", ".json", ".ndjson"})


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    label: str
    source: str = field(default="", compare=False)  # "file:line", for errors found after loading


def _check(text: object, label: object, where: str) -> Example:
    if not isinstance(text, str):
        raise DataError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    if not text.strip():
        raise DataError(f"{where}: 'text' is empty or whitespace only")
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)  # class ids such as 0/1, as a CSV file would give them
    if not isinstance(label, str) or not label.strip():
        raise DataError(f"{where}: 'label' must be a non-empty string or an integer class id, got {label!r}")
    # NFC: "é" typed as one code point or as e + a combining accent is one class, not two lookalikes
    return Example(text=text, label=unicodedata.normalize("NFC", label.strip()), source=where)


def read_text(path: Path) -> str:
    """The file as UTF-8 (a byte-order mark, as spreadsheet exports write, is dropped); DataError names the
    line of the first byte that is not UTF-8."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raise DataError(f"{path}: is gzip-compressed; decompress it first (gunzip -k {path.name})")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8") from None


def load_examples(path: Path) -> list[Example]:
    """Read `text`/`label` records from a .jsonl or .csv file; raise DataError naming the first bad line."""
    content = read_text(path)
    examples: list[Example] = []
    if path.suffix.lower() == ".csv":
        examples = _csv_examples(path, content)
    else:
        with io.StringIO(content) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    hint = "" if path.suffix.lower() in JSON_SUFFIXES else "; only a .csv file is read as CSV"
                    raise DataError(f"{where}: not valid JSON ({exc.msg}){hint}") from exc
                if not isinstance(record, dict):
                    raise DataError(f"{where}: expected a JSON object with 'text' and 'label'")
                missing = [name for name in ("text", "label") if name not in record]
                if missing:  # other names (content, category): say which, not "got NoneType"
                    raise DataError(f"{where}: no field(s) {missing}; the object has {sorted(record)[:10]}")
                examples.append(_check(record.get("text"), record.get("label"), where))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def _csv_examples(path: Path, content: str) -> list[Example]:
    """Strict CSV: a stray quote that would swallow the following rows into one text, or a row with more
    or fewer fields than the header, stops the run with its line numbers instead of training on it."""
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(io.StringIO(content, newline=""), strict=True)
    examples: list[Example] = []
    first_line = 1
    header: list[str] | None = None
    try:
        for row in reader:  # a quoted field may span lines: name them all, not only the record's last
            where = _lines(path, first_line, reader.line_num)
            first_line = reader.line_num + 1
            if header is None:
                header = row
                missing = {"text", "label"} - set(header)
                if missing:
                    hint = " (a ';'-separated file? longdoc reads ','-separated CSV)" if len(header) == 1 else ""
                    raise DataError(
                        f"{where}: header lacks column(s) {sorted(missing)}; it has {header}{hint} (names are "
                        "case-sensitive)"
                    )
                repeated = sorted({name for name in header if header.count(name) > 1})
                if repeated:
                    raise DataError(f"{where}: header names column(s) {repeated} more than once")
                continue
            if not row:  # a blank line
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{where}: {len(row)} field(s) where the header has {len(header)} (an unquoted comma, or a "
                    "quote opened or closed in the wrong place?)"
                )
            record = dict(zip(header, row, strict=True))
            examples.append(_check(record["text"], record["label"], where))
    except csv.Error as exc:  # strict mode: a quote in the wrong place, or one never closed
        where = _lines(path, first_line, reader.line_num)
        raise DataError(f"{where}: malformed CSV ({exc}; a quote opened or closed in the wrong place?)") from None
    if header is None:
        raise DataError(f"{path}:1: header lacks column(s) ['label', 'text']")
    _warn_swallowed_rows(examples)
    return examples


def _warn_swallowed_rows(examples: list[Example]) -> None:
    """A quote opened in the wrong place and closed by chance just before a delimiter rows later parses
    cleanly: the rows between become one text and their labels are lost. Such a text holds a line that ends
    like a row of its own (`...,<a label of this file>`); a text may legitimately, so this warns."""
    labels = {e.label for e in examples}
    for e in examples:
        for line in e.text.split("\n")[:-1]:
            _, comma, tail = line.rpartition(",")
            if comma and tail.strip() in labels:
                log.warning(
                    "%s: this text holds a line that reads like a row of its own (%r): a quote opened in the "
                    "wrong place would merge rows like this",
                    e.source,
                    line[-60:],
                )
                break


def _lines(path: Path, first: int, last: int) -> str:
    return f"{path}:{last}" if first >= last else f"{path}:{first}-{last}"


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary sibling, then rename over `path`: an interrupted run (Ctrl-C, a killed job)
    leaves the old file or the new one, never a torn one that a later `--resume` or the service trips on."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_json(path: Path, data: Any) -> None:
    """Indented JSON with a final newline, written atomically (see write_atomically)."""
    write_atomically(path, json.dumps(data, indent=2) + "\n")
