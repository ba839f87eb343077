"""`mallard.instrumentation` stays light: importing it (every integration re-exported) loads neither
Flask, torch, nor any other part of mallard; an integration called without its extra says which
extra to install."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import builtins, json, sys
blocked = {"flask", "torch", "werkzeug"}
real_import = builtins.__import__

def guarded(name, *args, **kwargs):
    if name.split(".")[0] in blocked:
        raise ImportError(f"No module named {name!r} (blocked by the test)")
    return real_import(name, *args, **kwargs)

builtins.__import__ = guarded
import mallard.instrumentation as mi
loaded = sorted(m for m in sys.modules if m.split(".")[0] in blocked
                or (m.startswith("mallard.") and not m.startswith("mallard.instrumentation")))
errors = {}
for name, call in (("flask", lambda: mi.instrument_flask(object())),
                   ("torch", lambda: mi.training_run(object())),
                   ("torch-inference", lambda: mi.instrument_model(object()))):
    try:
        call()
    except ImportError as error:
        errors[name] = str(error)
print(json.dumps({"loaded": loaded, "errors": errors, "all": sorted(mi.__all__)}))
"""


def test_import_loads_no_optional_package_and_calls_name_the_extra() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["loaded"] == []
    assert 'pip install "mallard[flask]"' in found["errors"]["flask"]
    assert 'pip install "mallard[torch]"' in found["errors"]["torch"]
    assert 'pip install "mallard[torch]"' in found["errors"]["torch-inference"]
    expected = {"configure", "instrument_flask", "training_run", "log_prediction", "llm_span"}
    assert expected <= set(found["all"])
