"""Share trained models as zip files: ``xlstm-unet export MODEL ZIP`` and ``xlstm-unet import ZIP``.

The zip is nnU-Net's own (``nnUNetv2_export_model_to_zip``, :func:`nnunetv2.model_sharing.model_export.
export_pretrained_model`), with our ``run_config.json`` of each fold added, so ``nnUNetv2_install_pretrained_model_
from_zip`` installs it too. Members are paths relative to ``nnUNet_results``::

    Dataset901_Phantom2D/<trainer>__<plans>__<configuration>/{plans.json, dataset.json, dataset_fingerprint.json}
    Dataset901_Phantom2D/<trainer>__<plans>__<configuration>/fold_0/{checkpoint_final.pth, run_config.json, ...}

A zip from someone else is untrusted input. Before anything is installed (or predicted, see
:mod:`xlstm_unet.inference`):

- every member must be a plain file or folder under ``DatasetXXX_Name/``: absolute paths, ``..`` components,
  backslashes, drive letters and symbolic links are refused ("zip slip");
- every checkpoint (``*.pth``) must load with ``torch.load(weights_only=True)``, allowing only the non-tensor types
  nnU-Net stores (numpy scalars and dtypes in its training log); a checkpoint holding any other pickled object could
  run code when loaded, so it is refused;
- pickle files (``*.pkl``, e.g. nnU-Net's ``postprocessing.pkl``) are refused for the same reason;
- ``plans.json`` may only name network classes from ``dynamic_network_architectures`` or ``xlstm_unet`` and
  ``torch.nn`` operations, since nnU-Net imports and calls the names it finds there.

``trust=True`` (``--trust``) skips the last three checks, for zips from a source the user trusts. An installed
model is never replaced without ``overwrite=True`` (``--overwrite``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import shutil
import stat
import sys
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from xlstm_unet._io import atomic_write, replace_path
from xlstm_unet.nnunet.api import _env
from xlstm_unet.nnunet.env import apply_env

__all__ = ["UnsafeModelError", "export_model", "import_model", "extract_model_zip", "opened_model",
           "model_folds", "load_checkpoint_safely", "register"]

log = logging.getLogger(__name__)

_DATASET_RE = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_.\-]+$")
#: Module prefixes that ``plans.json`` may name (nnU-Net imports them with ``pydoc.locate`` and calls them).
_PLANS_IMPORT_PREFIXES: tuple[str, ...] = ("dynamic_network_architectures.", "xlstm_unet.", "torch.nn.")
_TRUST_HINT = ("only if you trust where this zip comes from, pass trust=True (CLI: --trust); loading it can run "
               "arbitrary code on this machine")


class UnsafeModelError(ValueError):
    """A model zip (or model folder) failed a safety check; the message names the member and the rule."""


# ---------------------------------------------------------------------------------------------------------------
# model folders


def model_folds(model: str | os.PathLike, folds: Sequence[int | str] | None = None,
                checkpoint: str = "checkpoint_final.pth") -> tuple[Path, list[str]]:
    """Resolve a trained model folder: ``(trainer folder, fold names)``.

    ``model`` is nnU-Net's ``<trainer>__<plans>__<configuration>`` folder (default folds: every ``fold_X`` with
    ``checkpoint``) or one of its ``fold_X`` folders (default fold: that one). Fold names are ``"0"``, ``"all"``...

    Raises:
        FileNotFoundError: not a model folder (no ``plans.json``/``dataset.json``), or a fold without ``checkpoint``.
    """
    model = Path(model)
    if not model.exists():
        raise FileNotFoundError(f"model {model} does not exist")
    if model.name.startswith("fold_") and (model.parent / "plans.json").is_file():
        folds = folds or [model.name[5:]]
        model = model.parent
    for name in ("plans.json", "dataset.json"):
        if not (model / name).is_file():
            raise FileNotFoundError(f"{model} is not a trained nnU-Net model folder (no {name}); expected "
                                    f"<trainer>__<plans>__<configuration>, one of its fold_X folders or a model zip")
    if folds:
        names = [str(f) for f in folds]
    else:
        names = sorted(p.name[5:] for p in model.glob("fold_*") if (p / checkpoint).is_file())
        if not names:
            raise FileNotFoundError(f"{model}: no fold_X folder has {checkpoint} (training not finished? a stopped "
                                    f"run has checkpoint_latest.pth: pass checkpoint='checkpoint_latest.pth')")
    for f in names:
        if not (model / f"fold_{f}" / checkpoint).is_file():
            raise FileNotFoundError(f"{model / f'fold_{f}' / checkpoint} does not exist (choose other folds or "
                                    f"another checkpoint)")
    return model, names


# ---------------------------------------------------------------------------------------------------------------
# checks of untrusted files


def _safe_globals() -> list[Any]:
    """The non-tensor types of nnU-Net's checkpoints: numpy scalars (and their dtypes) in the training log."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtypes = [getattr(np.dtypes, n) for n in ("Float16DType", "Float32DType", "Float64DType", "Int32DType",
                                               "Int64DType", "BoolDType") if hasattr(np, "dtypes")]
    return [scalar, np.dtype, *dtypes]


def load_checkpoint_safely(path: str | os.PathLike, map_location: str = "cpu", *,
                           name: str | None = None) -> dict[str, Any]:
    """Load an nnU-Net checkpoint with ``torch.load(weights_only=True)`` and nnU-Net's few extra types allowed.

    ``name`` replaces ``path`` in error messages (e.g. ``model.zip: Dataset.../fold_0/checkpoint_final.pth``).
    Returns the checkpoint dict (``network_weights``, ``optimizer_state``, ``logging``, ``init_args``, ...).

    Raises:
        UnsafeModelError: the file holds other pickled objects (loading it fully could run code), or is no
            checkpoint; the message names the file.
    """
    import pickle

    import torch

    path = Path(path)
    where = name or str(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise UnsafeModelError(f"{where}: refused: the checkpoint holds pickled objects other than tensors and "
                               f"nnU-Net's plain types{what}; {_TRUST_HINT}") from err
    except Exception as err:  # noqa: BLE001 - truncated or foreign files
        raise UnsafeModelError(f"{where}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise UnsafeModelError(f"{where}: not an nnU-Net checkpoint (no 'network_weights')")
    return ckpt


def _check_plans(path: Path, where: str) -> None:
    """Refuse a ``plans.json`` whose network class or ``_kw_requires_import`` entries leave the allowed modules."""
    plans = json.loads(path.read_text())
    for cname, conf in plans.get("configurations", {}).items():
        arch = conf.get("architecture", {})
        names = [arch["network_class_name"]] if "network_class_name" in arch else []
        kwargs = arch.get("arch_kwargs", {})
        names += [kwargs[k] for k in arch.get("_kw_requires_import", []) if isinstance(kwargs.get(k), str)]
        for name in names:
            if not str(name).startswith(_PLANS_IMPORT_PREFIXES):
                raise UnsafeModelError(f"{where}: refused: configuration {cname!r} names {name!r}, which nnU-Net "
                                       f"would import and call; allowed are {', '.join(_PLANS_IMPORT_PREFIXES)}*; "
                                       f"{_TRUST_HINT}")


def _check_members(zf: zipfile.ZipFile, zip_path: Path) -> list[str]:
    """Refuse members that could be written outside the target folder; returns the dataset folder names."""
    datasets: set[str] = set()
    for info in zf.infolist():
        name = info.filename
        mode = info.external_attr >> 16
        where = f"{zip_path}: member {name!r}"
        if "\\" in name or "\x00" in name:
            raise UnsafeModelError(f"{where}: refused: backslash or NUL in the path")
        p = PurePosixPath(name)
        if p.is_absolute() or re.match(r"^[A-Za-z]:", name):
            raise UnsafeModelError(f"{where}: refused: absolute path (a zip must hold relative paths)")
        if ".." in p.parts:
            raise UnsafeModelError(f"{where}: refused: '..' in the path would write outside the target folder")
        if stat.S_ISLNK(mode):
            raise UnsafeModelError(f"{where}: refused: symbolic link")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no Unix file type recorded
            raise UnsafeModelError(f"{where}: refused: not a plain file or folder (mode {oct(mode)})")
        if not p.parts or not _DATASET_RE.match(p.parts[0]) or (len(p.parts) == 1 and not info.is_dir()):
            raise UnsafeModelError(f"{where}: not an nnU-Net model zip (members must lie under DatasetXXX_Name/, "
                                   f"as written by xlstm-unet export or nnUNetv2_export_model_to_zip)")
        datasets.add(p.parts[0])
    if not datasets:
        raise UnsafeModelError(f"{zip_path}: empty zip")
    return sorted(datasets)


def _check_tree(root: Path, trust: bool, source: Path) -> list[Path]:
    """Check the files extracted from ``source`` into ``root``; returns the model folders (with ``plans.json``)."""
    for path in sorted(root.rglob("*")):
        where = f"{source}: {path.relative_to(root)}"
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise UnsafeModelError(f"{where}: refused: not a plain file or folder")
        if trust or not path.is_file():
            continue
        if path.suffix == ".pth":
            load_checkpoint_safely(path, name=where)
        elif path.suffix == ".pkl":
            raise UnsafeModelError(f"{where}: refused: pickle files can run code when loaded; {_TRUST_HINT}")
        elif path.name == "plans.json":
            _check_plans(path, where)
    models = sorted(p.parent for p in root.glob("Dataset*/*/plans.json"))
    if not models:
        raise UnsafeModelError(f"{source}: no trained model in the zip (no DatasetXXX_Name/<trainer>__<plans>__"
                               f"<configuration>/plans.json)")
    return models


def extract_model_zip(zip_path: str | os.PathLike, dest: str | os.PathLike, *, trust: bool = False) -> list[Path]:
    """Check a model zip, extract it into the empty or new folder ``dest`` and check its files.

    Extraction is nnU-Net's own (:func:`nnunetv2.model_sharing.model_import.install_model_from_zip_file`, with
    ``nnUNet_results`` pointed at ``dest``), after the member checks of the module docstring.

    Returns:
        The model folders ``dest/DatasetXXX_Name/<trainer>__<plans>__<configuration>``, sorted.

    Raises:
        FileNotFoundError: no such zip. UnsafeModelError: a check failed (``dest`` may then hold extracted
            files: extract into a temporary folder).
    """
    apply_env()
    from nnunetv2.model_sharing.model_import import install_model_from_zip_file

    zip_path, dest = Path(zip_path), Path(dest)
    if not zip_path.is_file():
        raise FileNotFoundError(f"model zip {zip_path} does not exist")
    try:
        with zipfile.ZipFile(zip_path) as zf:
            _check_members(zf, zip_path)
    except zipfile.BadZipFile as err:
        raise UnsafeModelError(f"{zip_path}: not a zip file ({err})") from err
    dest.mkdir(parents=True, exist_ok=True)
    with _env(nnUNet_results=str(dest)):
        install_model_from_zip_file(str(zip_path))
    return _check_tree(dest, trust, zip_path)


@contextlib.contextmanager
def opened_model(model: str | os.PathLike, *, trust: bool = False) -> Iterator[Path]:
    """Yield a model folder (or fold folder) for ``model``; a zip is checked and extracted into a temporary folder,
    removed afterwards. A zip must hold exactly one model."""
    import tempfile

    model = Path(model)
    if not (model.is_file() and zipfile.is_zipfile(model)):
        yield model
        return
    with tempfile.TemporaryDirectory(prefix="xlstm-unet-model-") as tmp:
        models = extract_model_zip(model, tmp, trust=trust)
        if len(models) != 1:
            raise ValueError(f"{model} holds {len(models)} models "
                             f"({', '.join(str(m.relative_to(tmp)) for m in models)}); install it with "
                             f"xlstm-unet import and pass the model folder")
        yield models[0]


# ---------------------------------------------------------------------------------------------------------------
# export and import


def export_model(model: str | os.PathLike, zip_path: str | os.PathLike, *, folds: Sequence[int | str] | None = None,
                 overwrite: bool = False) -> Path:
    """Write a trained model to a zip with nnU-Net's exporter, plus each fold's ``run_config.json``.

    Args:
        model: ``<nnUNet_results or any folder>/DatasetXXX_Name/<trainer>__<plans>__<configuration>`` or a
            ``fold_X`` in it.
        zip_path: the zip to write (atomically: a temporary file next to it, then renamed).
        folds: folds to export (default: the given fold, or every fold with ``checkpoint_final.pth``).
        overwrite: replace an existing zip.

    Returns:
        ``zip_path``.

    Raises:
        FileNotFoundError: a file nnU-Net's export needs is missing (``checkpoint_final.pth``, ``progress.png``,
            ``validation/summary.json`` of a fold, ...). FileExistsError: ``zip_path`` exists.
    """
    apply_env()
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    trainer_dir, names = model_folds(model, folds)
    zip_path = Path(zip_path)
    if zip_path.exists() and not overwrite:
        raise FileExistsError(f"{zip_path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    parts = trainer_dir.name.split("__")
    dataset = trainer_dir.parent.name
    if len(parts) != 3 or not _DATASET_RE.match(dataset):
        raise ValueError(f"{trainer_dir}: expected nnU-Net's layout DatasetXXX_Name/<trainer>__<plans>__<config>")
    for rel in ["plans.json", "dataset.json", "dataset_fingerprint.json",
                *(f"fold_{f}/{n}" for f in names for n in ("checkpoint_final.pth", "progress.png",
                                                           "validation/summary.json"))]:
        if not (trainer_dir / rel).is_file():
            raise FileNotFoundError(f"{trainer_dir / rel} is missing; nnU-Net's export needs it (finish the training "
                                    f"with its final validation: nnUNetv2_train ... --val, or train(validate=True))")
    for f in names:
        ckpt = trainer_dir / f"fold_{f}" / "checkpoint_final.pth"
        try:
            load_checkpoint_safely(ckpt)
        except UnsafeModelError as err:
            log.warning("%s; the importer will refuse this zip unless trusted", err)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(zip_path, suffix=".zip") as tmp:
        nnunet_folds = tuple(f if f == "all" else int(f) for f in names)
        with _env(nnUNet_results=str(trainer_dir.parent.parent)), contextlib.redirect_stdout(io.StringIO()) as out:
            export_pretrained_model(dataset, str(tmp), configurations=(parts[2],), trainer=parts[0],
                                    plans_identifier=parts[1], folds=nnunet_folds, strict=True)
        log.debug("nnU-Net export: %s", out.getvalue())
        with zipfile.ZipFile(tmp, "a", zipfile.ZIP_DEFLATED) as zf:
            for f in names:
                rc = trainer_dir / f"fold_{f}" / "run_config.json"
                if rc.is_file():
                    zf.write(rc, f"{dataset}/{trainer_dir.name}/fold_{f}/run_config.json")
    log.info("exported %s (folds %s) to %s", trainer_dir, ", ".join(names), zip_path)
    return zip_path


def import_model(zip_path: str | os.PathLike, *, overwrite: bool = False, trust: bool = False,
                 results_dir: str | os.PathLike | None = None) -> list[Path]:
    """Install a model zip into ``nnUNet_results`` after the safety checks of the module docstring.

    The zip is extracted into a temporary folder inside the results folder, checked, and each model folder is then
    moved into place; nothing is installed when a check fails.

    Args:
        overwrite: replace models (and dataset-level files such as ``ensembles/``) that are already installed.
        trust: skip the checkpoint, pickle and plans checks (never the path checks).
        results_dir: install here instead of ``nnUNet_results``.

    Returns:
        The installed model folders ``<results>/DatasetXXX_Name/<trainer>__<plans>__<configuration>``.

    Raises:
        UnsafeModelError: a check failed. FileExistsError: a model is installed already and ``overwrite`` is false.
    """
    dirs = apply_env()
    results = Path(results_dir) if results_dir is not None else Path(dirs["nnUNet_results"])
    results.mkdir(parents=True, exist_ok=True)
    tmp = results / f".import-{uuid.uuid4().hex[:12]}"
    try:
        extract_model_zip(zip_path, tmp, trust=trust)
        entries = sorted(p.relative_to(tmp) for p in tmp.glob("Dataset*/*"))  # model folders and dataset files
        taken = [str(e) for e in entries if (results / e).exists()]
        if taken and not overwrite:
            raise FileExistsError(f"already installed in {results}: {', '.join(taken)}; pass overwrite=True "
                                  f"(CLI: --overwrite) to replace")
        installed = []
        for rel in entries:
            dest = results / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            replace_path(tmp / rel, dest)
            if (dest / "plans.json").is_file():
                installed.append(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("installed %s", ", ".join(map(str, installed)))
    return installed


# ---------------------------------------------------------------------------------------------------------------
# CLI


def _run_export(args: argparse.Namespace) -> int:
    try:
        out = export_model(args.model, args.zip, folds=args.folds, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"xlstm-unet export: error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _run_import(args: argparse.Namespace) -> int:
    try:
        models = import_model(args.zip, overwrite=args.overwrite, trust=args.trust)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"xlstm-unet import: error: {err}", file=sys.stderr)
        return 2
    print("\n".join(map(str, models)))
    return 0


def register(subparsers) -> None:
    """Add the ``export`` and ``import`` sub-commands."""
    p = subparsers.add_parser("export", help="write a trained model to a zip (nnU-Net's format + run_config.json)",
                              description=export_model.__doc__.split("\n")[0])
    p.add_argument("model", metavar="MODEL", help="<trainer>__<plans>__<config> folder or one of its fold_X")
    p.add_argument("zip", metavar="ZIP", help="zip file to write")
    p.add_argument("--folds", nargs="+", default=None, help="folds to export (default: all with a final checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing ZIP")
    p.set_defaults(func=_run_export)
    p = subparsers.add_parser("import", help="install a model zip into nnUNet_results (checked first)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("zip", metavar="ZIP", help="model zip (from xlstm-unet export or nnUNetv2_export_model_to_zip)")
    p.add_argument("--overwrite", action="store_true", help="replace an installed model of the same name")
    p.add_argument("--trust", action="store_true",
                   help="skip the checkpoint/pickle/plans checks: ONLY for zips from a trusted source (they can run "
                        "code)")
    p.set_defaults(func=_run_import)
