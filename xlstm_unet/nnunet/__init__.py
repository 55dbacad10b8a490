"""nnU-Net v2 integration: trainers (found through ``nnUNet_extTrainer``), recipes, and the Python API.

Importing this package does not import nnU-Net's training code; :func:`prepare`, :func:`train` and
:func:`predict` do, after setting nnU-Net's environment variables (see :mod:`xlstm_unet.nnunet.env`).

nnU-Net's default of 8 worker processes for validation export and preprocessing (``nnUNet_def_n_proc``) is capped at
this machine's CPU count when the user has not set it; nnU-Net reads it once, at import, so it is set here.
"""

import os as _os

_os.environ.setdefault("nnUNet_def_n_proc", str(max(1, min(8, _os.cpu_count() or 1))))

from xlstm_unet.nnunet.api import dataset_name, model_folder, predict, prepare, train, trainer_name, write_splits
from xlstm_unet.nnunet.methods import METHODS, get_method

__all__ = ["prepare", "write_splits", "train", "predict", "model_folder", "dataset_name", "trainer_name", "METHODS", "get_method"]
