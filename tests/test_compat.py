"""The torchvision compatibility shim, each case in a fresh interpreter (imports are process-global)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _run(code: str, *, path: str | None = None) -> subprocess.CompletedProcess:
    env = None
    if path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": path + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_working_torchvision_is_left_alone(tmp_path):
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = 'fake-working'\n")
    proc = _run("""
        from sjalign import compat
        tv = compat.import_torchvision()
        assert tv.__version__ == 'fake-working', tv.__version__
        assert compat.patched is False and compat._library is None
    """, path=str(tmp_path))
    assert proc.returncode == 0, proc.stderr


def test_nms_error_is_repaired(tmp_path):
    fake = tmp_path / "torchvision"
    fake.mkdir()
    # a torchvision whose import fails exactly like the CUDA build on CPU torch, unless the schema exists
    (fake / "__init__.py").write_text(textwrap.dedent("""
        import torch
        try:
            torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        except RuntimeError:
            raise RuntimeError("operator torchvision::nms does not exist")
        __version__ = "fake-repaired"
    """))
    proc = _run("""
        from sjalign import compat
        tv = compat.import_torchvision()
        assert tv.__version__ == 'fake-repaired'
        assert compat.patched is True
        compat.import_torchvision()  # idempotent
    """, path=str(tmp_path))
    assert proc.returncode == 0, proc.stderr


def test_other_errors_are_not_swallowed(tmp_path):
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('something else broke')\n")
    proc = _run("""
        from sjalign import compat
        try:
            compat.import_torchvision()
        except RuntimeError as exc:
            assert 'something else' in str(exc)
        else:
            raise SystemExit('no error')
    """, path=str(tmp_path))
    assert proc.returncode == 0, proc.stderr


def test_real_timm_and_transformers_import():
    import importlib.util

    if importlib.util.find_spec("timm") is None:  # importing it here would hit the very error under test
        pytest.skip("timm not installed")
    proc = _run("""
        from sjalign import compat
        timm = compat.import_timm()
        transformers = compat.import_transformers()
        from transformers import IJepaModel
        m = timm.create_model('resnet10t', pretrained=False, num_classes=0)
        print(m.num_features)
    """)
    assert proc.returncode == 0, proc.stderr
