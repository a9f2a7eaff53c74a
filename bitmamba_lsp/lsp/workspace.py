"""The workspace folders, read in the background for the workspace cache (cache_model.py).

Reading is bounded and defensive, because a workspace may hold anything:

- files are walked without following symbolic links (no loops), `.git`, `node_modules`,
  virtual environments and build folders are skipped, and `.gitignore` files are honoured (the
  common subset of the syntax: globs, `**`, a leading `/` anchors to the folder, a trailing `/`
  matches folders only, `!` re-includes);
- only text files with a source-code extension are read; a file with a NUL byte in its first
  8 KB, or not UTF-8, or larger than `max_file_bytes`, is skipped; unreadable files are skipped;
- at most `max_files` files are looked at and at most `max_tokens` tokens are kept, nearest
  folders first (breadth-first), so a workspace of 100k files costs a bounded amount of time and
  memory.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitmamba_lsp.lsp.candidates import WorkspaceLines
from bitmamba_lsp.lsp.opening import lower_priority

log = logging.getLogger(__name__)

SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", ".venv", "venv", "__pycache__", ".mypy_cache", ".ruff_cache",
     ".pytest_cache", ".tox", "build", "dist", ".eggs", "site-packages", ".idea", ".vscode", "target"}
)
CODE_EXTENSIONS = frozenset(
    {".py", ".pyi", ".js", ".jsx", ".ts", ".tsx", ".mjs", ".cjs", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go",
     ".java", ".kt", ".rb", ".php", ".lua", ".sh", ".cs", ".swift", ".scala", ".m", ".r", ".jl", ".sql", ".toml",
     ".cfg", ".ini", ".md", ".rst", ".txt", ".yaml", ".yml"}
)


@dataclass(frozen=True)
class IgnoreRule:
    pattern: re.Pattern[str]
    negate: bool
    dir_only: bool


def parse_gitignore(text: str) -> list[IgnoreRule]:
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line
        line = line.lstrip("/")
        if not line:
            continue
        rx = _glob_to_regex(line)
        if not anchored:
            rx = r"(?:.*/)?" + rx
        rules.append(IgnoreRule(re.compile(rx + r"$"), negate, dir_only))
    return rules


def _glob_to_regex(glob: str) -> str:
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out += r"(?:.*/)?"
            i += 3
        elif glob.startswith("**", i):
            out += r".*"
            i += 2
        elif glob[i] == "*":
            out += r"[^/]*"
            i += 1
        elif glob[i] == "?":
            out += r"[^/]"
            i += 1
        else:
            j = i
            while j < len(glob) and glob[j] not in "*?":
                j += 1
            out += re.escape(glob[i:j]) if "[" not in glob[i:j] else fnmatch.translate(glob[i:j])[4:-3]
            i = j
    return out


def ignored(rules: list[IgnoreRule], rel: str, is_dir: bool) -> bool:
    """Is `rel` (a path relative to the folder of the rules, '/'-separated) ignored?"""
    result = False
    for r in rules:
        if r.dir_only and not is_dir:
            continue
        if r.pattern.match(rel):
            result = not r.negate
    return result


@dataclass
class ScanLimits:
    max_files: int = 20_000  # files looked at
    max_file_bytes: int = 512 * 1024
    max_tokens: int = 1_000_000  # tokens kept over all files


@dataclass
class ScanReport:
    files_seen: int = 0
    files_read: int = 0
    tokens: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


def walk(root: Path, limits: ScanLimits, report: ScanReport) -> Iterator[Path]:
    """Candidate files under root, breadth-first, honouring .gitignore files on the way."""
    queue: deque[tuple[Path, list[tuple[Path, list[IgnoreRule]]]]] = deque([(root, [])])
    while queue:
        folder, inherited = queue.popleft()
        rules = list(inherited)
        gi = folder / ".gitignore"
        try:
            if gi.is_file() and not gi.is_symlink():
                rules.append((folder, parse_gitignore(gi.read_text("utf-8", "replace")[:200_000])))
        except OSError:
            report.skip("unreadable")
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            report.skip("unreadable")
            continue
        for e in entries:
            try:
                if e.is_symlink():
                    report.skip("symlink")
                    continue
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                report.skip("unreadable")
                continue
            path = Path(e.path)
            if any(ignored(rs, path.relative_to(base).as_posix(), is_dir) for base, rs in rules):
                report.skip("gitignore")
                continue
            if is_dir:
                if e.name in SKIP_DIRS or e.name.startswith("."):
                    report.skip("folder")
                    continue
                queue.append((path, rules))
                continue
            report.files_seen += 1
            if report.files_seen > limits.max_files:
                report.skip("max_files")
                return
            if path.suffix.lower() not in CODE_EXTENSIONS:
                report.skip("not_code")
                continue
            yield path


def read_text(path: Path, limits: ScanLimits, report: ScanReport) -> str | None:
    try:
        if path.stat().st_size > limits.max_file_bytes:
            report.skip("large")
            return None
        data = path.read_bytes()
    except OSError:
        report.skip("unreadable")
        return None
    if b"\0" in data[:8192]:
        report.skip("binary")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        report.skip("not_utf8")
        return None


def scan(
    folders: list[Path],
    encode: Callable[[str], list[int]],
    limits: ScanLimits,
    skip: Callable[[Path], bool] = lambda p: False,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[Path, str, list[int]]]:
    """(path, text, token ids) of the workspace's text files within the limits (the text is cut
    where the token budget ends); `skip`: paths not to read (open documents); `stop`: checked
    between files (the daemon is shutting down)."""
    report = ScanReport()
    for root in folders:
        for path in walk(root, limits, report):
            if stop() or report.tokens >= limits.max_tokens:
                return
            if skip(path):
                continue
            text = read_text(path, limits, report)
            if text is None:
                continue
            ids = encode(text)
            room = limits.max_tokens - report.tokens
            if len(ids) > room:
                ids = ids[:room]
                text = text[: int(len(text) * room / max(1, len(ids) + 1))]
            report.files_read += 1
            report.tokens += len(ids)
            yield path, text, ids


class WorkspaceReader:
    """Reads the workspace folders on a background thread: each file's tokens go to the model
    worker (counted there into the workspace cache), its lines and names into a `WorkspaceLines`
    that replaces `lines` when the scan is over. A new scan (another model, other folders) makes
    the running one stop at its next file."""

    def __init__(self) -> None:
        self.folders: list[Path] = []
        self.lines: WorkspaceLines | None = None
        self.scanned = threading.Event()  # set when the last scan has read everything
        self._generation = 0

    def start(self, tokenizer: Any, worker: Any, limits: ScanLimits, skip: set[Path]) -> None:
        """Scan with this tokenizer (None: nothing to read), skipping the open documents."""
        self._generation += 1
        generation = self._generation
        done = self.scanned = threading.Event()
        if tokenizer is None or not self.folders:
            done.set()
            return
        folders = list(self.folders)

        def run() -> None:
            lower_priority()  # the model's threads go first (opening.py)
            worker.set_workspace_roots(folders)
            lines = WorkspaceLines()
            try:
                for path, text, ids in scan(folders, tokenizer.encode, limits, skip=skip.__contains__,
                                            stop=lambda: generation != self._generation or worker.stopped):
                    worker.workspace_file(path, ids)
                    lines.add_file(path, text)
                if generation == self._generation:
                    self.lines = lines.finish()
            except Exception:  # never fatal: the workspace level is a bonus
                log.exception("workspace scan failed")
            finally:
                done.set()

        threading.Thread(target=run, name="bitmamba-workspace", daemon=True).start()

    def stop(self) -> None:
        """Make a running scan stop at its next file."""
        self._generation += 1

    def lines_for(self, open_paths: set[Path]) -> WorkspaceLines | None:
        """The workspace's lines without the files open in the editor (event loop only)."""
        lines = self.lines
        if lines is not None:
            for p in open_paths & lines.files.keys():
                lines.remove_file(p)
        return lines

    def file_closed(self, path: Path, text: str) -> None:
        """A workspace file closed in the editor: back among the workspace's lines, as it was last."""
        if self.lines is not None and any(path.is_relative_to(f) for f in self.folders):
            self.lines.add_file(path, text)
