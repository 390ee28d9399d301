"""``xpcnn bench``: a tiny configuration on NumPy, the JSON it writes, the plot, skipped backends."""
from __future__ import annotations

import json
import sys

import pytest

from gpu_support import HAVE_CUPY
from xpcnn.tools.bench import RESULT_KEYS, format_report, plot_report, run_benchmark
from xpcnn.cli import main

TINY = ["--models", "digits-cnn", "--batch-sizes", "2,4", "--repeats", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def tiny_report():
    return run_benchmark(["numpy", "cupy"], ["digits-cnn"], [2, 4], repeats=2, warmup=1, log=lambda m: None)


def test_results_have_the_documented_keys(tiny_report):
    rows = tiny_report["results"]
    assert [(r["backend"], r["batch_size"]) for r in rows] == [("numpy", 2), ("numpy", 4)]
    for r in rows:
        assert set(RESULT_KEYS) <= set(r)
        assert r["framework"] == "xpcnn" and r["model"] == "digits-cnn" and r["dtype"] == "float32"
        assert 0 < r["forward_ms"] and 0 < r["train_step_ms"]
        assert r["train_images_per_s"] == pytest.approx(r["batch_size"] / r["train_step_ms"] * 1e3)
        assert len(r["train_times_ms"]) == 2
        assert r["peak_memory_bytes"] > 0 and "tracemalloc" in r["peak_memory_method"]
    for key in ("cpu_count", "blas_threads", "python", "numpy", "xpcnn", "cupy", "torch"):
        assert key in tiny_report["machine"]
    assert tiny_report["config"]["repeats"] == 2


def test_layer_breakdown(tiny_report):
    (lay,) = tiny_report["layers"]
    assert (lay["backend"], lay["model"], lay["batch_size"]) == ("numpy", "digits-cnn", 4)
    names = [r["layer"] for r in lay["rows"]]
    assert names[0] == "0 Conv2d" and "SGD step" in names and "loss (forward + backward)" in names
    assert sum(r["share"] for r in lay["rows"]) == pytest.approx(1.0)
    assert all(r["forward_ms"] >= 0 and r["backward_ms"] >= 0 for r in lay["rows"])


def test_layer_breakdown_times_the_real_training_step():
    """The breakdown clocks the layers inside ``XpcnnRunner.train_step`` (the SGD steps it times change the
    weights) and leaves no clock behind on the layers, the loss or the optimizer."""
    import numpy as np

    from xpcnn.backend import get_backend
    from xpcnn.tools.bench import XpcnnRunner, layer_breakdown

    runner = XpcnnRunner(get_backend("numpy"), "digits-cnn", 4)
    before = runner.model.layers[0].weight.data.copy()
    rows = layer_breakdown(runner, warmup=0, repeats=2)
    assert [r["layer"] for r in rows[:2]] == ["0 Conv2d", "1 ReLU"] and len(rows) == len(runner.model.layers) + 2
    assert not np.array_equal(before, runner.model.layers[0].weight.data)
    for obj in [*runner.model.layers, runner.loss_fn, runner.opt]:
        assert not {"forward", "backward", "step"} & set(vars(obj))


@pytest.mark.skipif(HAVE_CUPY, reason="CuPy is usable here")
def test_unavailable_backend_is_skipped_with_a_reason(tiny_report):
    (s,) = tiny_report["skipped"]
    assert s["what"] == "backend cupy" and "cuda12" in s["reason"]
    assert "skipped backend cupy" in format_report(tiny_report)


def test_command_writes_table_json_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    assert main(["bench", "--backends", "numpy,cupy", *TINY, "--threads", "1", "--no-layers",
                 "--json", str(js), "--plot", str(png)]) == 0
    out, err = capsys.readouterr()
    assert "train ms" in out and "digits-cnn" in out
    if not HAVE_CUPY:
        assert err.count("skipping backend cupy") == 1
    report = json.loads(js.read_text())
    assert report["schema"] == "xpcnn-bench/1"
    assert set(report) >= {"machine", "config", "results", "comparisons", "layers", "skipped", "command"}
    assert report["config"]["threads"] == 1 and report["layers"] == []
    assert report["command"].startswith("xpcnn bench --backends numpy,cupy --models digits-cnn")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_torch(tmp_path):
    pytest.importorskip("torch")
    report = run_benchmark(["numpy"], ["digits-cnn"], [4], repeats=2, compare_torch=True, threads=1,
                           layers=False, log=lambda m: None)
    fw = [r["framework"] for r in report["results"]]
    assert fw == ["xpcnn", "torch"]
    assert report["results"][1]["backend"] == "torch:cpu" and report["results"][1]["paired_with"] == "numpy"
    (c,) = report["comparisons"]
    assert c["train_ratio"] > 0 and c["forward_ratio"] > 0
    assert report["machine"]["torch_threads"] == 1
    assert "xpcnn/torch" in format_report(report)


def test_compare_torch_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    report = run_benchmark(["numpy"], ["digits-cnn"], [2], repeats=1, compare_torch=True, layers=False,
                           log=lambda m: None)
    assert [r["framework"] for r in report["results"]] == ["xpcnn"]
    assert any("PyTorch is not installed" in s["reason"] for s in report["skipped"])


def test_plot_without_matplotlib_is_a_clear_message(monkeypatch, tiny_report, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_report(tiny_report, str(tmp_path / "x.png"))
    assert main(["bench", "--backends", "numpy", "--models", "digits-cnn", "--batch-sizes", "2", "--repeats", "1",
                 "--no-layers", "--plot", str(tmp_path / "x.png")]) == 0
    assert "needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(HAVE_CUPY, reason="CuPy is usable here")
def test_no_usable_backend_exits_2(capsys):
    assert main(["bench", "--backends", "cupy", *TINY]) == 2
    assert "no backend could run" in capsys.readouterr().err


def test_bad_options_exit_2(capsys):
    assert main(["bench", "--batch-sizes", "2,x"]) == 2
    assert main(["bench", "--backends", "numpy", "--models", "nosuch", "--batch-sizes", "2"]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err


def test_worker_threads_are_reported():
    pytest.importorskip("threadpoolctl", reason="--threads needs threadpoolctl")
    report = run_benchmark(["numpy"], ["digits-cnn"], [64], repeats=2, warmup=1, threads=2, layers=False,
                           log=lambda m: None)
    (row,) = report["results"]
    assert row["cpu_parallel"] == "2 threads" and row["peak_memory_bytes"] > 0
    assert "digits-cnn 64: 2 threads" in format_report(report)
