"""Entry point for nnU-Net's trainer search (``nnUNet_extTrainer`` points at this folder).

nnU-Net imports every module in the folder and looks the trainer up by name with ``hasattr``; this module forwards
the lookup to :mod:`xlstm_unet.nnunet.variants`, which knows our trainers, the baselines and their variants.
Keep this folder free of other modules: nnU-Net imports them as top-level modules.
"""

from xlstm_unet.nnunet import variants as _variants


def __getattr__(name: str):
    return getattr(_variants, name)
