"""xlstm_unet: xLSTM-UNet (Chen et al., arXiv 2407.01530) on nnU-Net v2.

A U-Net whose encoder carries Vision-LSTM (ViL / mLSTM) blocks, for 2D and 3D medical image segmentation,
with a linear-time chunkwise mLSTM (``mlstm_kernels``) so that ViL fits at every encoder stage, on CPU or GPU.

Sub-modules (imports point one way: cli -> experiment -> {nnunet, datasets, metrics}; nnunet -> {networks,
baselines}; networks -> vil):

- :mod:`xlstm_unet.vil`       ViL blocks over token sequences and N-d feature maps
- :mod:`xlstm_unet.networks`  ``XLSTMUNet`` (2D/3D through ``conv_op``), Bot / Enc / official placements
- :mod:`xlstm_unet.datasets`  converters to nnU-Net raw format, and the synthetic phantom
- :mod:`xlstm_unet.metrics`   DSC, NSD, HD95, cell F1, BraTS regions, paired statistics
- :mod:`xlstm_unet.nnunet`    nnU-Net trainers and the Python API (prepare / train / predict)
"""

__version__ = "0.1.0"
