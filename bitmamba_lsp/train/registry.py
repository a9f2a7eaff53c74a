"""Source packages from the PyPI and npm registries, for a training corpus.

A package list (``registry_packages.json`` beside this module, or ``--packages FILE``) pins each
package by name and version::

    {"pypi": [["requests", "2.32.3"], ...], "npm": [["lodash", "4.17.21"], ...]}

:func:`fetch_package` downloads one (``pip download --no-deps``: the wheel, else the sdist;
``npm pack``) into a cache folder and unpacks it once; :func:`package_license` reads the license the
package publishes (the wheel's or sdist's METADATA, ``package.json``'s ``license``). The corpus
(:mod:`.corpus`) takes the source files of the packages whose license is permissive, one *group*
per package, and holds packages out whole (never files of a package on both sides).

Downloading is the only network use; it happens when a corpus is built, never at run time or in
the tests (which use a local folder laid out like the cache).
"""

from __future__ import annotations

import email.parser
import json
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LIST = Path(__file__).with_name("registry_packages.json")
DEFAULT_CACHE = Path.home() / ".cache" / "bitmamba" / "corpus"


@dataclass(frozen=True)
class Package:
    registry: str  # "pypi" or "npm"
    name: str
    version: str

    @property
    def group(self) -> str:
        return f"{self.registry}:{self.name}"

    @property
    def folder_name(self) -> str:
        return f"{self.name.replace('/', '__')}-{self.version}"


def read_list(path: str | Path = DEFAULT_LIST) -> list[Package]:
    data = json.loads(Path(path).read_text("utf-8"))
    out = []
    for registry in ("pypi", "npm"):
        for name, version in data.get(registry, []):
            out.append(Package(registry, str(name), str(version)))
    return out


def _safe_members(names: list[str]) -> bool:
    return all(not n.startswith("/") and ".." not in Path(n).parts for n in names)


def _unpack(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            if not _safe_members(z.namelist()):
                raise ValueError(f"{archive}: unsafe paths in the archive")
            z.extractall(dest)
    else:
        with tarfile.open(archive) as t:
            members = [m for m in t.getmembers() if m.isfile() or m.isdir()]
            if not _safe_members([m.name for m in members]):
                raise ValueError(f"{archive}: unsafe paths in the archive")
            t.extractall(dest, members=members, filter="data")


def fetch_package(pkg: Package, cache: Path = DEFAULT_CACHE) -> Path:
    """The unpacked package folder (downloaded and unpacked on first use)."""
    folder = cache / pkg.registry / pkg.folder_name
    done = folder / ".unpacked"
    if done.is_file():
        return folder / "src"
    dl = folder / "download"
    dl.mkdir(parents=True, exist_ok=True)
    archives = sorted(p for p in dl.iterdir() if p.is_file())
    if not archives:
        if pkg.registry == "pypi":
            base = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(dl)]
            r = subprocess.run([*base, "--only-binary", ":all:", f"{pkg.name}=={pkg.version}"], capture_output=True)
            if r.returncode != 0:
                subprocess.run([*base, "--no-binary", ":all:", f"{pkg.name}=={pkg.version}"], check=True)
        else:
            subprocess.run(
                ["npm", "pack", "--silent", "--pack-destination", str(dl), f"{pkg.name}@{pkg.version}"],
                check=True,
                capture_output=True,
            )
        archives = sorted(p for p in dl.iterdir() if p.is_file())
    if not archives:
        raise FileNotFoundError(f"{pkg.group} {pkg.version}: nothing was downloaded")
    _unpack(archives[0], folder / "src")
    done.write_text(archives[0].name)
    return folder / "src"


def package_license(pkg: Package, root: Path) -> str:
    """The license the package declares ('' when it declares none)."""
    if pkg.registry == "npm":
        for pj in [*sorted(root.glob("*/package.json"))[:1], root / "package.json"]:
            if pj.is_file():
                try:
                    lic = json.loads(pj.read_text("utf-8")).get("license", "")
                except (ValueError, UnicodeDecodeError):
                    return ""
                if isinstance(lic, dict):
                    lic = lic.get("type", "")
                return f"License-Expression: {lic}" if lic else ""
        return ""
    metas = sorted(root.glob("*.dist-info/METADATA")) + sorted(root.glob("*/PKG-INFO"))
    if not metas:
        return ""
    return metas[0].read_text("utf-8", errors="replace")


def metadata_text(pkg: Package, root: Path) -> str:
    """A METADATA-like text for :func:`.corpus.license_is_permissive`."""
    text = package_license(pkg, root)
    if pkg.registry == "npm" and text:
        return text + "\n"
    return text


def parse_metadata(text: str) -> email.message.Message:
    return email.parser.Parser().parsestr(text)
