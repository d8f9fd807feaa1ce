"""The benchmark workloads, generated on demand into a cache directory and verified.

The JSON files are several megabytes, so the repository keeps only their
generator (``gen_workloads.py``) and their SHA-256 hashes (``workloads.sha256``,
taken from the shared files the reference figures were measured on). They are
written to ``$METAOPS_WORKLOADS_DIR`` if set, else
``$XDG_CACHE_HOME/metaops/workloads`` (``~/.cache/...``), and checked against the
hashes before every use: a benchmark never runs on different bytes than the
reference does.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import gen_workloads

HASHES_FILE = Path(__file__).with_name("workloads.sha256")


class WorkloadError(RuntimeError):
    """The workloads could not be produced with the recorded bytes."""


def expected_hashes() -> dict[str, str]:
    """File name -> SHA-256 hex digest, from ``workloads.sha256`` (``sha256sum`` format)."""
    hashes = {}
    for line in HASHES_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            hashes[name.lstrip("*")] = digest
    return hashes


def workloads_dir() -> Path:
    """Where the workloads are (or will be) kept."""
    override = os.environ.get("METAOPS_WORKLOADS_DIR")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "metaops" / "workloads"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mismatches(directory: Path, hashes: dict[str, str]) -> list[str]:
    """The names of files in ``directory`` that are missing or hold other bytes."""
    return [
        name
        for name, digest in hashes.items()
        if not (directory / name).is_file() or _sha256(directory / name) != digest
    ]


def ensure_workloads() -> Path:
    """The directory holding every workload with its recorded bytes, generating them if needed."""
    target = workloads_dir()
    hashes = expected_hashes()
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".generate.lock").open("w") as lock:
        # Benchmark processes started together must not write the same files at once.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _mismatches(target, hashes):
            return target
        with tempfile.TemporaryDirectory(dir=target, prefix=".generating-") as scratch:
            gen_workloads.generate(Path(scratch))
            wrong = _mismatches(Path(scratch), hashes)
            if wrong:
                msg = (
                    f"gen_workloads.py wrote other bytes than {HASHES_FILE.name} records for "
                    f"{', '.join(wrong)}: the generator or the hashes changed"
                )
                raise WorkloadError(msg)
            for name in hashes:
                # A rename within one directory tree: readers see the old file or the new one.
                shutil.move(str(Path(scratch) / name), str(target / name))
    return target


def load_all() -> dict[str, Any]:
    """Every workload parsed from its JSON file, by name without ``.json``."""
    directory = ensure_workloads()
    loaded = {}
    for name in expected_hashes():
        with (directory / name).open(encoding="utf-8") as f:
            loaded[name.removesuffix(".json")] = json.load(f)
    return loaded
