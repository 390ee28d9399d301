"""Augment (random crops of zero-padded images, flips) in the DataLoader: a loop reference, seeding, exact
resume mid-epoch (also through a checkpoint), the train command's --augment, and none at evaluation."""
from __future__ import annotations

import json

import numpy as np
import pytest

import xpcnn
from xpcnn import Augment, DataLoader, Dataset, Normalizer
from xpcnn.cli import main
from xpcnn.errors import InputTypeError, InputValueError


def crop_flip_reference(images, top, left, flipped, pad):
    """One image at a time: pad with zeros, cut the window at (top, left), mirror it if flipped."""
    out = np.empty_like(images)
    b, c, h, w = images.shape
    for k in range(b):
        padded = np.zeros((c, h + 2 * pad, w + 2 * pad), images.dtype)
        padded[:, pad:pad + h, pad:pad + w] = images[k]
        window = padded[:, top[k]:top[k] + h, left[k]:left[k] + w]
        out[k] = window[:, :, ::-1] if flipped[k] else window
    return out


@pytest.mark.parametrize("pad, flip, dtype", [(4, True, np.uint8), (3, False, np.float32), (0, True, np.uint8),
                                              (1, True, np.float64)])
def test_crops_and_flips_match_a_loop_reference(rng, pad, flip, dtype):
    images = rng.integers(1, 256, (37, 3, 9, 7)).astype(dtype)  # no zeros: padding shows
    aug = Augment(crop=pad, flip=flip)
    top, left, flipped = aug.draw(np.random.default_rng(5), len(images))
    assert top.min() >= 0 and top.max() <= 2 * pad and left.max() <= 2 * pad
    assert flipped.any() == flip and (flipped.all() is not True or not flip)
    out = aug.apply(images, (top, left, flipped))
    assert out.dtype == images.dtype and out.shape == images.shape
    np.testing.assert_array_equal(out, crop_flip_reference(images, top, left, flipped, pad))
    if pad:
        assert (out == 0).any()  # some windows reach into the zero padding


def test_identity_where_offsets_are_centred_and_nothing_flips():
    images = np.arange(2 * 1 * 4 * 5, dtype=np.uint8).reshape(2, 1, 4, 5)
    aug = Augment(crop=2, flip=True)
    centred = (np.full(2, 2), np.full(2, 2), np.array([False, True]))
    out = aug.apply(images, centred)
    np.testing.assert_array_equal(out[0], images[0])
    np.testing.assert_array_equal(out[1], images[1][:, :, ::-1])


def data(n=70, seed=0):
    rng = np.random.default_rng(seed)
    return Dataset(rng.integers(0, 256, (n, 1, 6, 6), dtype=np.uint8), rng.integers(0, 3, n), 3, name="tiny")


def batches(loader, k=None):
    """The loader's next ``k`` batches (all of the epoch where None), as NumPy copies; stops without drawing more."""
    return [(np.asarray(x).copy(), np.asarray(y).copy()) for _, (x, y) in zip(range(k or len(loader)), loader)]


def test_seeded_and_independent_of_the_shuffle():
    d = data()
    norm = Normalizer.fit(d)
    make = lambda seed, aug: DataLoader(d, 16, shuffle=True, seed=seed, normalizer=norm, augment=aug)  # noqa: E731
    a = [batches(make(3, Augment(2, True))) for _ in range(2)]
    b = make(3, Augment(2, True))
    two_epochs = batches(b) + batches(b)
    for (xa, ya), (xb, yb) in zip(a[0], a[1]):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(two_epochs[:5], two_epochs[5:]))
    other = batches(make(4, Augment(2, True)))
    assert not np.array_equal(other[0][0], a[0][0][0])
    plain = batches(make(3, None))  # the same shuffle with and without augmentation
    for (_, ya), (_, yp) in zip(a[0], plain):
        np.testing.assert_array_equal(ya, yp)
    # the batch is the augmented raw images, normalised: reproduce one batch by hand
    loader = make(3, Augment(2, True))
    order = np.random.default_rng(3).permutation(len(d))
    params = Augment(2, True).draw(np.random.default_rng([3, 1]), len(d))
    raw = crop_flip_reference(d.images[order[:16]], *(p[:16] for p in params), 2)
    x0, _ = next(iter(loader))
    a_, b_ = norm.affine()
    np.testing.assert_allclose(np.asarray(x0), raw * a_ + b_, rtol=0, atol=1e-6)  # float32 rounding of values ~1


def test_resume_mid_epoch_gives_the_same_crops_and_flips():
    d = data()
    ref = DataLoader(d, 16, shuffle=True, seed=1, augment=Augment(2, True))
    full = batches(ref) + batches(ref) + batches(ref)       # 5 batches an epoch
    run = DataLoader(d, 16, shuffle=True, seed=1, augment=Augment(2, True))
    seen = batches(run) + batches(run, 3)                   # stop after 3 batches of epoch 2
    state = json.loads(json.dumps(run.state_dict()))        # as the checkpoint stores it
    assert state["augment"]["crop"] == 2 and state["position"] == 3
    again = DataLoader(d, 16, shuffle=True, seed=99, augment=Augment(2, True))
    again.load_state_dict(state)
    seen += batches(again) + batches(again)
    assert len(seen) == len(full)
    for i, ((xa, ya), (xb, yb)) in enumerate(zip(seen, full)):
        np.testing.assert_array_equal(xa, xb, err_msg=f"batch {i}")
        np.testing.assert_array_equal(ya, yb, err_msg=f"batch {i}")


def test_mismatched_augmentation_on_resume_is_a_clear_error():
    d = data()
    run = DataLoader(d, 16, shuffle=True, augment=Augment(2, True))
    batches(run, 2)
    mid = run.state_dict()
    for other in (None, Augment(1, True)):
        with pytest.raises(InputValueError, match="use the same augmentation"):
            DataLoader(d, 16, shuffle=True, augment=other).load_state_dict(mid)
    batches(run)  # the end of an epoch: another augmentation may start the next one
    DataLoader(d, 16, shuffle=True).load_state_dict(run.state_dict())


def test_bad_options_are_clear_errors():
    with pytest.raises(InputValueError, match="crop must be an int >= 0"):
        Augment(crop=-1)
    with pytest.raises(InputTypeError, match="flip must be True or False"):
        Augment(flip="yes")
    with pytest.raises(InputTypeError, match="augment must be an xpcnn.Augment"):
        DataLoader(data(), 8, augment=4)


def test_train_command_augments_training_batches_only(tmp_path, capsys):
    from xpcnn.cli.train import augmentation
    assert augmentation("cifar10", 32) == Augment(4, True) and augmentation("fashion-mnist", 28) == Augment(3, True)
    assert augmentation("digits", 8) == Augment(1, False) and augmentation("mnist", 28) == Augment(3, False)
    ck = tmp_path / "a.ckpt"
    assert main(["train", "--augment", "--epochs", "2", "--limit", "160", "--checkpoint", str(ck)]) == 0
    out = capsys.readouterr().out
    assert "augment Augment(crop=1, flip=False)" in out
    final = float(out.rsplit("test accuracy ", 1)[1].split()[0])
    meta = xpcnn.load_checkpoint(ck).meta
    assert meta["options"]["augment"] is True and meta["loader"]["augment"]["crop"] == 1
    # the reported test accuracy is that of the plain test images: `xpcnn evaluate` (no augmentation) agrees
    assert main(["evaluate", "--checkpoint", str(ck), "--limit", "160"]) == 0
    assert f"{final:.4f}" in capsys.readouterr().out
    assert main(["train", "--resume", str(ck), "--epochs", "3", "--checkpoint", str(ck), "--quiet"]) == 0
    assert xpcnn.load_checkpoint(ck).meta["loader"]["augment"]["crop"] == 1  # --resume keeps --augment
    capsys.readouterr()
    assert main(["train", "--epochs", "1", "--limit", "160", "--quiet"]) == 0  # digits: off by default
    assert "augment" not in capsys.readouterr().out


def test_fit_interrupted_mid_epoch_resumes_exactly_through_a_checkpoint(tmp_path):
    """A small residual net on augmented batches: Ctrl-C in epoch 2, checkpoint, resume; the same weights."""
    from test_fit import InterruptAt  # a Ctrl-C during the n-th loss call
    from xpcnn.training import TrainingInterrupted, fit

    d = xpcnn.load_digits()[0].subset(160)

    def setup():
        model = xpcnn.Sequential(xpcnn.Conv2d(1, 4, 3, padding=1), xpcnn.BatchNorm2d(4), xpcnn.ReLU(),
                                 xpcnn.Residual(xpcnn.Sequential(xpcnn.Conv2d(4, 8, 3, 2, 1), xpcnn.BatchNorm2d(8)),
                                                xpcnn.ZeroPadShortcut(4, 8, 2)), xpcnn.ReLU(),
                                 xpcnn.GlobalAvgPool2d(), xpcnn.Flatten(), xpcnn.Linear(8, 10), seed=2)
        loader = DataLoader(d, 32, shuffle=True, seed=2, augment=Augment(1, True))
        return model, xpcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), loader

    model, opt, loader = setup()
    fit(model, opt, xpcnn.CrossEntropyLoss(), loader, epochs=3, progress=False)
    full = {k: xpcnn.to_numpy(v) for k, v in model.state_dict().items()}
    model, opt, loader = setup()
    with pytest.raises(TrainingInterrupted) as info:
        fit(model, opt, InterruptAt(8), loader, epochs=3, progress=False)  # 5 steps an epoch: epoch 2, step 3
    assert (info.value.epoch, info.value.step) == (2, 3)
    xpcnn.save_checkpoint(tmp_path / "c", model, opt, epoch=1, loader=loader)
    model, opt, loader = setup()
    loader.augment_rng = np.random.default_rng(123)  # whatever it was: the checkpoint restores it
    ck = xpcnn.load_checkpoint(tmp_path / "c", model, opt, loader)
    fit(model, opt, xpcnn.CrossEntropyLoss(), loader, epochs=3, initial_epoch=ck.epoch, progress=False)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(xpcnn.to_numpy(v), full[k], err_msg=k)
