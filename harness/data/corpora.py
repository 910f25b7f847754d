"""Offline text corpora for capture and downstream evaluation: CPython's help texts, the
docstrings of the standard library, and the docstrings of every installed package. Nothing is
downloaded; parsed docstrings are kept in the cache (harness.data.cache)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import sys
import sysconfig
from pathlib import Path

from harness.data.cache import cache_dir

PYDOC_CORPUS = "pydoc"
PYTHON_DOCS_CORPUS = "python-docs"
DOCSTRINGS_CORPUS = "docstrings"
PACKAGE_DOCS_CORPUS = "package-docs"
CORPORA = (PYDOC_CORPUS, PYTHON_DOCS_CORPUS, DOCSTRINGS_CORPUS, PACKAGE_DOCS_CORPUS)

# harness.core.atomic and harness.core.store (torch) are imported where they are used: the
# corpus names above are read by the commands' --help

MIN_DOCSTRING = 200
"""Characters a docstring needs to be kept (short ones are mostly signatures)."""


def corpus_texts(source: str) -> tuple[list[str], str]:
    """(texts, description) from a .txt file, a folder of .txt files, or a corpus name
    (CORPORA)."""
    from harness.core.store import StoreError

    if source in CORPORA:
        from pydoc_data.topics import topics

        texts = [topics[k] for k in sorted(topics)]
        if source == PYDOC_CORPUS:
            return texts, "pydoc_data.topics of CPython (Python's help texts, English)"
        docs = stdlib_docstrings()
        if source == DOCSTRINGS_CORPUS:
            return docs, f"{len(docs)} docstrings of CPython's standard library (English)"
        if source == PACKAGE_DOCS_CORPUS:
            seen = set(texts) | set(docs)
            extra = [d for d in package_docstrings() if d not in seen]
            # shuffled (fixed seed) so that any stretch of the capture, the held-out tail
            # included, mixes packages instead of being one package's docs
            random.Random(0).shuffle(extra)
            return (texts + docs + extra,
                    f"pydoc_data.topics of CPython, {len(docs)} docstrings of its standard "
                    f"library and {len(extra)} distinct docstrings of the installed packages")
        return (texts + docs, f"pydoc_data.topics of CPython and {len(docs)} docstrings of its "
                "standard library (English)")
    path = Path(source)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise StoreError(f"{path}: no .txt files in this folder")
        return [f.read_text(encoding="utf-8") for f in files], f"{len(files)} .txt files in {path}"
    if path.is_file():
        return [path.read_text(encoding="utf-8")], f"text file {path}"
    raise StoreError(f"{source}: no such text file or folder (or use one of {list(CORPORA)})")


def stdlib_docstrings() -> list[str]:
    """Module, class and function docstrings of the standard library's .py files, in path
    order. Read with `ast`, so nothing is imported; only docstrings of MIN_DOCSTRING+
    characters. Parsing the whole library takes seconds, so the list is kept in the cache,
    keyed by the Python version and the library's folder."""
    return _cached_docstrings("stdlib", Path(sysconfig.get_paths()["stdlib"]))


def package_docstrings() -> list[str]:
    """The same for every installed package (the site-packages folder), each distinct text once.
    What it holds depends on the packages installed, so a store's meta records the count."""
    return _cached_docstrings("packages", Path(sysconfig.get_paths()["purelib"]))


def _cached_docstrings(kind: str, root: Path) -> list[str]:
    from harness.core.atomic import write_json

    key = hashlib.sha256(f"{sys.version}|{root}".encode()).hexdigest()[:16]
    name = "stdlib-docstrings" if kind == "stdlib" else f"{kind}-docstrings"
    cached = cache_dir("corpora") / f"{name}-{key}.json"
    try:
        docs = json.loads(cached.read_text(encoding="utf-8"))
        if isinstance(docs, list) and all(isinstance(d, str) for d in docs):
            return docs
    except (OSError, ValueError):
        pass
    docs = _parse_docstrings(root, skip_packages=kind == "stdlib")
    with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
        write_json(cached, docs)
    return docs


def _parse_docstrings(root: Path, skip_packages: bool = True) -> list[str]:
    import ast

    docs: list[str] = []
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if ((skip_packages and "site-packages" in path.parts) or "test" in path.parts
                or "tests" in path.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, RecursionError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                # the packages vendor copies of each other: keep each text once there
                if doc and len(doc) >= MIN_DOCSTRING and (skip_packages or doc not in seen):
                    seen.add(doc)
                    docs.append(doc)
    return docs
