"""core/simd_levels.txt, the SIMD level table (its header comment says what each column means).

The tests read the levels from it instead of listing them: the parts of scripts/cross_test.sh, the
kernel sets a build carries, the options pyproject.toml must pass to CMake.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "core" / "simd_levels.txt"
LIST_COLUMNS = frozenset({"carries", "cflags", "msvc", "check", "cpuinfo"})

Level = dict[str, "str | tuple[str, ...]"]


def table_rows(text: str) -> list[list[str]]:
    """The non-comment lines split into cells, the column names first (what --list-levels prints too)."""
    return [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def levels() -> list[Level]:
    """One dict per row, by column name: "-" is "" (or () for a list column), lists are tuples."""
    header, *rows = table_rows(TABLE.read_text())
    out: list[Level] = []
    for cells in rows:
        row: Level = {}
        for column, cell in zip(header, cells, strict=True):
            value = "" if cell == "-" else cell
            if column in LIST_COLUMNS:
                row[column] = tuple(value.split(",")) if value else ()
            else:
                row[column] = value
        out.append(row)
    return out


def names() -> list[str]:
    return [str(row["name"]) for row in levels()]


def level(name: str) -> Level:
    for row in levels():
        if row["name"] == name:
            return row
    raise KeyError(f"no level {name!r} in {TABLE}")
