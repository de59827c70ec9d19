"""Reading JSON-lines logs back and scanning them for values that must never be logged.

Shared by the logging unit tests and the log-privacy integration test, so the scan the
integration test trusts is the one the unit tests show catching a planted leak.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Leak:
    """One forbidden value found in one line."""

    what: str
    where: str
    line: str

    def __str__(self) -> str:
        return f"{self.what} in {self.where}: {self.line[:300]}"


def read_lines(paths: Iterable[Path]) -> list[tuple[str, str]]:
    """Every line of every file as ``(file:line number, text)``; unreadable bytes replaced."""
    lines = []
    for path in sorted(paths):
        if not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        lines += [(f"{path}:{n}", line) for n, line in enumerate(text.splitlines(), 1)]
    return lines


def parse_json_lines(lines: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """Each line parsed as one JSON object; raises naming the first line that is not one."""
    parsed = []
    for where, line in lines:
        try:
            value = json.loads(line)
        except ValueError as error:
            raise AssertionError(f"{where} is not JSON ({error}): {line[:200]}") from None
        if not isinstance(value, dict):
            raise AssertionError(f"{where} is not a JSON object: {line[:200]}")
        parsed.append(value)
    return parsed


def _pattern(value: str) -> re.Pattern[str]:
    # A number must stand alone: 41.37 is a leak, 141.372 or a timestamp's 41:37 is not.
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return re.compile(rf"(?<![\d.]){re.escape(value)}(?![\d])")
    return re.compile(re.escape(value))


def find_leaks(lines: Iterable[tuple[str, str]], forbidden: Mapping[str, str]) -> list[Leak]:
    """Every occurrence of a ``forbidden`` value (``{description: value}``) in ``lines``."""
    patterns = {what: _pattern(value) for what, value in forbidden.items() if value}
    return [
        Leak(what, where, line)
        for where, line in lines
        for what, pattern in patterns.items()
        if pattern.search(line)
    ]
