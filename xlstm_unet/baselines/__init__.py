"""Baseline networks of the paper's comparison tables, as plain PyTorch modules (no nnU-Net training code).

The xLSTM-UNet paper (arXiv 2407.01530, section 3.3) compares against the baselines of U-Mamba (2D, Table 1) and
SegMamba (3D, Tables 2 and 3). This package builds them; :mod:`xlstm_unet.nnunet.baseline_trainers` trains them with
nnU-Net, so that every method shares the data, the patch size, the loss, the recipe and the budget.

- :mod:`~xlstm_unet.baselines.monai_nets`: the MONAI networks (SegResNet, UNETR, SwinUNETR(-V2), MedNeXt) and the
  patch-size helpers (:func:`patch_divisor`, :func:`round_up_patch_size`).
- :mod:`~xlstm_unet.baselines.umamba`: U-Mamba Bot / Enc and the :class:`MambaLayer` (two interchangeable backends).
- written from their papers, on the interface of :class:`~xlstm_unet.baselines.blocks.PaperBaseline`:
  :class:`UXNet` (3D UX-Net, :mod:`~xlstm_unet.baselines.uxnet`), :class:`SegMamba`
  (:mod:`~xlstm_unet.baselines.segmamba`) and :class:`SegFormer3D` (:mod:`~xlstm_unet.baselines.segformer3d`).

The networks and helpers are importable from here (``from xlstm_unet.baselines import UMambaUNet``); the blocks they
are made of, from their modules.
"""

from xlstm_unet.baselines.blocks import PaperBaseline
from xlstm_unet.baselines.monai_nets import (
    MONAI_DEFAULTS,
    MonaiNetwork,
    build_monai_network,
    patch_divisor,
    round_up_patch_size,
)
from xlstm_unet.baselines.umamba import (
    MAMBA_PARAMETER_NAMES,
    MambaBackend,
    MambaLayer,
    MambaPlacement,
    ResidualMambaStage,
    UMambaUNet,
    convert_mamba_state_dict,
    mamba_parameter_shapes,
    mamba_ssm_available,
    mamba_stage_indices,
    resolve_mamba_backend,
)
from xlstm_unet.baselines.segformer3d import SegFormer3D
from xlstm_unet.baselines.segmamba import SegMamba
from xlstm_unet.baselines.uxnet import UXNet

__all__ = [
    "MonaiNetwork",
    "MONAI_DEFAULTS",
    "patch_divisor",
    "round_up_patch_size",
    "build_monai_network",
    "MambaBackend",
    "MAMBA_PARAMETER_NAMES",
    "mamba_parameter_shapes",
    "mamba_ssm_available",
    "resolve_mamba_backend",
    "convert_mamba_state_dict",
    "MambaLayer",
    "MambaPlacement",
    "mamba_stage_indices",
    "ResidualMambaStage",
    "UMambaUNet",
    "PaperBaseline",
    "UXNet",
    "SegMamba",
    "SegFormer3D",
]
