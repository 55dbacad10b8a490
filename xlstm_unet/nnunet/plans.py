"""Plans overrides: nnU-Net configurations with a pinned patch size and/or a target spacing, named by what they are.

The paper trains at fixed patch sizes (abdomen MRI 2D 320 x 320, 3D 48 x 160 x 224), while nnU-Net 2.8's planner
picks its own; a CPU study may train at a coarser spacing than the data's. Both are nnU-Net configurations that
nnU-Net reads like its own: this module adds one to the plans file, derived from a base configuration with nnU-Net's
planner (network topology for the patch size, batch size for its memory target), and nnU-Net preprocesses, trains and
predicts it (``nnUNetv2_preprocess -c NAME``, ``nnUNetv2_train D NAME F``, the predictor reads ``plans.json``).

Names (the name is the record, as with the trainer variants)::

    <base>[_p<size>x<size>[x<size>]][_sp<spacing>x<spacing>[x<spacing>]]

    2d_p320x320                 the base "2d" at patch 320 x 320 (the plans' spacing)
    3d_fullres_p48x160x224      the base "3d_fullres" at patch 48 x 160 x 224
    2d_sp2x2                    "2d" resampled to spacing 2 x 2; the planner picks the patch
    2d_p128x128_sp2x2           both

Sizes and spacings are in nnU-Net's internal axis order (after ``transpose_forward``), as the plans store them.
Predictions are exported at the original resolution (nnU-Net resamples back), so evaluation is unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlstm_unet._io import atomic_write

__all__ = ["ConfigurationOverride", "parse_configuration", "add_configuration", "PLANNER_CLASSES"]

log = logging.getLogger(__name__)

#: nnU-Net planner class (dotted path) for each plans identifier we plan.
PLANNER_CLASSES: dict[str, str] = {
    "nnUNetPlans": "nnunetv2.experiment_planning.experiment_planners.default_experiment_planner.ExperimentPlanner",
    "nnUNetResEncUNetMPlans": "nnunetv2.experiment_planning.experiment_planners.residual_unets."
                              "residual_encoder_unet_planners.nnUNetPlannerResEncM",
}

_NUM = r"[0-9]+(?:\.[0-9]+)?"
_NAME_RE = re.compile(rf"^(?P<base>2d|3d_fullres|3d_lowres)(?:_p(?P<patch>[0-9]+(?:x[0-9]+)+))?"
                      rf"(?:_sp(?P<spacing>{_NUM}(?:x{_NUM})+))?$")


@dataclass(frozen=True)
class ConfigurationOverride:
    """A configuration derived from ``base`` with a pinned ``patch_size`` and/or ``spacing`` (``None``: the base's)."""

    base: str
    patch_size: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None

    @property
    def name(self) -> str:
        name = self.base
        if self.patch_size:
            name += "_p" + "x".join(str(int(p)) for p in self.patch_size)
        if self.spacing:
            name += "_sp" + "x".join(f"{s:g}" for s in self.spacing)
        return name

    @property
    def is_override(self) -> bool:
        return bool(self.patch_size or self.spacing)


def parse_configuration(name: str) -> ConfigurationOverride:
    """Split a configuration name (module docstring) into its base and overrides.

    Plain names (``2d``, ``3d_fullres``, and any other configuration of the plans) come back without overrides.
    """
    m = _NAME_RE.match(name)
    if m is None or not (m["patch"] or m["spacing"]):
        return ConfigurationOverride(name)
    dims = 2 if m["base"] == "2d" else 3
    patch = tuple(int(p) for p in m["patch"].split("x")) if m["patch"] else None
    spacing = tuple(float(s) for s in m["spacing"].split("x")) if m["spacing"] else None
    for what, value in (("patch size", patch), ("spacing", spacing)):
        if value is not None and len(value) != dims:
            raise ValueError(f"configuration {name!r}: the {what} needs {dims} values for {m['base']!r}, "
                             f"got {len(value)}")
        if value is not None and not all(v > 0 for v in value):
            raise ValueError(f"configuration {name!r}: the {what} must be positive, got {value}")
    return ConfigurationOverride(m["base"], patch, spacing)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _planner(dataset_id: int, plans_id: str, gpu_memory_target_in_gb: float | None):
    from pydoc import locate

    cls = locate(PLANNER_CLASSES[plans_id])
    kwargs = {"plans_name": plans_id}
    if gpu_memory_target_in_gb is not None:
        kwargs["gpu_memory_target_in_gb"] = gpu_memory_target_in_gb
    planner = cls(dataset_id, **kwargs)
    return planner


def add_configuration(dataset_id: int, plans_file: str | os.PathLike, override: ConfigurationOverride) -> bool:
    """Add ``override.name`` to the plans file (atomically), derived from its base with nnU-Net's planner.

    The new configuration inherits from the base (``inherits_from``) and overrides what differs: spacing, patch
    size, network topology for that patch (nnU-Net's ``get_pool_and_conv_props``), the median image size at the new
    spacing, the batch size nnU-Net's planner gives that patch (its minimum, 2, where the pinned patch exceeds the
    planner's memory target) and its own ``data_identifier``. Returns ``False`` when it is already there.

    Raises:
        ValueError: unknown base configuration or plans identifier.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_file = Path(plans_file)
    plans = json.loads(plans_file.read_text())
    if override.name in plans["configurations"]:
        return False
    plans_id = plans["plans_name"]
    if plans_id not in PLANNER_CLASSES:
        raise ValueError(f"{plans_file}: no planner known for plans {plans_id!r} (known: {sorted(PLANNER_CLASSES)})")
    pm = PlansManager(plans)
    if override.base not in pm.available_configurations:
        raise ValueError(f"{plans_file}: base configuration {override.base!r} of {override.name!r} is not in the "
                         f"plans (available: {pm.available_configurations})")
    base = pm.get_configuration(override.base).configuration
    spacing = np.array(override.spacing or base["spacing"], dtype=float)
    median = np.array(base["median_image_size_in_voxels"], dtype=float) * np.array(base["spacing"]) / spacing
    n_train = json.loads((plans_file.parent / "dataset.json").read_text())["numTraining"]
    # nnU-Net's 2D configurations count the dataset's voxels in 3D (slices x median slice size)
    n_voxels = float(np.prod(median)) * n_train
    data_id = f"{plans_id}_{override.name}"

    planner = _planner(dataset_id, plans_id, None)
    if override.patch_size:
        wanted = np.array(override.patch_size)
        planned = planner.get_plans_for_configuration(spacing, wanted, data_id, n_voxels, {})
        if list(planned["patch_size"]) != list(wanted):  # over the memory target: the planner shrank it
            pinned = _planner(dataset_id, plans_id, 1e6).get_plans_for_configuration(spacing, wanted, data_id,
                                                                                      n_voxels, {})
            pinned["batch_size"] = planner.UNet_min_batch_size
            planned = pinned
        if list(planned["patch_size"]) != list(wanted):
            raise ValueError(f"patch size {list(wanted)} is not divisible as nnU-Net's topology needs; nnU-Net "
                             f"would use {list(planned['patch_size'])}: use that in the configuration name")
    else:
        planned = planner.get_plans_for_configuration(spacing, median, data_id, n_voxels, {})
    planned["median_image_size_in_voxels"] = median
    planned = _jsonable(planned)
    config = {"inherits_from": override.base, "data_identifier": data_id}
    config.update({k: v for k, v in planned.items() if base.get(k) != v})
    config["xlstm_unet_override"] = {"base": override.base, "patch_size": planned["patch_size"],
                                     "spacing": planned["spacing"]}
    plans["configurations"][override.name] = config
    with atomic_write(plans_file) as tmp:
        tmp.write_text(json.dumps(plans, indent=4))
    log.info("%s: added configuration %s (patch %s, spacing %s, batch %s)", plans_file, override.name,
             planned["patch_size"], planned["spacing"], planned["batch_size"])
    return True


def _cmd_prepare(args) -> int:
    from xlstm_unet.nnunet.api import prepare

    out = prepare(args.dataset, configurations=args.configurations, plans=args.plans,
                  num_processes=args.num_processes, overwrite=args.overwrite)
    print(out)
    return 0


def register(subparsers) -> None:
    """Add ``prepare`` to the ``xlstm-unet`` command."""
    p = subparsers.add_parser(
        "prepare", help="nnU-Net fingerprint, plan (with overrides such as 2d_p320x320) and preprocess; writes "
                        "splits_final.json from the converter's split",
        description="nnU-Net's plan_and_preprocess for a converted dataset, plus the configuration overrides named "
                    "as <base>[_p<size>x...][_sp<spacing>x...] (e.g. 2d_p320x320, 3d_fullres_p48x160x224, "
                    "2d_sp2x2) and nnU-Net's splits_final.json from the converter's split.json where it has a "
                    "validation part. Then train with nnUNetv2_train D CONFIGURATION FOLD -tr TRAINER.")
    p.add_argument("dataset", help="dataset id (e.g. 701), DatasetXXX_Name, or raw folder")
    p.add_argument("-c", "--configurations", nargs="+", default=["2d"], metavar="CONFIG",
                   help="configurations to preprocess (default 2d)")
    p.add_argument("-p", "--plans", nargs="+", default=["nnUNetPlans"], choices=sorted(PLANNER_CLASSES),
                   help="plans identifiers (default nnUNetPlans; nnUNetResEncUNetMPlans for resenc_m)")
    p.add_argument("-np", "--num-processes", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--overwrite", action="store_true", help="redo steps whose outputs exist")
    p.set_defaults(func=_cmd_prepare)
