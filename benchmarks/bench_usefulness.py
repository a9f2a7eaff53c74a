"""How useful the daemon's suggestions are on code the model never saw, scored as an editor drives it
(bitmamba_lsp/editor_eval.py), beside no suggestion and whole-line lookups.

Held-out code: pinned, permissively licensed PyPI packages, downloaded with pip (wheels, no
dependencies) into a cache folder. None of them is installed in the environment the shipped model
was trained from (its corpus was the standard library and the packages next to it); the licence of
each is read from its wheel metadata and recorded. Three splits: "tune" (where thresholds and
mixing weights are fitted: fit_choice.py), "select" (where a variant of the daemon, a feature set
or a policy, is chosen over another by a rule stated before it is run, once the tune split has
fitted each) and "report" (where figures are quoted, and nothing is chosen).

    python benchmarks/bench_usefulness.py                     # both splits, the shipped model
    python benchmarks/bench_usefulness.py --split report --model path/to/model.bin
    python benchmarks/bench_usefulness.py --corpus DIR        # DIR/<package>/**/*.py instead of pip

Prints the table and writes JSON (and markdown) to benchmarks/results/usefulness-<model>-<split>.*.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from bitmamba_lsp.bench import machine_info
from bitmamba_lsp.editor_eval import SourceFile, markdown, run_scoring

# (name, version, licence as published), by split. Pure-Python packages, none of them a dependency
# of this project or of anything installed beside it when the default model was trained.
PACKAGES: dict[str, list[tuple[str, str]]] = {
    # six tune packages since stop 22 (three before): the calibration of what to show, fitted on
    # three, did not carry over to the report split at line starts
    "tune": [("toolz", "1.0.0"), ("tabulate", "0.9.0"), ("glom", "23.5.0"),
             ("funcy", "2.0"), ("pyparsing", "3.2.0"), ("voluptuous", "0.15.2")],
    # since stop 23: choosing between variants on the report split would leave no untouched figures
    "select": [("tenacity", "9.0.0"), ("humanize", "4.11.0"), ("tinydb", "4.8.2"), ("pyrsistent", "0.20.0")],
    "report": [("boltons", "24.1.0"), ("cachetools", "5.5.0"), ("marshmallow", "3.23.1")],
}
PERMISSIVE = ("MIT", "BSD", "Apache", "ISC", "PSF", "Python Software Foundation")
CACHE = Path.home() / ".cache" / "bitmamba" / "heldout"
MAX_FILE_CHARS = 150_000
MIN_LINES = 20


def licence_of(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(z.read(meta).decode("utf-8", "replace"))
    parts = [msg.get("License-Expression") or "", msg.get("License") or ""]
    parts += [c.split("::")[-1].strip() for c in msg.get_all("Classifier") or [] if c.startswith("License ::")]
    return "; ".join(p for p in parts if p and len(p) < 80) or "unknown"


def fetch(name: str, version: str, cache: Path) -> tuple[list[SourceFile], str]:
    """The package's .py files (from its wheel, downloaded once into `cache`) and its licence."""
    folder = cache / f"{name}-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
             "--dest", str(folder), f"{name}=={version}"],
            check=True,
        )
        wheels = sorted(folder.glob("*.whl"))
    licence = licence_of(wheels[0])
    if not any(p.lower() in licence.lower() for p in PERMISSIVE):
        raise SystemExit(f"{name} {version}: licence {licence!r} is not a permissive one")
    files: list[SourceFile] = []
    with zipfile.ZipFile(wheels[0]) as z:
        for n in sorted(z.namelist()):
            if n.endswith(".py"):
                text = z.read(n).decode("utf-8", "replace")
                if text.count("\n") >= MIN_LINES and len(text) <= MAX_FILE_CHARS:
                    files.append(SourceFile(name, n, text))
    return files, licence


def from_folder(root: Path) -> list[SourceFile]:
    files = []
    for pkg in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(pkg.rglob("*.py")):
            text = f.read_text("utf-8", "replace")
            if text.count("\n") >= MIN_LINES and len(text) <= MAX_FILE_CHARS:
                files.append(SourceFile(pkg.name, str(f.relative_to(pkg)), text))
    return files


def cap(files: list[SourceFile], per_package: int) -> list[SourceFile]:
    """At most `per_package` files of each package, spread over its sorted file list."""
    out: list[SourceFile] = []
    for pkg in dict.fromkeys(f.package for f in files):
        mine = [f for f in files if f.package == pkg]
        step = max(1, len(mine) / per_package)
        out += [mine[int(i * step)] for i in range(min(per_package, len(mine)))]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model (default: the shipped one)")
    ap.add_argument("--split", choices=["tune", "select", "report", "both"], default="both",
                    help="both: tune and report")
    ap.add_argument("--corpus", type=Path, help="score DIR/<package>/**/*.py instead of the pinned packages")
    ap.add_argument("--files-per-package", type=int, default=40)
    ap.add_argument("--lines-per-file", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a daemon setting, e.g. minConfidence=0.3")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--tag", default="", help="suffix for the result file names")
    ap.add_argument("--open-siblings", type=int, default=0, help="other files of the package open meanwhile")
    args = ap.parse_args()

    options: dict = {"threads": args.threads}
    if args.model:
        options["model"] = args.model
    for kv in args.set:
        k, _, v = kv.partition("=")
        options[k] = json.loads(v)
    info = machine_info()
    print(f"machine: {info.get('cpu')} | {info.get('cores')} cores | SIMD {info.get('simd')} | threads {args.threads}")
    splits = ["tune", "report"] if args.split == "both" else [args.split]
    if args.corpus:
        splits = ["corpus"]
    for split in splits:
        t0 = time.perf_counter()
        packages: list[dict] = []
        if split == "corpus":
            files = from_folder(args.corpus)
            packages = [{"name": p, "source": str(args.corpus)} for p in sorted({f.package for f in files})]
        else:
            files = []
            for name, version in PACKAGES[split]:
                got, licence = fetch(name, version, args.cache)
                files += got
                packages.append({"name": name, "version": version, "licence": licence, "py_files": len(got)})
        files = cap(files, args.files_per_package)
        res = run_scoring(files, options, lines_per_file=args.lines_per_file, seed=args.seed, open_siblings=args.open_siblings)
        res.update(
            split=split,
            packages=packages,
            files=len(files),
            settings=options,
            seed=args.seed,
            lines_per_file=args.lines_per_file,
            open_siblings=args.open_siblings,
            seconds=round(time.perf_counter() - t0, 1),
            machine=info,
        )
        table = markdown(res["results"])
        print(f"\n## split {split}: {len(files)} files, {res['cases']} cases, {res['seconds']} s ({res['model']})\n")
        print(", ".join(f"{p['name']} {p.get('version', '')} ({p.get('licence', '')})" for p in packages))
        print(table)
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"usefulness-{res['model'].replace('/', '_')}-{split}{args.tag}"
        (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
