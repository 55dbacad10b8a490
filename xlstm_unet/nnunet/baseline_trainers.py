"""nnU-Net v2 trainers for the baselines of the paper's tables (networks in :mod:`xlstm_unet.baselines`).

Every trainer derives from :class:`~xlstm_unet.nnunet.trainers.nnUNetTrainerRecipe`, so the baselines share the
data pipeline, the loss (nnU-Net's Dice + CE), the recipe and the budget with xLSTM-UNet; only the network differs.
They are found by nnU-Net's CLI through ``nnUNet_extTrainer`` (``xlstm-unet env``), variants by name included
(``nnUNetTrainerSwinUNETR_official_5ep_10it``), see :mod:`xlstm_unet.nnunet.variants`.

======================== ============================== ===============================================================
trainer                  network                        deviation from nnU-Net's default trainer
======================== ============================== ===============================================================
nnUNetTrainerSegResNet   MONAI SegResNet (32 filters)   no deep supervision; patch rounded up to a multiple of 8
nnUNetTrainerUNETR       MONAI UNETR (ViT-B/16)         no deep supervision; patch rounded up to a multiple of 16
nnUNetTrainerSwinUNETR   MONAI SwinUNETR (feature 48)   no deep supervision; patch rounded up to a multiple of 32
nnUNetTrainerSwinUNETRv2 MONAI SwinUNETR ``use_v2``     no deep supervision; patch rounded up to a multiple of 32
nnUNetTrainerMedNeXt     MONAI MedNeXt B, kernel 3      no deep supervision; patch rounded up to a multiple of 16
nnUNetTrainerUMambaBot   :class:`UMambaUNet` ``bot``    none (the plans' U-Net, Mamba layer at the bottleneck)
nnUNetTrainerUMambaEnc   :class:`UMambaUNet` ``enc``    none (Mamba layer in every encoder stage)
nnUNetTrainerUXNet       :class:`UXNet` (3D UX-Net)     no deep supervision; patch rounded up to a multiple of 16
nnUNetTrainerSegMamba    :class:`SegMamba`              no deep supervision; patch rounded up to a multiple of 16
nnUNetTrainerSegFormer3D :class:`SegFormer3D`           no deep supervision; patch rounded up to a multiple of 32
======================== ============================== ===============================================================

UX-Net, SegMamba and SegFormer3D are written from their papers (:mod:`xlstm_unet.baselines`), at the papers' sizes.

Patch size adaptation (MONAI networks and the networks written from papers, :class:`PatchAdaptedTrainer`): the
trainer rounds the configuration's patch size up to the network's divisor (:func:`adapt_plans_patch_size`) in
``__init__``, on its own copy of the plans, before nnU-Net's trainer sees them. nnU-Net then trains on the adapted
patch (the data loader pads where cases are smaller), copies these plans to ``plans.json`` in the results folder and
stores them in the checkpoints' ``init_args``; its predictor reads ``plans.json``, so sliding-window inference uses
the same adapted patch. The adaptation is idempotent, so ``--c`` (continue) and prediction rebuild the same network.
The original patch is logged and recorded in ``run_config.json`` (``network.patch_size_plans``).

Deep supervision (the same networks): they return one output, so the trainer sets ``enable_deep_supervision = False``
in ``__init__`` (nnU-Net then builds the plain Dice + CE loss and the data loader produces full-resolution targets
only) and makes ``set_deep_supervision_enabled`` a no-op (nnU-Net's version sets ``network.decoder.deep_supervision``,
which these networks lack). U-Mamba keeps nnU-Net's deep supervision.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from xlstm_unet.baselines import (
    MONAI_DEFAULTS,
    MambaPlacement,
    MonaiNetwork,
    PaperBaseline,
    SegFormer3D,
    SegMamba,
    UXNet,
    build_monai_network,
    patch_divisor,
    round_up_patch_size,
)
from xlstm_unet.nnunet.trainers import nnUNetTrainerRecipe

__all__ = [
    "adapt_plans_patch_size",
    "PatchAdaptedTrainer",
    "MonaiBaselineTrainer",
    "PaperBaselineTrainer",
    "UMambaTrainer",
    "nnUNetTrainerSegResNet",
    "nnUNetTrainerUNETR",
    "nnUNetTrainerSwinUNETR",
    "nnUNetTrainerSwinUNETRv2",
    "nnUNetTrainerMedNeXt",
    "nnUNetTrainerUMambaBot",
    "nnUNetTrainerUMambaEnc",
    "nnUNetTrainerUXNet",
    "nnUNetTrainerSegMamba",
    "nnUNetTrainerSegFormer3D",
]


def adapt_plans_patch_size(plans: dict, configuration: str, divisor: int) -> tuple[dict, tuple[int, ...]]:
    """A copy of nnU-Net ``plans`` whose ``configuration`` has its patch size rounded up to multiples of ``divisor``.

    Inherited configurations (``inherits_from``) are resolved first; the adapted patch is written into the named
    configuration itself, which overrides the inherited value. ``plans`` is not modified.

    Returns:
        ``(new_plans, original_patch_size)``; ``new_plans`` is a deep copy even when nothing changes.

    Raises:
        ValueError: ``configuration`` is not in the plans.
    """
    if configuration not in plans.get("configurations", {}):
        raise ValueError(f"configuration {configuration!r} is not in the plans "
                         f"(available: {sorted(plans.get('configurations', {}))})")
    new_plans = copy.deepcopy(plans)
    original = tuple(int(p) for p in PlansManager(copy.deepcopy(plans)).get_configuration(configuration).patch_size)
    new_plans["configurations"][configuration]["patch_size"] = list(round_up_patch_size(original, divisor))
    return new_plans, original


class PatchAdaptedTrainer(nnUNetTrainerRecipe):
    """Base of the trainers whose network has one output and needs every patch axis divisible by a number.

    Subclasses give :meth:`patch_divisor`, :meth:`network_label`, :meth:`network_config` and
    ``build_network_architecture``. See the module docstring for the patch size adaptation and deep supervision.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        adapted, original = adapt_plans_patch_size(plans, configuration, self.patch_divisor())
        super().__init__(adapted, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.patch_size_plans: tuple[int, ...] = original
        patch = tuple(self.configuration_manager.patch_size)
        if patch != original:
            self.print_to_log_file(
                f"{self.network_label()} needs patch axes divisible by {self.patch_divisor()}: patch size "
                f"{list(original)} of the plans rounded up to {list(patch)} (used for training and inference).")

    @classmethod
    def plans_for_network(cls, plans: dict, configuration: str) -> dict:
        return adapt_plans_patch_size(plans, configuration, cls.patch_divisor())[0]

    @classmethod
    def patch_divisor(cls) -> int:
        """The number each patch axis must be divisible by."""
        raise NotImplementedError

    @classmethod
    def network_label(cls) -> str:
        """The network's name in logs and in ``run_config.json``."""
        raise NotImplementedError

    @classmethod
    def network_config(cls) -> dict[str, Any]:
        """The network's keyword arguments (besides the data's channels, dimensions and patch)."""
        raise NotImplementedError

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """No-op: these networks have no deep supervision outputs."""

    def network_description(self) -> dict:
        return {"class": self.network_label(), "kwargs": self.network_config(), "deep_supervision": False,
                "patch_size_plans": list(self.patch_size_plans),
                "patch_size": list(self.configuration_manager.patch_size)}


class MonaiBaselineTrainer(PatchAdaptedTrainer):
    """Base of the MONAI baseline trainers: network ``network_name`` with ``network_kwargs`` over the defaults.

    Subclasses set ``network_name`` (a :class:`~xlstm_unet.baselines.MonaiNetwork`) and optionally
    ``network_kwargs`` (overrides of :data:`~xlstm_unet.baselines.MONAI_DEFAULTS`, e.g. a smaller size).
    """

    network_name: ClassVar[MonaiNetwork]
    network_kwargs: ClassVar[dict[str, Any]] = {}

    @classmethod
    def patch_divisor(cls) -> int:
        """See :func:`xlstm_unet.baselines.patch_divisor`."""
        return patch_divisor(cls.network_name, cls.network_kwargs)

    @classmethod
    def network_label(cls) -> str:
        return f"monai:{cls.network_name.value}"

    @classmethod
    def network_config(cls) -> dict[str, Any]:
        kwargs = dict(MONAI_DEFAULTS[cls.network_name])
        kwargs.update(cls.network_kwargs)
        return kwargs

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """The MONAI network for the configuration's (adapted) patch size; ``enable_deep_supervision`` is ignored
        (the network has one output). Raises ValueError if the patch size is not divisible (plans not adapted)."""
        patch = tuple(configuration_manager.patch_size)
        return build_monai_network(cls.network_name, spatial_dims=len(patch), in_channels=num_input_channels,
                                   out_channels=num_output_channels, patch_size=patch,
                                   overrides=dict(cls.network_kwargs))


class nnUNetTrainerSegResNet(MonaiBaselineTrainer):
    """SegResNet (MONAI), 32 initial filters."""

    network_name = MonaiNetwork.SEGRESNET


class nnUNetTrainerUNETR(MonaiBaselineTrainer):
    """UNETR (MONAI), ViT-B/16 encoder; the network is built for exactly the (adapted) patch size."""

    network_name = MonaiNetwork.UNETR


class nnUNetTrainerSwinUNETR(MonaiBaselineTrainer):
    """SwinUNETR (MONAI), feature size 48."""

    network_name = MonaiNetwork.SWINUNETR


class nnUNetTrainerSwinUNETRv2(MonaiBaselineTrainer):
    """SwinUNETR-V2 (MONAI ``use_v2=True``: a residual conv block before each Swin stage), feature size 48."""

    network_name = MonaiNetwork.SWINUNETR_V2


class nnUNetTrainerMedNeXt(MonaiBaselineTrainer):
    """MedNeXt (MONAI ``create_mednext``), variant B, kernel size 3."""

    network_name = MonaiNetwork.MEDNEXT


class UMambaTrainer(nnUNetTrainerRecipe):
    """Base of the U-Mamba trainers: :class:`~xlstm_unet.baselines.UMambaUNet` on the plans' stage layout.

    The plans' own architecture kwargs (PlainConvUNet's or ResidualEncoderUNet's) give the stages, as for
    :class:`~xlstm_unet.nnunet.trainers.nnUNetTrainerXLSTM`; the configuration's patch size is passed in for U-Mamba
    Enc's channel-token rule. Deep supervision as in nnU-Net.
    """

    mamba_placement: ClassVar[MambaPlacement] = MambaPlacement.BOT
    mamba_kwargs: ClassVar[dict[str, Any]] = {}
    network_class_name: ClassVar[str] = "xlstm_unet.baselines.UMambaUNet"

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        arch_kwargs = dict(configuration_manager.network_arch_init_kwargs)
        arch_kwargs.update(mamba_placement=cls.mamba_placement.value, mamba_kwargs=dict(cls.mamba_kwargs),
                           patch_size=list(configuration_manager.patch_size))
        return get_network_from_plans(
            cls.network_class_name, arch_kwargs, configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels, num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)

    def network_description(self) -> dict:
        return {"class": self.network_class_name, "mamba_placement": self.mamba_placement.value,
                "mamba_kwargs": dict(self.mamba_kwargs)}


class nnUNetTrainerUMambaBot(UMambaTrainer):
    """U-Mamba Bot: one Mamba layer at the bottleneck."""

    mamba_placement = MambaPlacement.BOT
    recipe_variant = "bot"


class nnUNetTrainerUMambaEnc(UMambaTrainer):
    """U-Mamba Enc: a Mamba layer at the end of every encoder stage."""

    mamba_placement = MambaPlacement.ENC
    recipe_variant = "enc"


class PaperBaselineTrainer(PatchAdaptedTrainer):
    """Base of the trainers of the networks written from their papers: ``network_class`` with ``network_kwargs``.

    Subclasses set ``network_class`` (a :class:`~xlstm_unet.baselines.PaperBaseline`) and optionally
    ``network_kwargs`` (overrides of its constructor's defaults, which are the paper's configuration).
    """

    network_class: ClassVar[type[PaperBaseline]]
    network_kwargs: ClassVar[dict[str, Any]] = {}

    @classmethod
    def patch_divisor(cls) -> int:
        return cls.network_class.patch_divisor(**cls.network_kwargs)

    @classmethod
    def network_label(cls) -> str:
        return f"xlstm_unet.baselines.{cls.network_class.__name__}"

    @classmethod
    def network_config(cls) -> dict[str, Any]:
        kwargs = cls.network_class.default_kwargs()
        kwargs.update(cls.network_kwargs)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """The network for the configuration's dimensionality; ``enable_deep_supervision`` is ignored (one output).
        The network checks in ``forward`` that the patch is divisible (the trainer adapted the plans)."""
        return cls.network_class(len(configuration_manager.patch_size), num_input_channels, num_output_channels,
                                 **cls.network_kwargs)


class nnUNetTrainerUXNet(PaperBaselineTrainer):
    """3D UX-Net (Lee et al., ICLR 2023), the paper's configuration (widths 48-384, kernel 7, bottleneck 768)."""

    network_class = UXNet


class nnUNetTrainerSegMamba(PaperBaselineTrainer):
    """SegMamba (Xing et al., MICCAI 2024): TSMamba encoder (widths 48-384), FUE, UNETR decoder (bottleneck 768)."""

    network_class = SegMamba


class nnUNetTrainerSegFormer3D(PaperBaselineTrainer):
    """SegFormer3D (Perera et al., CVPRW 2024), the paper's configuration (widths 32-256, 4.5 M parameters)."""

    network_class = SegFormer3D
