"""Method names used by the Python API, the notebooks and the results tables.

A method is a trainer base (see :mod:`xlstm_unet.nnunet.variants`) and an nnU-Net plans identifier. Every method
shares the data, the plans' patch size, the loss, the recipe and the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Method", "METHODS", "get_method", "PLANNERS"]


@dataclass(frozen=True)
class Method:
    name: str
    trainer: str
    plans: str = "nnUNetPlans"
    label: str = ""
    dims: tuple[int, ...] = (2, 3)


#: nnU-Net planner class for each plans identifier.
PLANNERS: dict[str, str] = {
    "nnUNetPlans": "ExperimentPlanner",
    "nnUNetResEncUNetMPlans": "nnUNetPlannerResEncM",
}

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("nnunet", "nnUNetTrainerRecipe", label="nnU-Net"),
    Method("resenc_m", "nnUNetTrainerRecipe", plans="nnUNetResEncUNetMPlans", label="nnU-Net ResEnc M"),
    Method("xlstm_bot", "nnUNetTrainerXLSTMBot", label="xLSTM-UNet Bot"),
    Method("xlstm_enc", "nnUNetTrainerXLSTMEnc", label="xLSTM-UNet Enc"),
    Method("xlstm_enc_official", "nnUNetTrainerXLSTMEncOfficial", label="xLSTM-UNet Enc (official placement)"),
    Method("xlstm_enc_bidir", "nnUNetTrainerXLSTMEncBidir", label="xLSTM-UNet Enc (bidirectional)"),
    Method("segresnet", "nnUNetTrainerSegResNet", label="SegResNet"),
    Method("unetr", "nnUNetTrainerUNETR", label="UNETR"),
    Method("swinunetr", "nnUNetTrainerSwinUNETR", label="SwinUNETR"),
    Method("swinunetr_v2", "nnUNetTrainerSwinUNETRv2", label="SwinUNETR-V2", dims=(3,)),
    Method("mednext", "nnUNetTrainerMedNeXt", label="MedNeXt", dims=(3,)),
    Method("umamba_bot", "nnUNetTrainerUMambaBot", label="U-Mamba Bot"),
    Method("umamba_enc", "nnUNetTrainerUMambaEnc", label="U-Mamba Enc", dims=(2,)),
    Method("uxnet", "nnUNetTrainerUXNet", label="3D UX-Net", dims=(3,)),
    Method("segmamba", "nnUNetTrainerSegMamba", label="SegMamba", dims=(3,)),
    Method("segformer3d", "nnUNetTrainerSegFormer3D", label="SegFormer3D", dims=(3,)),
)}


def get_method(name: str) -> Method:
    """The method called ``name``; ValueError listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(METHODS)}") from None
