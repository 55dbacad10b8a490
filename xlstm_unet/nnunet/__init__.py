"""nnU-Net v2 integration: trainers (found through ``nnUNet_extTrainer``), recipes, and the Python API.

Importing this package does not import nnU-Net's training code; :func:`prepare`, :func:`train` and
:func:`predict` do, after setting nnU-Net's environment variables (see :mod:`xlstm_unet.nnunet.env`).
"""

from xlstm_unet.nnunet.api import dataset_name, model_folder, predict, prepare, train, trainer_name
from xlstm_unet.nnunet.methods import METHODS, get_method

__all__ = ["prepare", "train", "predict", "model_folder", "dataset_name", "trainer_name", "METHODS", "get_method"]
