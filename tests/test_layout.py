"""The modules import one another in one direction only (STYLE.md: data flows forward, no file reaches back)."""

import ast

from conftest import ROOT

ORDER = ["model", "data", "rubrics", "sample", "sft", "grpo", "eval"]  # STYLE.md's "where things live"


def project_imports(name: str) -> set[str]:
    """The project modules a module imports anywhere in it (at the top or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse((ROOT / f"{name}.py").read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module)
    return found & set(ORDER)


def test_no_module_imports_a_later_one():
    present = [m for m in ORDER if (ROOT / f"{m}.py").is_file()]
    assert {"model", "data", "rubrics", "sample", "sft", "eval"} <= set(present)
    later = {m: sorted(x for x in project_imports(m) if ORDER.index(x) >= ORDER.index(m)) for m in present}
    assert later == {m: [] for m in present}
    assert project_imports("eval") == {"model", "data", "rubrics", "sample"}  # the parser sees real imports
