"""ViL (Vision-LSTM) blocks over token sequences and 2D/3D feature maps; see :mod:`xlstm_unet.vil.kernels`."""

from xlstm_unet.vil.kernels import *  # noqa: F401,F403
from xlstm_unet.vil.kernels import __all__, _compute_dtype  # noqa: F401
