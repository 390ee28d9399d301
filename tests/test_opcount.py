"""xpcnn.tools.opcount: counts exactly what runs, restores array_api_strict, and a GPU-plan step has no host sync."""
from __future__ import annotations

import pytest

xp = pytest.importorskip("array_api_strict")

from xpcnn.tools import opcount  # noqa: E402


def test_counts_a_known_sequence_and_restores_the_namespace():
    ones, array_type = xp.ones, type(xp.ones(1))
    add, mt = array_type.__add__, vars(array_type)["mT"]
    with opcount.counting(xp) as c:
        a = xp.ones((2, 2), dtype=xp.float64)   # 1 op
        b = a * 2.0                             # 1 op
        s = xp.sum(b)                           # 1 op
        assert a.shape == (2, 2) and xp.isdtype(a.dtype, "real floating")  # metadata: none
        value = float(s)                        # 1 sync
    assert (c.ops, c.syncs, value) == (3, 1, 8.0)
    assert c.by_name == {"xp.ones": 1, "__mul__": 1, "xp.sum": 1, "__float__": 1}
    with opcount.counting(xp) as c:
        a = xp.zeros((2, 3))
        a[0, :] = 1.0                           # setitem: 1 op
        a += a.mT.mT                            # 2 properties + 1 in-place op
        _ = bool(a[0, 0] > 0)                   # getitem, gt: 2 ops; 1 sync
    assert (c.ops, c.syncs) == (7, 1)  # zeros, setitem, mT, mT, iadd, getitem, gt
    assert xp.ones is ones and array_type.__add__ is add and vars(array_type)["mT"] is mt
    with opcount.counting(xp) as c:
        pass
    assert c.ops == 0


def test_training_step_on_the_gpu_plan_has_no_host_sync():
    for model in ("digits-cnn", "lenet", "vgg-small", "allcnn-gap"):
        r = opcount.count_step(model, 2)
        assert r["syncs"] == 0, (model, r["syncs_by_section"])
        assert r["by_section"]["optimizer.step"] <= 6 and r["by_section"]["optimizer.zero_grad"] == 1, model
        assert r["ops"] > 100, model  # the whole step was counted


def test_count_ops_command(capsys, tmp_path):
    import json

    from xpcnn import cli
    out = tmp_path / "counts.json"
    assert cli.main(["count-ops", "--models", "digits-cnn", "--batch-sizes", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "digits-cnn" in text and "gpu plan" in text
    (row,) = json.loads(out.read_text())["results"]
    assert (row["model"], row["batch_size"], row["syncs"]) == ("digits-cnn", 2, 0)
    assert cli.main(["count-ops", "--models", "resnet"]) == 2
    assert "unknown model" in capsys.readouterr().err
