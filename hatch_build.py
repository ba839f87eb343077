"""Hatchling build hook: compiles the optional native span converter (`_native_spans.c`).

Plain C against the CPython API, built with the running interpreter's own compiler settings
(`sysconfig`). Editable installs (`pip install -e .`, dev-mode-dirs) put the module next to its source
so the `.pth` path finds it; wheels carry it as an artifact and become platform-specific. With no C
compiler or no Python headers, or with `MALLARD_NO_NATIVE=1`, the hook prints one warning line and
the install goes on pure Python: `spans_to_arrow` then uses the Python converter.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("collector/mallard/collector/arrow/_native_spans.c")
MODULE = "mallard/collector/arrow/_native_spans"
NO_NATIVE_ENV = "MALLARD_NO_NATIVE"
REQUIRE_NATIVE_ENV = "MALLARD_REQUIRE_NATIVE"  # CI sets it: a broken C change must fail, not fall back


def _warn(message: str) -> None:
    print(f"mallard: {message}; using the pure-Python span converter", file=sys.stderr)


def _command(name: str, default: str) -> list[str]:
    return shlex.split(os.environ.get(name) or sysconfig.get_config_var(name) or default)


def compile_extension(source: Path, target: Path) -> str | None:
    """Compiles and links `source` into the extension module `target`; returns why not, or None."""
    if os.name == "nt":
        return "native build not supported on Windows"
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        return f"no Python headers ({include / 'Python.h'} missing; install python3-dev)"
    cc = _command("CC", "cc")
    if shutil.which(cc[0]) is None:
        return f"no C compiler ({cc[0]!r} not found)"
    cflags = shlex.split(sysconfig.get_config_var("CFLAGS") or "") + shlex.split(
        sysconfig.get_config_var("CCSHARED") or "-fPIC"
    )
    ldshared = _command("LDSHARED", f"{cc[0]} -shared")
    includes = {f"-I{include}", f"-I{sysconfig.get_paths()['platinclude']}"}
    with tempfile.TemporaryDirectory() as work:
        obj, linked = Path(work) / "_native_spans.o", Path(work) / target.name
        steps = [
            [*cc, *cflags, *sorted(includes), "-c", str(source), "-o", str(obj)],
            [*ldshared, str(obj), "-o", str(linked)],
        ]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, check=False)
            except OSError as exc:
                return f"compiler failed to start ({exc})"
            if done.returncode != 0:
                lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
                first = next((line for line in lines if "error" in line), lines[0])
                return f"native build failed: {' '.join(step[:1])}: {first.strip()}"
        # a new file renamed over the old one, not rewritten in place: processes that loaded the old
        # module keep a consistent mapping of it
        staged = target.with_name(f".{target.name}.tmp")
        try:
            shutil.copyfile(linked, staged)
            os.replace(staged, target)
        except OSError as exc:
            return f"could not place the native module ({exc})"
    return None


class NativeSpansBuildHook(BuildHookInterface):
    """Builds `_native_spans` for the wheel target (standard and editable)."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        self._scratch: str | None = None
        root = Path(self.root)
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        in_tree = root / SOURCE.with_name(f"_native_spans{suffix}")
        if version == "editable":
            # dev-mode-dirs: the .pth line points at the source folder, so the module sits beside its source
            target = in_tree
        else:
            self._scratch = tempfile.mkdtemp(prefix="mallard-native-")
            target = Path(self._scratch) / f"_native_spans{suffix}"
        if os.environ.get(NO_NATIVE_ENV, "") not in ("", "0"):
            problem: str | None = f"{NO_NATIVE_ENV} is set, native span converter not built"
        else:
            problem = compile_extension(root / SOURCE, target)
        if problem is not None:
            if version == "editable" and in_tree.exists():
                in_tree.unlink()  # a module left from an earlier build would still be imported
                problem += f", removed the stale {in_tree.name}"
            if os.environ.get(REQUIRE_NATIVE_ENV, "") not in ("", "0"):
                raise RuntimeError(f"mallard: {problem} (and {REQUIRE_NATIVE_ENV} is set)")
            _warn(problem)
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(target)] = f"{MODULE}{suffix}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
