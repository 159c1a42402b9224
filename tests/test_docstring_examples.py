"""Every docstring example in lowrank_jax runs and prints what it says (8 fake CPU devices, from conftest)."""

import doctest
import importlib
import importlib.util
import pathlib
import pkgutil

import jax
import pytest

import lowrank_jax



def has_examples(name: str) -> bool:
    lines = pathlib.Path(importlib.util.find_spec(name).origin).read_text().splitlines()
    return any(">>>" in line and "doctest: +SKIP" not in line for line in lines)


MODULES = sorted(m.name for m in pkgutil.walk_packages(lowrank_jax.__path__, "lowrank_jax.") if has_examples(m.name))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    results = doctest.testmod(importlib.import_module(name), extraglobs={"jnp": jax.numpy},
                              optionflags=doctest.ELLIPSIS)
    assert results.failed == 0 and results.attempted > 0
