"""Input checked where it enters: hyperparameters, CLI options, empty data; the CLI prints the user's errors as
one line (exit 2) and lets a bug show its traceback."""
import math

import pytest

import xpcnn
from xpcnn.cli import main
from xpcnn.errors import InputError
from xpcnn.training import evaluate, fit


def params():
    return xpcnn.Sequential(xpcnn.Linear(3, 2), seed=0).parameters()


@pytest.mark.parametrize("make, name", [
    (lambda: xpcnn.optim.SGD(params(), lr=math.inf), "lr"),
    (lambda: xpcnn.optim.SGD(params(), lr=-1.0), "lr"),
    (lambda: xpcnn.optim.SGD(params(), lr=0.1, momentum=math.nan), "momentum"),
    (lambda: xpcnn.optim.SGD(params(), lr=0.1, weight_decay=math.nan), "weight_decay"),
    (lambda: xpcnn.optim.SGD(params(), lr=0.1, momentum=0.9, dampening=math.inf), "dampening"),
    (lambda: xpcnn.optim.Adam(params(), betas=(0.9, math.nan)), r"betas\[1\]"),
    (lambda: xpcnn.optim.Adam(params(), betas=(1.0, 0.999)), r"betas\[0\]"),
    (lambda: xpcnn.optim.AdamW(params(), eps=-1e-8), "eps"),
    (lambda: xpcnn.optim.AdamW(params(), lr=math.nan), "lr"),
])
def test_optimizers_refuse_non_finite_or_out_of_range_hyperparameters(make, name):
    with pytest.raises(ValueError, match=rf"{name} must be a finite number"):
        make()


def test_optimizers_take_numpy_numbers_and_refuse_other_types():
    import numpy as np
    assert xpcnn.optim.SGD(params(), lr=np.float32(0.5), momentum=np.int64(0)).lr == 0.5
    with pytest.raises(TypeError, match="lr must be a number"):
        xpcnn.optim.SGD(params(), lr="0.1")


def one_line(capsys, *argv, match):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own errors exit from inside main
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err


@pytest.mark.parametrize("argv, match", [
    (["train", "--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
    (["train", "--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (["train", "--weight-decay", "nan"], "argument --weight-decay: must be a finite number >= 0, got nan"),
    (["train", "--seed", "-1"], "argument --seed: must be in 0 .. 9223372036854775807, got -1"),
    (["train", "--epochs", "abc"], "argument --epochs: expected an integer, got 'abc'"),
    (["train", "--threads", "-2"], "argument --threads: must be >= 0, got -2"),
    (["parity", "--rtol", "-1"], "argument --rtol: must be a finite number >= 0, got -1"),
    (["parity", "--rtol", "nan"], "argument --rtol: must be a finite number >= 0, got nan"),
    (["parity", "--batch-size", "1"], "argument --batch-size: must be >= 2, got 1"),
    (["bench", "--seed", "-1"], "argument --seed: must be in 0 .. 9223372036854775807, got -1"),
    (["bench", "--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
    (["bench", "--layers-batch", "0"], "argument --layers-batch: must be >= 1, got 0"),
    (["predict", "--checkpoint", "c", "x.npy", "--top", "0"], "argument --top: must be >= 1, got 0"),
    (["evaluate", "--checkpoint", "c", "--batch-size", "-3"], "argument --batch-size: must be >= 1, got -3"),
    (["train", "--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_cli_options_are_checked_and_named(capsys, argv, match):
    one_line(capsys, *argv, match=match)


def test_nan_stop_without_checkpoint_says_nothing_was_saved(capsys):
    one_line(capsys, "train", "--epochs", "2", "--limit", "64", "--quiet", "--lr", "1e30",
             match="nothing saved (no --checkpoint)")


def test_fit_on_no_data_raises_like_evaluate():
    model = xpcnn.Sequential(xpcnn.Linear(3, 2), seed=0)
    opt = xpcnn.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no batch"):
        fit(model, opt, xpcnn.CrossEntropyLoss(), [], epochs=1, progress=False)
    with pytest.raises(ValueError, match="no data"):
        evaluate(model, xpcnn.CrossEntropyLoss(), [])


def test_a_bug_keeps_its_traceback_and_debug_shows_every_one(capsys, monkeypatch):
    """Only the project's input errors (and OSError) become one line; a ValueError from a bug propagates."""
    import xpcnn.cli.info as info

    def bug(args):
        raise ValueError("operands could not be broadcast together")
    monkeypatch.setattr(info, "run", bug)
    with pytest.raises(ValueError, match="broadcast"):
        main(["info"])

    def user_error(args):
        raise xpcnn.errors.InputValueError("a bad file")
    monkeypatch.setattr(info, "run", user_error)
    assert main(["info"]) == 2 and "xpcnn info: error: a bad file" in capsys.readouterr().err
    with pytest.raises(InputError, match="a bad file"):
        main(["--debug", "info"])


def test_an_os_error_names_its_file(capsys, monkeypatch):
    import errno
    import xpcnn.cli.info as info

    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run.ckpt")
    monkeypatch.setattr(info, "run", full_disk)
    assert main(["info"]) == 2
    assert "error: /data/run.ckpt: No space left on device" in capsys.readouterr().err


def test_a_hand_edited_checkpoint_option_is_named(tmp_path, capsys):
    import json
    from safetensors import safe_open
    from safetensors.numpy import save_file
    ck = tmp_path / "c.ckpt"
    assert main(["train", "--epochs", "1", "--limit", "64", "--quiet", "--checkpoint", str(ck)]) == 0
    with safe_open(str(ck), "np") as f:
        tensors, header = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    meta = json.loads(header["xpcnn"])
    for key, bad in (("lr", "fast"), ("epochs", 2.5), ("seed", -4), ("dataset", 7)):
        edited = dict(meta, options=dict(meta["options"], **{key: bad}))
        save_file(tensors, str(ck), metadata=dict(header, xpcnn=json.dumps(edited)))
        one_line(capsys, "train", "--resume", str(ck), "--epochs", "3", match=f"saved option {key!r}")
