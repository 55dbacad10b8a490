"""ViL (Vision-LSTM) over token sequences and 1D/2D/3D feature maps, with a linear-time mLSTM.

- :mod:`xlstm_unet.vil.kernels`: the mLSTM sequence map :func:`mlstm` and its backends (parallel reference,
  chunkwise, triton);
- :mod:`xlstm_unet.vil.layers`: :class:`MLSTMCell`, :class:`ViLLayer` (whose reference path reads as the paper's
  steps), :class:`ViLBlock` and :class:`ViLStage`;
- :mod:`xlstm_unet.vil.fast`: the fast path of layer and block (``fast_path=True``, the default), equal to the
  reference path to rounding.

The layers call ``xlstm_unet.vil.mlstm`` through this package at run time, so that a benchmark can swap it.
"""

from xlstm_unet.vil.kernels import MLSTMBackend, MLSTMState, _compute_dtype, mlstm  # noqa: F401
from xlstm_unet.vil.layers import Direction, MLSTMCell, ViLBlock, ViLLayer, ViLStage

__all__ = ["mlstm", "MLSTMCell", "ViLLayer", "ViLBlock", "ViLStage", "Direction", "MLSTMBackend", "MLSTMState"]
