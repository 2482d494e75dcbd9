"""protos/: buf lints them, and a change that would break ltrr.v1's wire or generated code is caught
against the compatibility image (protos/compat/ltrr-v1.json, ltrr.v1 as released)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
IMAGE = ROOT / "protos" / "compat" / "ltrr-v1.json"

pytestmark = pytest.mark.skipif(not BUF.exists(), reason="buf not installed (cd tools/buf && npm ci; CI does)")


def _buf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_protos_pass_lint_and_keep_compatibility() -> None:
    lint = _buf("lint", cwd=ROOT / "protos")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    breaking = _buf("breaking", "--against", str(IMAGE), cwd=ROOT / "protos")
    assert breaking.returncode == 0, breaking.stdout + breaking.stderr


@pytest.mark.parametrize(("old", "new", "says"), [
    ("  string user_id = 4;\n", "  reserved 4;\n", "user_id"),                       # a field removed
    ("  uint32 page_size = 5;\n", "  uint32 page_size = 12;\n", "page_size"),       # a field renumbered
    ("  PAGE_ORDER_POPULARITY = 3;\n", "", "enum value \"3\""),                   # an enum value removed
    ("  string model = 11;\n", "  string ranker_model = 11;\n", "model"),          # a field renamed
], ids=["field removed", "field renumbered", "enum value removed", "field renamed"])
def test_a_breaking_change_is_caught(tmp_path: Path, old: str, new: str, says: str) -> None:
    copy = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", copy)
    search = copy / "ltrr" / "v1" / "search.proto"
    text = search.read_text()
    assert old in text
    search.write_text(text.replace(old, new, 1))
    out = _buf("breaking", "--against", str(IMAGE), cwd=copy)
    assert out.returncode != 0 and says in out.stdout + out.stderr, out.stdout + out.stderr
