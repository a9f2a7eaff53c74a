"""Training corpora of source files: the shipped default (CPython stdlib + permissive site-packages)
or any directory of source files (``bitmamba train --corpus DIR``).

Pipeline (deterministic: same inputs, same corpus, on any machine):

1. **Collect** candidate files: ``*.py`` (or the requested extensions) under each root. For
   site-packages, files are taken per installed distribution (from its ``RECORD``) and only when
   the distribution's license metadata is permissive (MIT, BSD, Apache, PSF, ISC, ...: see
   :func:`license_is_permissive`). Every file belongs to a *group* (a distribution, a stdlib
   top-level module, or the whole user directory).
2. **Filter**: not UTF-8, near-empty (< ``min_chars`` non-blank characters), huge
   (> ``max_bytes``), generated (an "auto-generated"/"do not edit"/"@generated" marker in the first
   2 KB) or data-like (very long lines) files are skipped; line endings become ``\\n``.
3. **De-duplicate** by exact content hash (SHA-256) over all sources; the first file in sorted order
   (group, path) wins.
4. **Cap** each group at ``group_cap_bytes`` so one big package (torch, sympy) cannot dominate:
   files are taken in order of the hash of their path until the cap is reached.
5. **Split by file**: a file is held out when ``sha1("heldout:" + name) % 1000 < heldout_permille``,
   where ``name`` is ``source/relative/path`` (e.g. ``stdlib/json/decoder.py``). The split depends on
   the name only, so it is stable when files are added or removed.

Nothing here needs torch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_EXTENSIONS = (".py",)
CODE_EXTENSIONS = (".py", ".js", ".mjs", ".cjs", ".jsx", ".ts", ".mts", ".cts", ".tsx")
REGISTRY_GROUPS = ("pypi:", "npm:")
GENERATED_RE = re.compile(
    r"auto-?generated|generated (?:by|from|automatically)|do not edit|don't edit|@generated", re.IGNORECASE
)
# Directory names never entered when scanning a user's directory.
SKIP_DIRS = {
    ".git",
    ".hg",
    ".svn",
    ".tox",
    ".nox",
    ".venv",
    "venv",
    "env",
    "__pycache__",
    "node_modules",
    "site-packages",
    "dist-packages",
    "build",
    "dist",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".eggs",
    ".idea",
    ".vscode",
}
# Distributions never used for the default corpus, whatever their license.
# The usefulness benchmark's held-out packages (benchmarks/bench_usefulness.py) are excluded by name
# from every source, so a model trained here never saw them.
BENCHMARK_PACKAGES = {
    "toolz", "tabulate", "glom", "funcy", "pyparsing", "voluptuous",  # tune
    "tenacity", "humanize", "tinydb", "pyrsistent",  # select
    "boltons", "cachetools", "marshmallow",  # report
}
EXCLUDED_DISTRIBUTIONS = {"bitmamba-lsp", "bitmamba_lsp"} | BENCHMARK_PACKAGES

# SPDX identifiers (and license-classifier / free-text names) accepted as permissive.
PERMISSIVE_SPDX = {
    "MIT",
    "MIT-0",
    "BSD-2-CLAUSE",
    "BSD-3-CLAUSE",
    "BSD-4-CLAUSE",
    "0BSD",
    "BSD",
    "APACHE-2.0",
    "APACHE-1.1",
    "PSF-2.0",
    "PYTHON-2.0",
    "PYTHON-2.0.1",
    "ISC",
    "ZLIB",
    "CC0-1.0",
    "BSL-1.0",
    "UNLICENSE",
    "HPND",
    "LLVM-EXCEPTION",
    "X11",
    "NCSA",
}
PERMISSIVE_CLASSIFIERS = {
    "MIT License",
    "BSD License",
    "Apache Software License",
    "Python Software Foundation License",
    "ISC License (ISCL)",
    "zlib/libpng License",
    "The Unlicense (Unlicense)",
    "MIT No Attribution License (MIT-0)",
    "Boost Software License 1.0 (BSL-1.0)",
    "Historical Permission Notice and Disclaimer (HPND)",
    "CC0 1.0 Universal (CC0 1.0) Public Domain Dedication",
    "Public Domain",
}
PERMISSIVE_WORDS = re.compile(r"\b(MIT|BSD|Apache|PSF|Python Software Foundation|ISC)\b", re.IGNORECASE)
COPYLEFT_WORDS = re.compile(r"GPL|LGPL|AGPL|MPL|Mozilla|EUPL|CDDL|EPL|copyleft|proprietary", re.IGNORECASE)


@dataclass
class CorpusOptions:
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    min_chars: int = 128  # non-blank characters
    max_bytes: int = 256 * 1024
    max_line_chars: int = 1000  # any longer line: data, not code (or minified)
    heldout_package_permille: int = 150  # registry packages held out whole (by package name)
    long_line_chars: int = 200
    max_long_line_fraction: float = 0.1
    group_cap_bytes: int | None = 3 * 1024 * 1024
    heldout_permille: int = 30


@dataclass
class Document:
    name: str  # "source/relative/path", unique, used for the split
    path: str  # absolute path on this machine
    group: str  # distribution / top-level module / user dir
    license: str
    sha256: str
    n_bytes: int
    split: str = "train"  # or "heldout"

    def read(self) -> str:
        return normalize_text(Path(self.path).read_bytes().decode("utf-8"))


@dataclass
class Corpus:
    documents: list[Document] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    sources: list[str] = field(default_factory=list)
    options: CorpusOptions = field(default_factory=CorpusOptions)

    def split(self, name: str) -> list[Document]:
        return [d for d in self.documents if d.split == name]

    def texts(self, split: str) -> Iterator[str]:
        for d in self.split(split):
            yield d.read()

    def summary(self) -> dict:
        out: dict = {
            "sources": self.sources,
            "heldout_permille": self.options.heldout_permille,
            "extensions": list(self.options.extensions),
        }
        for split in ("train", "heldout"):
            docs = self.split(split)
            out[split] = {"files": len(docs), "bytes": sum(d.n_bytes for d in docs)}
        out["skipped"] = dict(sorted(self.skipped.items()))
        groups = Counter()
        for d in self.documents:
            groups[d.group] += d.n_bytes
        out["groups"] = len(groups)
        out["largest_groups"] = dict(groups.most_common(12))
        licenses = Counter(d.license for d in self.documents)
        out["licenses"] = dict(licenses.most_common())
        return out

    def write_manifest(self, path: str | os.PathLike[str]) -> None:
        """One line per document: name, split, group, license, bytes, sha256 (TSV)."""
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(["name", "split", "group", "license", "bytes", "sha256"])
        for d in self.documents:
            w.writerow([d.name, d.split, d.group, d.license, d.n_bytes, d.sha256])
        Path(path).write_text(buf.getvalue(), encoding="utf-8")

    def to_json(self) -> str:
        return json.dumps(
            {
                "options": asdict(self.options),
                "sources": self.sources,
                "skipped": dict(self.skipped),
                "documents": [asdict(d) for d in self.documents],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Corpus:
        data = json.loads(text)
        opts = data["options"]
        opts["extensions"] = tuple(opts["extensions"])
        return cls(
            documents=[Document(**d) for d in data["documents"]],
            skipped=Counter(data["skipped"]),
            sources=data["sources"],
            options=CorpusOptions(**opts),
        )


# ------------------------------------------------------------------------------------ helpers


def normalize_text(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def heldout(name: str, permille: int) -> bool:
    h = int.from_bytes(hashlib.sha1(f"heldout:{name}".encode()).digest()[:8], "big")
    return h % 1000 < permille


def _order_key(name: str) -> str:
    return hashlib.sha1(f"order:{name}".encode()).hexdigest()


def check_text(raw: bytes, opts: CorpusOptions) -> tuple[str | None, str]:
    """(normalized text or None, reason). Reason is 'ok' or why the file is skipped."""
    if len(raw) > opts.max_bytes:
        return None, "huge"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not_utf8"
    if "\x00" in text:
        return None, "binary"
    text = normalize_text(text)
    if sum(1 for c in text if not c.isspace()) < opts.min_chars:
        return None, "near_empty"
    if GENERATED_RE.search(text[:2048]):
        return None, "generated"
    lines = text.split("\n")
    if max(len(line) for line in lines) > opts.max_line_chars:
        return None, "data_like"
    n_long = sum(1 for line in lines if len(line) > opts.long_line_chars)
    if n_long > opts.max_long_line_fraction * len(lines):
        return None, "data_like"
    return text, "ok"


# --------------------------------------------------------------------------------- licenses


def _spdx_permissive(expr: str) -> bool:
    expr = expr.replace("(", " ").replace(")", " ")
    for branch in re.split(r"\s+OR\s+", expr, flags=re.IGNORECASE):
        ids = [t.strip().upper() for t in re.split(r"\s+(?:AND|WITH)\s+", branch, flags=re.IGNORECASE)]
        if ids and all(i.removesuffix("+") in PERMISSIVE_SPDX for i in ids if i):
            return True
    return False


def license_is_permissive(metadata: str) -> tuple[bool, str]:
    """Decide from a distribution's METADATA text. Returns (permissive, short license string).

    Order: ``License-Expression`` (SPDX; some OR-branch must be all permissive), else the
    ``License ::`` classifiers (all must be permissive), else the free-text ``License:`` field
    (a permissive name and no copyleft one). Unknown means not permissive.
    """
    headers = metadata.split("\n\n", 1)[0]
    expr = classifiers = None
    free = ""
    cls: list[str] = []
    for line in headers.splitlines():
        if line.startswith("License-Expression:"):
            expr = line.split(":", 1)[1].strip()
        elif line.startswith("Classifier: License ::"):
            cls.append(line.split("::")[-1].strip())
        elif line.startswith("License:") and not free:
            free = line.split(":", 1)[1].strip()
    if expr:
        return _spdx_permissive(expr), expr
    classifiers = [c for c in cls if c not in ("OSI Approved",)]
    if classifiers:
        return all(c in PERMISSIVE_CLASSIFIERS for c in classifiers), "; ".join(classifiers)
    if free and len(free) < 200:
        return bool(PERMISSIVE_WORDS.search(free)) and not COPYLEFT_WORDS.search(free), free
    if free:  # a whole license text pasted into the field
        head = free[:400]
        return bool(PERMISSIVE_WORDS.search(head)) and not COPYLEFT_WORDS.search(head), head[:60]
    return False, "unknown"


# ----------------------------------------------------------------------------------- sources


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def site_packages_dirs() -> list[Path]:
    dirs = []
    for key in ("purelib", "platlib"):
        p = Path(sysconfig.get_paths()[key])
        if p.is_dir() and p not in dirs:
            dirs.append(p)
    return dirs


def iter_stdlib(opts: CorpusOptions) -> Iterator[tuple[str, Path, str, str]]:
    """(name, path, group, license) for the standard library (no site-packages)."""
    root = stdlib_dir()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")
        )
        for fn in sorted(filenames):
            if fn.endswith(opts.extensions):
                p = Path(dirpath) / fn
                rel = p.relative_to(root).as_posix()
                group = "stdlib:" + rel.split("/", 1)[0].removesuffix(".py")
                yield f"stdlib/{rel}", p, group, "PSF-2.0"


def iter_site_packages(opts: CorpusOptions, skipped: Counter) -> Iterator[tuple[str, Path, str, str]]:
    """Files of installed distributions with permissive license metadata (from each RECORD)."""
    for sp in site_packages_dirs():
        for info in sorted(sp.glob("*.dist-info")):
            meta_path = info / "METADATA"
            record = info / "RECORD"
            if not meta_path.is_file() or not record.is_file():
                continue
            meta = meta_path.read_text("utf-8", errors="replace")
            m = re.search(r"^Name:\s*(.+)$", meta, re.MULTILINE)
            dist = (m.group(1).strip() if m else info.name.split("-")[0]).lower().replace("_", "-")
            if dist in EXCLUDED_DISTRIBUTIONS:
                continue
            ok, lic = license_is_permissive(meta)
            rows = list(csv.reader(record.read_text("utf-8", errors="replace").splitlines()))
            files = sorted({r[0] for r in rows if r and r[0].endswith(opts.extensions) and ".." not in r[0]})
            if not ok:
                skipped["license:" + dist] += len(files)
                continue
            for rel in files:
                p = sp / rel
                if p.is_file():
                    yield f"site-packages/{rel}", p, f"dist:{dist}", lic


def iter_registry_packages(
    packages, cache: Path, opts: CorpusOptions, skipped: Counter, log=None
) -> Iterator[tuple[str, Path, str, str]]:
    """Files of pinned PyPI / npm packages (see :mod:`.registry`) with a permissive license."""
    from . import registry

    for pkg in packages:
        if pkg.name.lower() in EXCLUDED_DISTRIBUTIONS:
            skipped["excluded:" + pkg.group] += 1
            continue
        try:
            root = registry.fetch_package(pkg, cache)
        except Exception as e:  # a registry that cannot be reached: the package is left out, said
            skipped["unavailable:" + pkg.group] += 1
            if log:
                log(f"corpus: {pkg.group} {pkg.version}: not available ({e})")
            continue
        ok, lic = license_is_permissive(registry.metadata_text(pkg, root))
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS - {"dist", "build"})
            for fn in sorted(filenames):
                if fn.endswith(opts.extensions) and not fn.endswith((".min.js", ".min.mjs", ".bundle.js")):
                    files.append(Path(dirpath) / fn)
        if not ok:
            skipped["license:" + pkg.group] += len(files)
            continue
        for p in files:
            rel = p.relative_to(root).as_posix()
            yield f"{pkg.registry}/{pkg.name}/{rel}", p, pkg.group, lic


def iter_directory(
    root: Path, opts: CorpusOptions, label: str | None = None
) -> Iterator[tuple[str, Path, str, str]]:
    """Every file with a wanted extension under ``root`` (skipping VCS, venvs, build output...)."""
    root = Path(root).resolve()
    label = label or root.name
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for fn in sorted(filenames):
            if fn.endswith(opts.extensions):
                p = Path(dirpath) / fn
                yield f"{label}/{p.relative_to(root).as_posix()}", p, f"dir:{label}", "user"


# ------------------------------------------------------------------------------------- build


def build_corpus(
    *,
    stdlib: bool = False,
    site_packages: bool = False,
    directories: Iterable[str | os.PathLike[str]] = (),
    packages: Iterable = (),
    package_cache: str | os.PathLike[str] | None = None,
    options: CorpusOptions | None = None,
    log=None,
) -> Corpus:
    """Collect, filter, de-duplicate, cap and split. See the module docstring."""
    opts = options or CorpusOptions()
    opts.extensions = tuple(e if e.startswith(".") else "." + e for e in opts.extensions)
    corpus = Corpus(options=opts)
    candidates: list[tuple[str, Path, str, str]] = []
    if stdlib:
        corpus.sources.append(f"stdlib ({stdlib_dir()}, Python {sys.version.split()[0]})")
        candidates += iter_stdlib(opts)
    if site_packages:
        corpus.sources.append(
            "site-packages (" + ", ".join(map(str, site_packages_dirs())) + "), permissive only"
        )
        candidates += iter_site_packages(opts, corpus.skipped)
    for d in directories:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: not a directory")
        corpus.sources.append(str(d.resolve()))
        candidates += iter_directory(d, opts)
    packages = list(packages)
    if packages:
        from .registry import DEFAULT_CACHE

        corpus.sources.append(
            "registry packages (held out by package): "
            + ", ".join(f"{p.registry}:{p.name}=={p.version}" for p in packages)
        )
        cache = Path(package_cache) if package_cache else DEFAULT_CACHE
        candidates += iter_registry_packages(packages, cache, opts, corpus.skipped, log)
    candidates.sort(key=lambda c: (c[2], c[0]))

    seen: set[str] = set()
    names: set[str] = set()
    by_group: dict[str, list[Document]] = {}
    for name, path, group, lic in candidates:
        if name in names:
            continue
        names.add(name)
        try:
            raw = path.read_bytes()
        except OSError:
            corpus.skipped["unreadable"] += 1
            continue
        text, why = check_text(raw, opts)
        if text is None:
            corpus.skipped[why] += 1
            continue
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest in seen:
            corpus.skipped["duplicate"] += 1
            continue
        seen.add(digest)
        doc = Document(
            name=name,
            path=str(path),
            group=group,
            license=lic,
            sha256=digest,
            n_bytes=len(text.encode("utf-8")),
        )
        by_group.setdefault(group, []).append(doc)

    for group in sorted(by_group):
        docs = sorted(by_group[group], key=lambda d: _order_key(d.name))
        total = 0
        for doc in docs:
            if opts.group_cap_bytes is not None and total + doc.n_bytes > opts.group_cap_bytes:
                corpus.skipped["group_cap"] += 1
                continue
            total += doc.n_bytes
            if group.startswith(REGISTRY_GROUPS):  # a registry package is held out whole
                doc.split = "heldout" if heldout(group, opts.heldout_package_permille) else "train"
            else:
                doc.split = "heldout" if heldout(doc.name, opts.heldout_permille) else "train"
            corpus.documents.append(doc)
    corpus.documents.sort(key=lambda d: d.name)
    if log:
        s = corpus.summary()
        log(
            f"corpus: train {s['train']['files']} files / {s['train']['bytes'] / 1e6:.1f} MB, "
            f"held-out {s['heldout']['files']} files / {s['heldout']['bytes'] / 1e6:.2f} MB; skipped {s['skipped']}"
        )
    return corpus
