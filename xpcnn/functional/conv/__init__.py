"""2-D convolution by im2col + one GEMM, and its backward.

- :mod:`.geometry`: output size, padding, the windows of each kernel offset (index arithmetic only);
- :mod:`.columns`: the reference :func:`im2col` / :func:`col2im` a reader starts from, then the layouts the
  library builds (ow-innermost, channels-innermost, width-blocked, separable), workspaces and chunking;
- :mod:`.forward`, :mod:`.backward`: the drivers (chunks, worker shards); :mod:`.weight_grad`;
  :mod:`.input_grad` (col2im, the transposed and polyphase convolutions of dY) and :mod:`.banded`;
- :mod:`.planner`: the one place that decides which layout and which input-gradient algorithm run, and why
  (its docstring's tables; ``docs/convolution.md``).
"""
from __future__ import annotations

from .backward import conv2d_backward, conv2d_backward_params
from .columns import col2im, im2col
from .forward import ConvContext, conv2d, conv2d_forward
from .geometry import conv2d_geometry
from .planner import backward_algorithm

__all__ = ["ConvContext", "backward_algorithm", "col2im", "conv2d", "conv2d_backward", "conv2d_backward_params",
           "conv2d_forward", "conv2d_geometry", "im2col"]
