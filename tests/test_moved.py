"""Module paths of before the redesign (xpcnn._moved): they import, warn with the new path, and forward."""
import importlib
import sys

import pytest

import xpcnn
from xpcnn import _moved


@pytest.mark.parametrize("old, new, name", [
    ("xpcnn.train", "xpcnn.training", "cosine_schedule"),
    ("xpcnn.model", "xpcnn.sequential", "Sequential"),
    ("xpcnn.parallel", "xpcnn.threads", "step"),
    ("xpcnn.torch_compat", "xpcnn.tools.torch_compat", "to_torch"),
    ("xpcnn.parity", "xpcnn.tools.parity", "compare_models"),
    ("xpcnn.bench", "xpcnn.tools.bench", "run_benchmark"),
    ("xpcnn.opcount", "xpcnn.tools.opcount", "count_step"),
    ("xpcnn.commands.train", "xpcnn.cli.train", "add_arguments"),
])
def test_an_old_path_imports_warns_and_forwards(old, new, name, monkeypatch):
    for key in [k for k in sys.modules if _moved.new_name(k) is not None]:  # import afresh
        monkeypatch.delitem(sys.modules, key)
    with pytest.warns(DeprecationWarning, match=f"{old} has moved to {new}"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    assert name in dir(module)


def test_a_name_that_never_existed_still_fails():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("xpcnn.not_a_module")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("xpcnn.commands.not_a_command")


def test_the_readme_paths_of_before_work(monkeypatch):
    monkeypatch.delitem(sys.modules, "xpcnn.train", raising=False)
    with pytest.warns(DeprecationWarning):
        from xpcnn.train import cosine_schedule
    assert cosine_schedule is xpcnn.training.cosine_schedule


@pytest.mark.parametrize("layer, shape", [(lambda: xpcnn.Conv2d(2, 3, 3), (2, 2, 5, 5)),
                                          (lambda: xpcnn.Linear(4, 3), (2, 4))])
def test_backward_need_dx_is_input_grad(layer, shape):
    import numpy as np
    model = xpcnn.Sequential(layer(), backend="numpy", dtype="float64")
    dy = np.ones(model(np.ones(shape)).shape)
    with pytest.warns(DeprecationWarning, match=r"backward\(need_dx=...\) is now input_grad=..."):
        assert model[0].backward(dy, need_dx=False) is None
    with pytest.warns(DeprecationWarning):
        assert model[0].backward(dy, need_dx=True).shape == shape
