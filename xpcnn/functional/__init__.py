"""Pure, stateless Array-API ops: each ``op_forward`` returns ``(y, ctx)`` and ``op_backward`` takes ``ctx``.

The namespace of every op comes from its input arrays, so the same code runs
on NumPy, CuPy, array_api_strict or torch.
"""
from .activation import (dropout, dropout_backward, leaky_relu, leaky_relu_backward, log_softmax,
                         log_softmax_backward, relu, relu_backward, sigmoid, sigmoid_backward, softmax,
                         softmax_backward, tanh, tanh_backward)
from .conv import col2im, conv2d, conv2d_backward, conv2d_forward, im2col
from .linear import flatten, linear, linear_backward, linear_forward
from .loss import cross_entropy_backward, cross_entropy_forward, mse_backward, mse_forward, one_hot
from .norm import batch_norm, batch_norm_backward, batch_norm_forward
from .adaptive_pool import (adaptive_avg_pool2d, adaptive_avg_pool2d_backward, adaptive_avg_pool2d_forward,
                            adaptive_max_pool2d, adaptive_max_pool2d_backward, adaptive_max_pool2d_forward,
                            adaptive_max_pool2d_indices)
from .pool import (avg_pool2d, avg_pool2d_backward, avg_pool2d_forward, max_pool2d, max_pool2d_backward,
                   max_pool2d_forward, max_pool2d_indices)

__all__ = [name for name in dir() if not name.startswith("_")]
