"""The recipe pages in docs/ run: every ```python block of a page, in order, in one namespace.

A page lists the optional modules it needs (skipped without them) and whether it compiles with
Inductor (a first compile takes tens of seconds on a loaded 2-core CPU: marked slow).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"

# page -> (modules it imports that are optional, slow)
PAGES = {
    "huggingface.md": (("transformers", "accelerate"), False),
    "mixup.md": ((), True),
    "compile.md": ((), True),
    "padded-vocabulary.md": ((), False),
}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_python_blocks_finds_the_blocks():
    text = "intro\n```python\na = 1\n```\n```console\n$ x\n```\n```python\nb = a\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a\n"]


@pytest.mark.parametrize("page", [
    pytest.param(name, marks=[pytest.mark.slow] if slow else [])
    for name, (_, slow) in PAGES.items()
])
def test_recipe_page_runs(page, tmp_path, monkeypatch):
    needs, _ = PAGES[page]
    for mod in needs:
        pytest.importorskip(mod)
    blocks = python_blocks((DOCS / page).read_text())
    assert blocks, f"{page} has no python blocks"
    monkeypatch.chdir(tmp_path)  # pages may write outputs (Trainer's output_dir)
    namespace: dict = {"__name__": f"docs_{page[:-3]}"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/{page} block {i + 1}", "exec"), namespace)  # noqa: S102
