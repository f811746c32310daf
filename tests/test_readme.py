"""The README's examples marked ``<!-- doctest -->`` run as written (doctest), so they cannot go stale.

They run in order in one namespace, as a reader pasting them into one session would.
"""
from __future__ import annotations

import doctest
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run_as_written():
    text = README.read_text()
    blocks = re.findall(r"<!-- doctest -->\n```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3, "README.md lost its <!-- doctest --> examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs: dict = {}
    out: list[str] = []
    for i, block in enumerate(blocks):
        line = text[: text.index(block)].count("\n")
        test = doctest.DocTestParser().get_doctest(block, globs, f"README example {i}", str(README), line)
        test.globs = globs  # one session: later examples use earlier names
        runner.run(test, out=out.append, clear_globs=False)
    assert runner.failures == 0, "".join(out)
