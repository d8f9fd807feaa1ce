"""The published reference, ``@trigger.dev/core`` 4.8.3, run under node for comparison.

The npm package is installed on first use into a cache directory (never into the
repository): ``$METAOPS_REFERENCE_DIR`` if set, else
``$XDG_CACHE_HOME/metaops/reference-4.8.3`` (``~/.cache/...``). The scripts that
drive it (``tests/node/*.cjs``) are this project's own tools.

Where node, npm or the registry is missing, :func:`ensure_reference` returns the
reason as a string so that tests can skip with it printed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

REFERENCE_VERSION = "4.8.3"
SCRIPTS = Path(__file__).parent / "node"
INSTALL_TIMEOUT = 240


def reference_dir() -> Path:
    """Where the reference package is (or will be) installed."""
    override = os.environ.get("METAOPS_REFERENCE_DIR")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "metaops" / f"reference-{REFERENCE_VERSION}"


def _installed(target: Path) -> bool:
    """Whether every package ``tests/node/package.json`` pins is installed at its version in ``target``."""
    wanted: dict[str, str] = json.loads((SCRIPTS / "package.json").read_text())["dependencies"]
    for name, version in wanted.items():
        marker = target / "node_modules" / name / "package.json"
        if not marker.exists() or json.loads(marker.read_text()).get("version") != version:
            return False
    return True


def ensure_reference() -> Path | str:
    """The directory holding ``node_modules`` with the reference (and the official SDK), or why it is
    unavailable."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        return "node/npm not found on PATH: the reference (@trigger.dev/core) cannot run here"
    target = reference_dir()
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".install.lock").open("w") as lock:
        # Several test processes may start at once; one installs, the others wait.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed(target):
            return target
        shutil.copy(SCRIPTS / "package.json", target / "package.json")
        try:
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=target,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            packages = "the reference packages (tests/node/package.json)"
            return f"npm install of {packages} timed out after {INSTALL_TIMEOUT}s"
        if done.returncode != 0 or not _installed(target):
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return (
                f"npm install of the reference packages (tests/node/package.json) failed: {' / '.join(tail)}"
            )
    return target


def node_env(target: Path) -> dict[str, str]:
    """The environment under which node resolves the reference from ``target``."""
    return {**os.environ, "NODE_PATH": str(target / "node_modules")}


class ReferenceRunner:
    """One long-lived node process answering JSON lines (see ``tests/node/runner.cjs``).

    Starting node costs ~50 ms, so a test streams all its cases through one runner.
    """

    def __init__(self, target: Path) -> None:
        self._process = subprocess.Popen(
            ["node", str(SCRIPTS / "runner.cjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=node_env(target),
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request line, return the parsed answer line."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            msg = "the reference runner exited"
            raise RuntimeError(msg)
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        """Stop the node process."""
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            self._process.wait(timeout=10)

    def __enter__(self) -> ReferenceRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
