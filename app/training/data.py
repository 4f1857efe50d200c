"""Labelled documents from JSONL or CSV, validated up front so a bad line stops the run before training."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    label: str


def _check(text: object, label: object, where: str) -> Example:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: 'text' must be a non-empty string, got {type(text).__name__}")
    if not isinstance(label, str) or not label.strip():
        raise DataError(f"{where}: 'label' must be a non-empty string, got {label!r}")
    return Example(text=text, label=label.strip())


def load_examples(path: Path) -> list[Example]:
    """Read `text`/`label` records from a .jsonl or .csv file; raise DataError naming the first bad line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    examples: list[Example] = []
    if path.suffix.lower() == ".csv":
        csv.field_size_limit(sys.maxsize)
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"text", "label"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}:1: header lacks column(s) {sorted(missing)}")
            for row in reader:
                examples.append(_check(row.get("text"), row.get("label"), f"{path}:{reader.line_num}"))
    else:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc
                if not isinstance(record, dict):
                    raise DataError(f"{where}: expected a JSON object with 'text' and 'label'")
                examples.append(_check(record.get("text"), record.get("label"), where))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples
