"""The test-case tables of the parity checks: every layer type with its notable options, and every functional
op, each on small inputs (:func:`layer_cases`, :func:`op_cases`)."""
from __future__ import annotations

from typing import Any, Callable

from array_api_compat import array_namespace

from ... import functional as F
from ... import layers as L
from ...sequential import Sequential


def layer_cases() -> list[tuple[str, Callable[[], Any], tuple[int, ...]]]:
    """``(name, make_layer, input_shape)`` for every layer type and its notable options."""
    return [
        ("Conv2d", lambda: L.Conv2d(3, 4, 3), (2, 3, 7, 7)),
        ("Conv2d stride2 pad1", lambda: L.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 8, 8)),
        ("Conv2d dilation2 same", lambda: L.Conv2d(2, 3, 3, padding="same", dilation=2), (2, 2, 9, 9)),
        ("Conv2d groups2 nobias", lambda: L.Conv2d(4, 6, (3, 2), groups=2, bias=False), (2, 4, 6, 7)),
        ("Conv2d reflect", lambda: L.Conv2d(3, 4, 3, padding=(2, 1), padding_mode="reflect"), (2, 3, 7, 7)),
        ("Conv2d replicate s2", lambda: L.Conv2d(3, 4, 3, 2, 1, padding_mode="replicate"), (2, 3, 8, 8)),
        ("Conv2d circular same", lambda: L.Conv2d(2, 3, (3, 2), padding="same", padding_mode="circular"),
         (2, 2, 6, 7)),
        ("MaxPool2d", lambda: L.MaxPool2d(2), (2, 3, 8, 8)),
        ("MaxPool2d k3 s2 p1", lambda: L.MaxPool2d(3, stride=2, padding=1), (2, 3, 9, 9)),
        ("AvgPool2d k3 s2 p1", lambda: L.AvgPool2d(3, stride=2, padding=1), (2, 3, 9, 9)),
        ("MaxPool2d k3 s2 p1 d2 ceil", lambda: L.MaxPool2d(3, 2, 1, 2, ceil_mode=True), (2, 3, 10, 9)),
        ("AvgPool2d k3 s2 p1 ceil no-pad-count", lambda: L.AvgPool2d(3, 2, 1, True, False), (2, 3, 10, 9)),
        ("AvgPool2d k2 divisor 3", lambda: L.AvgPool2d(2, divisor_override=3), (2, 3, 6, 6)),
        ("AdaptiveMaxPool2d(3,None)", lambda: L.AdaptiveMaxPool2d((3, None)), (2, 3, 7, 5)),
        ("AdaptiveAvgPool2d(2,3)", lambda: L.AdaptiveAvgPool2d((2, 3)), (2, 3, 7, 8)),
        ("GlobalAvgPool2d", lambda: L.GlobalAvgPool2d(), (2, 3, 5, 5)),
        ("BatchNorm2d", lambda: L.BatchNorm2d(3), (4, 3, 5, 5)),
        ("BatchNorm1d", lambda: L.BatchNorm1d(5), (6, 5)),
        ("Linear", lambda: L.Linear(6, 4), (3, 6)),
        ("Flatten", lambda: L.Flatten(), (2, 3, 4, 4)),
        ("ReLU", lambda: L.ReLU(), (2, 3, 4, 4)),
        ("LeakyReLU", lambda: L.LeakyReLU(0.1), (2, 3, 4, 4)),
        ("Sigmoid", lambda: L.Sigmoid(), (2, 3, 4, 4)),
        ("Tanh", lambda: L.Tanh(), (2, 3, 4, 4)),
        ("Dropout", lambda: L.Dropout(0.4), (4, 3, 4, 4)),
        ("ZeroPadShortcut", lambda: L.ZeroPadShortcut(2, 4, 2), (2, 2, 5, 5)),
        ("Residual", lambda: L.Residual(_block_body(3, 1)), (2, 3, 5, 5)),
        ("Residual option A", lambda: L.Residual(_block_body(2, 2), L.ZeroPadShortcut(2, 4, 2)), (2, 2, 5, 5)),
        ("Residual conv shortcut", lambda: L.Residual(_block_body(2, 2), _conv_shortcut(2, 2)), (2, 2, 5, 5)),
    ]


def _block_body(c: int, stride: int):
    out = c * stride
    return Sequential(L.Conv2d(c, out, 3, stride, 1, bias=False), L.BatchNorm2d(out), L.ReLU(),
                      L.Conv2d(out, out, 3, 1, 1, bias=False), L.BatchNorm2d(out))


def _conv_shortcut(c: int, stride: int):
    return Sequential(L.Conv2d(c, c * stride, 1, stride, bias=False), L.BatchNorm2d(c * stride))


def op_cases():
    """``(name, input_shapes, run)``: ``run(*arrays)`` returns a dict of named result arrays.

    Inputs are float host arrays moved to each backend; integer inputs (labels)
    and boolean masks are derived inside ``run`` from float inputs so that both
    backends see the same values.
    """
    def conv(stride=1, padding=0, dilation=1, groups=1):
        def run(x, w, b, dy):
            y, ctx = F.conv2d_forward(x, w, b, stride, padding, dilation, groups)
            dx, dw, db = F.conv2d_backward(dy, ctx)
            return {"y": y, "dx": dx, "dw": dw, "db": db}
        return run

    def conv_shapes(n, c, h, w, f, cg, kh, kw, oh, ow):
        return [(n, c, h, w), (f, cg, kh, kw), (f,), (n, f, oh, ow)]

    def pool(fwd, bwd, k, s, p):
        def run(x, dy):
            y, ctx = fwd(x, k, s, p)
            return {"y": y, "dx": bwd(dy, ctx)}
        return run

    def adaptive(out):
        def run(x, dy):
            y, ctx = F.adaptive_avg_pool2d_forward(x, out)
            return {"y": y, "dx": F.adaptive_avg_pool2d_backward(dy, ctx)}
        return run

    def bn(training):
        def run(x, w, b, rm, rv, dy):
            rv = rv * rv + 0.5  # positive variances
            y, nm, nv, ctx = F.batch_norm_forward(x, w, b, rm, rv, training, 0.1, 1e-5)
            dx, dw, db = F.batch_norm_backward(dy, ctx)
            return {"y": y, "running_mean": nm, "running_var": nv, "dx": dx, "dw": dw, "db": db}
        return run

    def lin(x, w, b, dy):
        y, ctx = F.linear_forward(x, w, b)
        dx, dw, db = F.linear_backward(dy, ctx)
        return {"y": y, "dx": dx, "dw": dw, "db": db}

    def unary(fwd, bwd, saves_output=True):
        def run(x, dy):
            y = fwd(x)
            return {"y": y, "dx": bwd(dy, y if saves_output else x)}
        return run

    def leaky(x, dy):
        return {"y": F.leaky_relu(x, 0.1), "dx": F.leaky_relu_backward(dy, x, 0.1)}

    def dropout(x, u, dy):
        keep = u >= 0.0  # u is standard normal: about half kept
        return {"y": F.dropout(x, 0.5, keep), "dx": F.dropout_backward(dy, 0.5, keep)}

    def cross_entropy(logits, u):
        xp = array_namespace(logits)
        labels = xp.astype(xp.argmax(u, axis=1), xp.int64 if hasattr(xp, "int64") else xp.int32)
        loss, ctx = F.cross_entropy_forward(logits, labels)
        return {"loss": loss, "dlogits": F.cross_entropy_backward(ctx, 1.0)}

    def mse(pred, target):
        loss, ctx = F.mse_forward(pred, target)
        return {"loss": loss, "dpred": F.mse_backward(ctx, 1.0)}

    def im2col_col2im(x):
        col = F.im2col(x, 3, 2, (2, 1), (1, 2), 3, 4)
        return {"col": col, "col2im": F.col2im(col, tuple(x.shape), (2, 1), (1, 2))}

    return [
        ("conv2d", conv_shapes(2, 3, 7, 7, 4, 3, 3, 3, 5, 5), conv()),
        ("conv2d stride=2 padding=1", conv_shapes(2, 3, 8, 8, 4, 3, 3, 3, 4, 4), conv(2, 1)),
        ("conv2d dilation=2 padding=same", conv_shapes(2, 2, 9, 9, 3, 2, 3, 3, 9, 9), conv(1, "same", 2)),
        ("conv2d groups=2 kernel=(3,2)", conv_shapes(2, 4, 6, 7, 6, 2, 3, 2, 4, 6), conv(groups=2)),
        ("conv2d 1x1", conv_shapes(2, 5, 4, 4, 3, 5, 1, 1, 4, 4), conv()),
        ("im2col/col2im", [(2, 3, 7, 7)], im2col_col2im),
        ("max_pool2d k2", [(2, 3, 8, 8), (2, 3, 4, 4)], pool(F.max_pool2d_forward, F.max_pool2d_backward, 2, 2, 0)),
        ("max_pool2d k3 s2 p1", [(2, 3, 9, 9), (2, 3, 5, 5)],
         pool(F.max_pool2d_forward, F.max_pool2d_backward, 3, 2, 1)),
        ("avg_pool2d k3 s2 p1", [(2, 3, 9, 9), (2, 3, 5, 5)],
         pool(F.avg_pool2d_forward, F.avg_pool2d_backward, 3, 2, 1)),
        ("adaptive_avg_pool2d 1", [(2, 3, 5, 6), (2, 3, 1, 1)], adaptive(1)),
        ("adaptive_avg_pool2d (2,3)", [(2, 3, 7, 8), (2, 3, 2, 3)], adaptive((2, 3))),
        ("batch_norm 4-D train", [(4, 3, 5, 5), (3,), (3,), (3,), (3,), (4, 3, 5, 5)], bn(True)),
        ("batch_norm 2-D train", [(6, 5), (5,), (5,), (5,), (5,), (6, 5)], bn(True)),
        ("batch_norm 4-D eval", [(4, 3, 5, 5), (3,), (3,), (3,), (3,), (4, 3, 5, 5)], bn(False)),
        ("linear", [(3, 6), (4, 6), (4,), (3, 4)], lin),
        ("relu", [(2, 3, 4, 4)] * 2, unary(F.relu, F.relu_backward)),
        ("leaky_relu", [(2, 3, 4, 4)] * 2, leaky),
        ("sigmoid", [(2, 3, 4, 4)] * 2, unary(F.sigmoid, F.sigmoid_backward)),
        ("tanh", [(2, 3, 4, 4)] * 2, unary(F.tanh, F.tanh_backward)),
        ("softmax", [(3, 7)] * 2, unary(F.softmax, F.softmax_backward)),
        ("log_softmax", [(3, 7)] * 2, unary(F.log_softmax, F.log_softmax_backward)),
        ("dropout", [(2, 3, 4, 4)] * 3, dropout),
        ("cross_entropy", [(5, 7), (5, 7)], cross_entropy),
        ("mse", [(4, 3), (4, 3)], mse),
        ("flatten", [(2, 3, 4, 4)], lambda x: {"y": F.flatten(x)}),
    ]
