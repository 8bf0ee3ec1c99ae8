"""The worked examples in the modules' docstrings are run and must print what they show."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name,least", [("data", 4), ("eval", 6), ("rubrics", 7), ("sft", 1), ("model", 1), ("sample", 1)])
def test_docstring_examples(name, least):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0
    assert result.attempted >= least  # the examples are there and ran
