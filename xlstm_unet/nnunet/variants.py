"""Trainer variants by name: recipe, budget, learning rate, batch size, precision and seed, reachable from nnU-Net's
CLI.

nnU-Net finds trainers by class name (``-tr NAME``), and names its results folder after the class. So a variant
is a name, and the name is the record: a 5-epoch run can never pass as a full one.

Grammar::

    <base>[_official|_paper][_<E>ep][_<I>it][_lr<float>][_bs<N>][_noamp][_seed<N>]

    nnUNetTrainerXLSTMBot                   paper recipe, nnU-Net's 1000 epochs x 250 iterations
    nnUNetTrainerXLSTMBot_official          SGD recipe of the official code
    nnUNetTrainerXLSTMEnc_5ep_10it          5 epochs of 10 iterations (CPU smoke runs)
    nnUNetTrainerRecipe_official_50ep_lr0.001
    nnUNetTrainerXLSTMEnc_bs2               batch size 2 instead of the plans' (the official code's ``-bs``)
    nnUNetTrainerXLSTMEnc_noamp             float32 training on CUDA (no autocast, no grad scaler); no-op on CPU
    nnUNetTrainerXLSTMEnc_250ep_seed1       training seed 1 (python, numpy and torch seeded before the network is
                                            built); without ``_seed`` nothing is seeded, as in nnU-Net

Bases are registered with :func:`register_trainer` (ours in :mod:`xlstm_unet.nnunet.trainers`, the baselines in
:mod:`xlstm_unet.nnunet.baseline_trainers`). Classes are created on first use and cached; this module's
``__getattr__`` resolves them, so pickling by reference works and the ``nnUNet_extTrainer`` folder
(:func:`ext_trainer_dir`) only needs to forward to it.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

__all__ = [
    "BASE_TRAINER_MODULES",
    "register_trainer",
    "base_trainers",
    "trainer_class",
    "trainer_variant_name",
    "parse_variant_name",
    "ext_trainer_dir",
]

#: Modules whose trainer classes are registered as bases (imported on first use).
BASE_TRAINER_MODULES: tuple[str, ...] = (
    "xlstm_unet.nnunet.trainers",
    "xlstm_unet.nnunet.baseline_trainers",
)

_BASES: dict[str, type] = {}
_CACHE: dict[str, type] = {}
_MODULES_LOADED = False
_NAME_RE = re.compile(
    r"^(?P<base>nnUNetTrainer[A-Za-z0-9]*)"
    r"(?:_(?P<recipe>official|paper))?"
    r"(?:_(?P<epochs>[1-9][0-9]*)ep)?"
    r"(?:_(?P<iters>[1-9][0-9]*)it)?"
    r"(?:_lr(?P<lr>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?))?"
    r"(?:_bs(?P<bs>[1-9][0-9]*))?"
    r"(?P<noamp>_noamp)?"
    r"(?:_seed(?P<seed>0|[1-9][0-9]*))?$"
)
_GRAMMAR = "<base>[_official][_<E>ep][_<I>it][_lr<x>][_bs<N>][_noamp][_seed<N>]"


def register_trainer(cls: type) -> type:
    """Register a trainer class as a variant base (usable as a class decorator)."""
    _BASES[cls.__name__] = cls
    return cls


def base_trainers() -> dict[str, type]:
    """All registered base trainers, by name (the modules of :data:`BASE_TRAINER_MODULES` are loaded once)."""
    global _MODULES_LOADED
    if not _MODULES_LOADED:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        for mod_name in BASE_TRAINER_MODULES:
            try:
                mod = importlib.import_module(mod_name)
            except ModuleNotFoundError as err:
                if err.name != mod_name:
                    raise
                continue
            for name in getattr(mod, "__all__", ()):
                obj = getattr(mod, name)
                if isinstance(obj, type) and issubclass(obj, nnUNetTrainer) and name.startswith("nnUNetTrainer"):
                    _BASES.setdefault(name, obj)
        _MODULES_LOADED = True
    return dict(_BASES)


def trainer_variant_name(base: str, *, recipe: str | None = None, epochs: int | None = None,
                         iterations: int | None = None, lr: float | None = None, batch_size: int | None = None,
                         amp: bool = True, seed: int | None = None) -> str:
    """The class name of a variant, e.g. ``trainer_variant_name("nnUNetTrainerXLSTMBot", epochs=5, iterations=10)``
    -> ``"nnUNetTrainerXLSTMBot_5ep_10it"``. ``recipe="paper"`` (the default), ``amp=True`` and ``None`` add
    nothing."""
    name = base
    if recipe not in (None, "paper"):
        name += f"_{recipe}"
    if epochs is not None:
        name += f"_{int(epochs)}ep"
    if iterations is not None:
        name += f"_{int(iterations)}it"
    if lr is not None:
        name += f"_lr{lr:g}"
    if batch_size is not None:
        name += f"_bs{int(batch_size)}"
    if not amp:
        name += "_noamp"
    if seed is not None:
        name += f"_seed{int(seed)}"
    parse_variant_name(name)  # validates
    return name


def parse_variant_name(name: str) -> dict:
    """Split a variant name into ``base``, ``recipe``, ``epochs``, ``iterations``, ``lr``, ``batch_size``, ``amp``
    and ``seed``; ValueError if invalid."""
    m = _NAME_RE.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a trainer variant name ({_GRAMMAR})")
    bases = base_trainers()
    if m["base"] not in bases:
        raise ValueError(f"unknown trainer base {m['base']!r} in {name!r}; known: {sorted(bases)}")
    return {
        "base": m["base"],
        "recipe": m["recipe"] or "paper",
        "epochs": int(m["epochs"]) if m["epochs"] else None,
        "iterations": int(m["iters"]) if m["iters"] else None,
        "lr": float(m["lr"]) if m["lr"] else None,
        "batch_size": int(m["bs"]) if m["bs"] else None,
        "amp": not m["noamp"],
        "seed": int(m["seed"]) if m["seed"] is not None else None,
    }


def trainer_class(name: str) -> type:
    """The trainer class for a base or variant name, created and cached on first use."""
    if name in _CACHE:
        return _CACHE[name]
    spec = parse_variant_name(name)
    base = base_trainers()[spec["base"]]
    if name == spec["base"]:
        cls = base
    else:
        attrs = {
            "recipe": spec["recipe"],
            "budget_epochs": spec["epochs"],
            "budget_iterations": spec["iterations"],
            "lr_override": spec["lr"],
            "batch_size_override": spec["batch_size"],
            "amp": spec["amp"],
            "seed": spec["seed"],
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"{spec['base']} with " + ", ".join(f"{k}={v}" for k, v in spec.items() if k != "base")
                       + " (generated variant).",
        }
        cls = type(name, (base,), attrs)
        if not spec["amp"]:
            cls.build_network_architecture = _fp32_builder(cls)
    _CACHE[name] = cls
    return cls


def _fp32_builder(cls: type) -> classmethod:
    """``build_network_architecture`` of a ``_noamp`` variant: the base's network, run in float32 (see
    :func:`xlstm_unet.nnunet.trainers.force_fp32`). nnU-Net's trainer and predictor both build through it."""
    from xlstm_unet.nnunet.trainers import force_fp32

    def build_network_architecture(klass, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        # nnU-Net inspects this signature for 'plans_manager', so it is spelled out
        return force_fp32(super(cls, klass).build_network_architecture(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision))

    return classmethod(build_network_architecture)


def __getattr__(name: str) -> type:  # PEP 562: nnU-Net looks classes up with hasattr/getattr
    if name.startswith("nnUNetTrainer"):
        try:
            return trainer_class(name)
        except ValueError:
            pass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ext_trainer_dir() -> Path:
    """The folder to put in ``nnUNet_extTrainer`` so that ``nnUNetv2_train -tr NAME`` finds our trainers."""
    return Path(__file__).resolve().parent / "ext_trainers"
