"""What a user feels: the daemon's own completion path scored as an editor drives it.

Each held-out file is opened whole in a daemon `Session` (so the text after the cursor is there,
as in an editor). For a random sample of lines with code on them, three requests:

- ``line_start``: the line cut after its indentation (the rest of the line deleted, the lines below
  kept), the cursor there; the truth is the line's code;
- ``mid_line``: the line cut at a random point inside its code; the truth is the rest of the line;
- ``inside_line``: the line left whole, the cursor at that point (the user moved into finished
  code); nothing is missing, so any offer is noise: only the offer rate is scored;
- ``middle``: a span removed inside the line (from the mid-line cut to a random point before the
  line's end: the rest of the line stays after the cursor); the truth is the span, and a suggestion
  is exact when the line it makes is the original line (for fill-in-the-middle models).

The cut is a real edit through the session (``didChange``) and is undone after the request, so
the incremental state, the checkpoints and everything else run exactly as in an editor.

Scores, per mode: exact line (the suggestion's first line equals the truth), edit similarity,
show rate, precision (shown suggestions whose first line is the truth or a prefix of it: what a
user accepts with Tab and keeps), characters gained per request when only right suggestions are
accepted, and loops (a short unit repeated four or more times). Baselines: no suggestion, a lookup
of the lines above the cursor in the same file, and a lookup of the other files of the same package.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("line_start", "mid_line", "inside_line", "middle")
SCORED_MODES = ("line_start", "mid_line")  # the modes fit_choice.py learns from
_LOOP = re.compile(r"(\S.{0,15}?)\1{3,}|(?:\\n){3,}")


@dataclass(frozen=True)
class Case:
    line: int  # 0-based line number
    col: int  # code points into the line where the cursor is
    kind: str  # one of MODES
    typed: str  # the line's code before the cursor (indentation stripped)
    truth: str  # the rest of the line (trailing whitespace stripped)
    line_end: int  # code points in the line (without its line break)


def pick_cases(text: str, n_lines: int, seed: int, name: str) -> list[Case]:
    """Up to n_lines random lines with code (4+ characters, not only a comment); four cases each
    (the middle spans come from their own random stream, so the other cases do not depend on them)."""
    h = int.from_bytes(hashlib.sha1(f"{seed}:{name}".encode()).digest()[:8], "big")
    rng = np.random.default_rng(h)
    spans = np.random.default_rng([h, 1])
    lines = text.split("\n")
    usable = [
        i
        for i, ln in enumerate(lines)
        if len(ln.strip()) >= 4 and not ln.strip().startswith("#") and "\r" not in ln
    ]
    if not usable:
        return []
    picks = sorted(rng.choice(len(usable), size=min(n_lines, len(usable)), replace=False).tolist())
    out: list[Case] = []
    for k in picks:
        i = usable[k]
        code = lines[i].rstrip()
        indent = len(code) - len(code.lstrip())
        end = len(lines[i])
        out.append(Case(i, indent, "line_start", "", code[indent:], end))
        cut = int(rng.integers(indent + 1, len(code)))  # at least one character typed and one left
        out.append(Case(i, cut, "mid_line", code[indent:cut], code[cut:], end))
        out.append(Case(i, cut, "inside_line", code[indent:cut], code[cut:], end))
        if cut + 1 < len(code):  # a span of at least one character, one character left after it
            stop = int(spans.integers(cut + 1, len(code)))
            out.append(Case(i, cut, "middle", code[indent:cut], code[cut:stop], stop))
    return out


def is_loop(text: str) -> bool:
    return bool(_LOOP.search(text))


def first_line(text: str | None) -> str:
    return (text or "").split("\n", 1)[0].rstrip()


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / the longer length (1.0 for two empty strings)."""
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


# ------------------------------------------------------------------------------------ baselines
def _strip(line: str) -> str:
    return line.strip()


def lookup_in(lines: Sequence[str], case: Case, prev_line: str, *, recent_first: bool) -> str:
    """A whole-line lookup: mid-line, the rest of a line that starts with what is typed; at a line
    start, the line that followed a line equal to the line above the cursor. The most recent match
    (recent_first: lines are in document order, the last one wins) or the most frequent one."""
    typed = case.typed
    cands: list[str] = []
    if typed:
        cands = [s[len(typed) :] for s in map(_strip, lines) if s.startswith(typed) and len(s) > len(typed)]
    else:
        prev = _strip(prev_line)
        if prev:
            stripped = [_strip(x) for x in lines]
            cands = [
                stripped[k + 1] for k in range(len(stripped) - 1) if stripped[k] == prev and stripped[k + 1]
            ]
    if not cands:
        return ""
    if recent_first:
        return cands[-1]
    return Counter(cands).most_common(1)[0][0]


# ------------------------------------------------------------------------------------ scoring
@dataclass
class Tally:
    n: int = 0
    exact: int = 0
    shown: int = 0
    right: int = 0
    gained: int = 0
    truth_chars: int = 0
    similarity: float = 0.0
    loops: int = 0

    def add(self, suggestion: str | None, truth: str) -> None:
        s = first_line(suggestion)
        self.n += 1
        self.truth_chars += len(truth)
        self.similarity += edit_similarity(s, truth)
        if not (suggestion or "").strip():
            return
        self.shown += 1  # a ghost text the user sees, even one that starts with a line break (then wrong)
        self.loops += is_loop(suggestion or "")
        if not s.strip():
            return
        if s == truth:
            self.exact += 1
        if truth.startswith(s):
            self.right += 1
            self.gained += len(s)

    def report(self) -> dict[str, float | int | None]:
        n = max(self.n, 1)
        return {
            "n": self.n,
            "exact": self.exact / n,
            "shown": self.shown / n,
            "precision": self.right / self.shown if self.shown else None,
            "chars_gained": self.gained / n,
            "edit_similarity": self.similarity / n,
            "loops": self.loops / self.shown if self.shown else 0.0,
        }


@dataclass
class Tallies:
    by: dict[tuple[str, str], Tally] = field(default_factory=dict)

    def add(self, system: str, kind: str, suggestion: str | None, truth: str) -> None:
        self.by.setdefault((system, kind), Tally()).add(suggestion, truth)

    def report(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for (system, kind), t in sorted(self.by.items()):
            out.setdefault(system, {})[kind] = t.report()
        return out


# ------------------------------------------------------------------------------------ the daemon
@dataclass
class SourceFile:
    package: str
    name: str
    text: str


def middle_of(text: str, replaced: int, after: str) -> str:
    """What a suggestion puts between the cursor and the rest of the line `after` (`text` inserted
    over the next `replaced` characters): the line it makes, cut before `after` when it still ends
    with it; else the inserted text (it did not lead back to the line)."""
    made = text + after[replaced:]
    first = made.split("\n", 1)[0]
    if "\n" not in made[: len(made) - len(after)] and first.endswith(after):
        return first[: len(first) - len(after)]
    return text


async def _score_file(
    session: Any,
    f: SourceFile,
    cases: list[Case],
    repo_lines: list[str],
    tallies: Tallies,
    uri: str,
    collect: list[dict] | None = None,
    on_result: Callable[[Case, Any], None] | None = None,
) -> None:
    from bitmamba_lsp.lsp.choice import features as choice_features
    from bitmamba_lsp.lsp.documents import Change

    lines = f.text.split("\n")
    session.open(uri, f.text, 1)
    # the user opened the file a while ago: the workspace is read, background work is done
    await asyncio.to_thread(session.workspace.scanned.wait, 600)
    await asyncio.to_thread(session.worker.wait_idle, 600)
    version = 1
    for c in cases:
        prev_line = lines[c.line - 1] if c.line > 0 else ""
        deleted = lines[c.line][c.col : c.line_end] if c.kind != "inside_line" else ""
        after = lines[c.line][c.line_end :] if c.kind == "middle" else ""
        if deleted:
            version += 1
            session.change(uri, version, [Change("", (c.line, c.col), (c.line, c.line_end))], "utf-32")
        session.pending.clear()  # each case stands alone: no suggestion carried over from the last
        session.last_result = None
        got = await session.complete(uri, (c.line, c.col), "utf-32")
        if on_result is not None and session.last_result is not None:
            on_result(c, session.last_result)
        if collect is not None and c.kind in SCORED_MODES:
            collect.append({"kind": c.kind, "case": f"{uri}:{c.line}:{c.col}", "package": f.package, "marker": True})
        if collect is not None and session.last_result is not None and c.kind in SCORED_MODES:
            for o in session.last_result.options:
                collect.append(
                    {
                        "kind": c.kind,
                        "case": f"{uri}:{c.line}:{c.col}",
                        "package": f.package,
                        "truth": c.truth,
                        "text": o.text,
                        "right": c.truth.startswith(o.text.rstrip()) and bool(o.text.strip()),
                        "features": choice_features(o),
                    }
                )
        if deleted:
            version += 1
            session.change(uri, version, [Change(deleted, (c.line, c.col), (c.line, c.col))], "utf-32")
        suggestion = got.text if got is not None else None
        if c.kind == "middle" and got is not None:
            suggestion = middle_of(got.text, (got.end[1] - c.col) if got.end is not None else 0, after)
        tallies.add("daemon", c.kind, suggestion, c.truth if c.kind != "inside_line" else "")
        if c.kind == "inside_line":
            continue
        tallies.add("no suggestion", c.kind, None, c.truth)
        above = lines[: c.line]
        tallies.add("same-file lookup", c.kind, lookup_in(above, c, prev_line, recent_first=True), c.truth)
        tallies.add(
            "same-package lookup", c.kind, lookup_in(repo_lines, c, prev_line, recent_first=False), c.truth
        )
    session.close(uri)


async def score_files(
    files: Sequence[SourceFile],
    options: dict[str, Any],
    *,
    lines_per_file: int,
    seed: int,
    workspace: bool = True,
    collect: list[dict] | None = None,
    open_siblings: int = 0,
    on_result: Callable[[Case, Any], None] | None = None,
) -> dict[str, Any]:
    """Score every file's cases in a daemon session (settings `options`), one session per package
    whose workspace folder holds that package's files (workspace=False: no workspace folder);
    `open_siblings`: that many other files of the package are open in the editor meanwhile."""
    import tempfile

    from bitmamba_lsp.lsp.session import Session

    by_package: dict[str, list[SourceFile]] = {}
    for f in files:
        by_package.setdefault(f.package, []).append(f)
    tallies = Tallies()
    n_cases = 0
    model_name = ""
    for package, pfiles in by_package.items():
        with tempfile.TemporaryDirectory(prefix="bitmamba-eval-") as tmp:
            root = Path(tmp) / package
            for f in pfiles:
                dest = root / f.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(f.text, "utf-8")
            session = Session(lambda level, msg, popup: None)
            session.configure({"debounceMs": 0, "speculative": False, **options})
            await session.start_model_load()
            if session.slot.model is None:
                raise RuntimeError(f"the model did not load: {session.slot.error}")
            model_name = session.slot.model.name
            if workspace:
                session.set_workspace([root])
            try:
                for f in pfiles:
                    others = [ln for g in pfiles if g is not f for ln in g.text.split("\n")]
                    cases = pick_cases(f.text, lines_per_file, seed, f"{package}/{f.name}")
                    n_cases += len(cases)
                    k = pfiles.index(f)
                    siblings = [g for g in pfiles[k + 1 :] + pfiles[:k] if g is not f][:open_siblings]
                    for g in siblings:
                        session.open((root / g.name).as_uri(), g.text, 1)
                    await _score_file(
                        session, f, cases, others, tallies, uri=(root / f.name).as_uri(), collect=collect,
                        on_result=on_result,
                    )
                    for g in siblings:
                        session.close((root / g.name).as_uri())
            finally:
                session.shutdown()
    return {"cases": n_cases, "results": tallies.report(), "model": model_name}


def run_scoring(
    files: Iterable[SourceFile],
    options: dict[str, Any],
    *,
    lines_per_file: int,
    seed: int,
    collect: list[dict] | None = None,
    open_siblings: int = 0,
    on_result: Callable[[Case, Any], None] | None = None,
) -> dict:
    return asyncio.run(
        score_files(
            list(files), options, lines_per_file=lines_per_file, seed=seed, collect=collect,
            open_siblings=open_siblings, on_result=on_result,
        )
    )


# ------------------------------------------------------------------------------------ report
COLUMNS = ("exact", "shown", "precision", "chars_gained", "edit_similarity", "loops")


def markdown(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| system | mode | n | exact line | shown | right among shown | chars gained / request | edit sim. | loops |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for system, modes in results.items():
        for kind in MODES:
            r = modes.get(kind)
            if r is None:
                continue
            prec = "–" if r["precision"] is None else f"{100 * r['precision']:.1f} %"
            rows.append(
                f"| {system} | {kind} | {r['n']} | {100 * r['exact']:.1f} % | {100 * r['shown']:.1f} % | {prec} | "
                f"{r['chars_gained']:.2f} | {r['edit_similarity']:.3f} | {100 * r['loops']:.1f} % |"
            )
    return "\n".join(rows)
