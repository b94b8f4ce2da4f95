"""examples/python: the ctypes example runs against the library (no extension involved)."""
import ctypes
import importlib.util
import os
import subprocess
import sys

import pytest

import pagedkv
from pagedkv import _C

from conftest import repo_root

EXAMPLE = os.path.join(repo_root(), "examples", "python", "ctypes_write.py")
pytestmark = pytest.mark.skipif(not os.path.exists(EXAMPLE), reason="examples/python not found")


def _libraries():
    libs = [pytest.param(pagedkv.library_path(), id="bundled")]
    if os.environ.get("PAGEDKV_LIBRARY"):
        libs.append(pytest.param(os.environ["PAGEDKV_LIBRARY"], id="PAGEDKV_LIBRARY"))
    return libs


@pytest.mark.parametrize("library", _libraries())
def test_ctypes_example_runs(library):
    env = dict(os.environ, PAGEDKV_LIBRARY=library)
    r = subprocess.run([sys.executable, EXAMPLE], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ctypes_write: OK" in r.stdout
    assert "PKV_ERROR_INVALID_ARGUMENT" in r.stdout


def test_ctypes_structs_match_the_c_side():
    spec = importlib.util.spec_from_file_location("ctypes_write", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert ctypes.sizeof(mod.CacheView) == _C.SIZEOF_CACHE_VIEW
    assert ctypes.sizeof(mod.Tensor) == _C.SIZEOF_TENSOR
