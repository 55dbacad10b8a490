"""Python API for notebooks: one call per step, each returning paths.

    from xlstm_unet.nnunet import prepare, train, predict
    prepare(901)                                             # fingerprint, plan, preprocess (nnU-Net's own code)
    fold_dir = train(901, "xlstm_enc", epochs=5, iterations=10, device="cpu")
    pred_dir = predict(fold_dir, "data/nnUNet_raw/Dataset901_Phantom2D/imagesTs", "results/pred", device="cpu")

Everything runs nnU-Net's own code in this process (so nnU-Net's epoch lines and tqdm bars show in the notebook);
the trainers are found through ``nnUNet_extTrainer``, exactly as with the CLI.

On CPU, ``nnUNet_n_proc_DA`` defaults to 0 (augmentation in the training process) when the user has not set it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from xlstm_unet._io import atomic_write
from xlstm_unet.nnunet.env import apply_env
from xlstm_unet.nnunet.methods import PLANNERS, get_method
from xlstm_unet.nnunet.plans import add_configuration, parse_configuration
from xlstm_unet.nnunet.trainers import STOP_AFTER_EPOCH_ENV, TrainingPaused
from xlstm_unet.nnunet.variants import trainer_variant_name
from xlstm_unet.pause import PAUSED_EXIT_CODE, TIME_LIMIT_ENV, pause_handling, time_left

__all__ = ["prepare", "write_splits", "train", "predict", "load_predictor", "check_device", "model_folder",
           "dataset_name", "trainer_name"]

log = logging.getLogger(__name__)


def dataset_name(dataset: int | str) -> str:
    """``DatasetXXX_Name`` for an id (901), a name, or a raw dataset folder path."""
    apply_env()
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if isinstance(dataset, (str, os.PathLike)) and os.sep in str(dataset):
        dataset = Path(dataset).name
    return maybe_convert_to_dataset_name(dataset)


def _dataset_id(dataset: int | str) -> int:
    return int(dataset_name(dataset)[7:10])


def trainer_name(method: str, *, epochs: int | None = None, iterations: int | None = None,
                 recipe: str = "paper", lr: float | None = None, batch_size: int | None = None, amp: bool = True,
                 seed: int | None = None) -> str:
    """The trainer class name for a method and budget, e.g. ``nnUNetTrainerXLSTMEnc_5ep_10it``
    (see :mod:`xlstm_unet.nnunet.variants` for the grammar)."""
    return trainer_variant_name(get_method(method).trainer, recipe=recipe, epochs=epochs, iterations=iterations,
                                lr=lr, batch_size=batch_size, amp=amp, seed=seed)


def prepare(dataset: int | str, *, configurations: Sequence[str] = ("2d",), plans: Sequence[str] = ("nnUNetPlans",),
            num_processes: int = 2, verify: bool = True, overwrite: bool = False) -> Path:
    """Fingerprint, plan and preprocess a converted dataset with nnU-Net's own code.

    Args:
        dataset: id, ``DatasetXXX_Name`` or raw folder.
        configurations: nnU-Net configurations to preprocess (``2d``, ``3d_fullres``), or overrides of them named
            as in :mod:`xlstm_unet.nnunet.plans` (``2d_p320x320``, ``2d_sp2x2``), which are added to the plans.
        plans: plans identifiers; ``nnUNetPlans`` (default planner) and/or ``nnUNetResEncUNetMPlans`` (ResEnc M).
        num_processes: worker processes for fingerprinting and preprocessing.
        verify: run nnU-Net's ``verify_dataset_integrity`` first.
        overwrite: redo steps whose outputs exist (otherwise they are skipped).

    The converter's split reaches nnU-Net: where ``split.json`` has a validation part (``val``), fold 0 of
    ``splits_final.json`` is the converter's train/validation split and folds 1-4 are nnU-Net's own seeded 5-fold
    split of the training cases (see :func:`write_splits`). Without one, nnU-Net's 5-fold split is used as usual;
    ``fold="all"`` trains on every training case.

    Returns:
        The dataset's folder in ``nnUNet_preprocessed``.
    """
    dirs = apply_env()
    from nnunetv2.experiment_planning import plan_and_preprocess_api as pp

    name = dataset_name(dataset)
    did = int(name[7:10])
    out = Path(dirs["nnUNet_preprocessed"]) / name
    unknown = [p for p in plans if p not in PLANNERS]
    if unknown:
        raise ValueError(f"unknown plans {unknown}; expected some of {sorted(PLANNERS)}")
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0 (in-process augmentation)
    da = os.environ.get("nnUNet_n_proc_DA")
    with _env(nnUNet_n_proc_DA="1" if da == "0" else da):
        _prepare(pp, did, out, configurations, plans, num_processes, verify, overwrite)
    write_splits(name, overwrite=overwrite)
    return out


def _prepare(pp, did: int, out: Path, configurations, plans, num_processes: int, verify: bool,
             overwrite: bool) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if overwrite or not (out / "dataset_fingerprint.json").is_file():
        pp.extract_fingerprints([did], num_processes=num_processes, check_dataset_integrity=verify, clean=True,
                                verbose=False)
    for plans_id in plans:
        if overwrite or not (out / f"{plans_id}.json").is_file():
            pp.plan_experiments([did], PLANNERS[plans_id])
        for c in configurations:
            override = parse_configuration(c)
            if override.is_override:
                add_configuration(did, out / f"{plans_id}.json", override)
        pm = PlansManager(str(out / f"{plans_id}.json"))
        todo = []
        for c in configurations:
            if c not in pm.available_configurations:
                raise ValueError(f"configuration {c!r} is not in {out / (plans_id + '.json')}; "
                                 f"available: {pm.available_configurations}")
            data_dir = out / pm.get_configuration(c).data_identifier
            if overwrite or not data_dir.is_dir() or not any(data_dir.iterdir()):
                todo.append(c)
        if todo:
            pp.preprocess([did], plans_id, todo, [num_processes] * len(todo), verbose=False)


def write_splits(dataset: int | str, *, overwrite: bool = False) -> Path | None:
    """Write nnU-Net's ``splits_final.json`` from the converter's ``split.json`` where it has a validation part.

    Fold 0 is the converter's split (``train`` without ``val`` / ``val``); folds 1-4 are nnU-Net's own seeded
    5-fold split (``generate_crossval_split``, seed 12345) of all training cases. An existing file is kept unless
    ``overwrite``; one whose fold 0 differs from the converter's gets a warning. Returns the file, or ``None`` when
    the converter's split has no validation part (nnU-Net then writes its own 5-fold split on first training).
    """
    dirs = apply_env()
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    name = dataset_name(dataset)
    split_file = Path(dirs["nnUNet_raw"]) / name / "split.json"
    if not split_file.is_file():
        return None
    split = json.loads(split_file.read_text())
    val = sorted(split.get("val") or [])
    if not val:
        return None
    cases = sorted(split["train"])
    fold0 = {"train": [c for c in cases if c not in set(val)], "val": val}
    splits = [fold0] + generate_crossval_split(cases, seed=12345, n_splits=5)[1:]
    out = Path(dirs["nnUNet_preprocessed"]) / name / "splits_final.json"
    if out.is_file() and not overwrite:
        existing = json.loads(out.read_text())
        if not existing or sorted(existing[0]["val"]) != val:
            log.warning("%s: fold 0 differs from the converter's split in %s; kept (overwrite=True replaces it)",
                        out, split_file)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        tmp.write_text(json.dumps(splits, indent=2))
    return out


def _set_environ(values: dict[str, str | None]) -> None:
    """Set each variable, or remove it where the value is None."""
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def _env(**values: str | None) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    try:
        _set_environ(values)
        yield
    finally:
        _set_environ(old)


def model_folder(dataset: int | str, method: str, *, configuration: str = "2d", **variant) -> Path:
    """nnU-Net's results folder ``<nnUNet_results>/<Dataset>/<trainer>__<plans>__<configuration>``; ``variant``:
    the keyword arguments of :func:`trainer_name` (budget, recipe, lr, batch size, amp, seed)."""
    dirs = apply_env()
    tr = trainer_name(method, **variant)
    plans = get_method(method).plans
    return Path(dirs["nnUNet_results"]) / dataset_name(dataset) / f"{tr}__{plans}__{configuration}"


def train(dataset: int | str, method: str = "xlstm_enc", *, configuration: str = "2d", fold: int | str = 0,
          epochs: int | None = None, iterations: int | None = None, recipe: str = "paper", lr: float | None = None,
          batch_size: int | None = None, amp: bool = True, seed: int | None = None, device: str = "cpu",
          resume: bool = False, stop_after_epoch: int | None = None, validate: bool = True, num_gpus: int = 1,
          time_limit: str | float | None = None) -> Path:
    """Train one method on one fold with nnU-Net's own training loop.

    Args:
        dataset: id, name or raw folder of a prepared dataset (see :func:`prepare`).
        method: a name from :data:`xlstm_unet.nnunet.methods.METHODS` (``xlstm_bot``, ``xlstm_enc``, ``nnunet``...).
        epochs, iterations: a short budget (``None`` = nnU-Net's 1000 x 250). The trainer's name, and so the
            results folder, says so: ``nnUNetTrainerXLSTMEnc_5ep_10it``.
        recipe: ``"paper"`` (AdamW) or ``"official"`` (SGD); ``lr`` overrides the learning rate.
        batch_size: instead of the plans' (``_bs<N>``); ``amp=False``: float32 on CUDA (``_noamp``); ``seed``:
            seed python, numpy and torch before anything is built (``_seed<N>``).
        configuration: an nnU-Net configuration, or an override prepared by :func:`prepare` (``2d_p320x320``).
        fold: 0-4, or ``"all"`` (every training case; nnU-Net then validates on the training cases).
        device: ``"cpu"`` or ``"cuda"`` (AMP on CUDA; the mLSTM runs in float32).
        resume: continue from ``checkpoint_latest.pth`` (as ``nnUNetv2_train --c``).
        stop_after_epoch: stop cleanly after this many epochs, keeping ``checkpoint_latest.pth`` (resume later).
        validate: run nnU-Net's final validation on the fold's validation cases (with ``num_gpus > 1`` nnU-Net's
            DDP path always runs it).
        num_gpus: GPUs for nnU-Net's DDP training (``nnUNetv2_train -num_gpus``; CUDA and NCCL). nnU-Net splits
            the batch size across the GPUs, so it must be at least ``num_gpus`` (docs/cluster.md).
        time_limit: a wall-clock budget from now (``"3h"``, seconds; default ``$XLSTM_UNET_TIME_LIMIT``): the
            training pauses at the first iteration past it, as on SIGTERM / SIGUSR1 / SIGUSR2
            (:mod:`xlstm_unet.pause`).

    Returns:
        The fold's output folder (``.../fold_0``) with ``checkpoint_final.pth`` (or only ``checkpoint_latest.pth``
        when it paused), ``run_config.json`` and nnU-Net's logs.
    """
    apply_env()
    check_device(device)
    if not isinstance(num_gpus, int) or isinstance(num_gpus, bool) or num_gpus < 1:
        raise ValueError(f"num_gpus must be a positive integer, got {num_gpus!r}")
    if num_gpus > 1 and not str(device).startswith("cuda"):
        raise ValueError(f"num_gpus={num_gpus} needs device='cuda' (nnU-Net's DDP training), got {device!r}")
    if num_gpus > 1 and batch_size is not None and batch_size < num_gpus:
        raise ValueError(f"batch_size {batch_size} < num_gpus {num_gpus}: nnU-Net splits the batch across the "
                         "GPUs, each needs at least one sample")
    tr = trainer_name(method, epochs=epochs, iterations=iterations, recipe=recipe, lr=lr, batch_size=batch_size,
                      amp=amp, seed=seed)
    plans = get_method(method).plans
    env = {STOP_AFTER_EPOCH_ENV: str(stop_after_epoch) if stop_after_epoch else None}
    if str(device) == "cpu" and "nnUNet_n_proc_DA" not in os.environ:
        env["nnUNet_n_proc_DA"] = "0"
    with pause_handling(time_limit), _env(**env):
        if num_gpus > 1:
            return _train_ddp(dataset, tr, plans, configuration, fold, resume, num_gpus)
        return _train_here(dataset, tr, plans, configuration, fold, device, resume, validate)


def _train_here(dataset, tr: str, plans: str, configuration: str, fold, device: str, resume: bool,
                validate: bool) -> Path:
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    trainer = get_trainer_from_args(str(_dataset_id(dataset)), configuration, fold, tr, plans,
                                    continue_training=resume, device=torch.device(device))
    maybe_load_checkpoint(trainer, resume, False)
    out = Path(trainer.output_folder)
    try:
        trainer.run_training()
    except TrainingPaused as paused:
        where = f"in epoch {paused.epoch} after iteration {paused.iteration}" if paused.iteration is not None \
            else f"after epoch {paused.epoch}"
        log.info("paused %s (%s); checkpoint %s", where, paused.reason, paused.checkpoint)
        return out
    if validate:
        trainer.perform_actual_validation(False)
    return out


def _train_ddp(dataset, tr: str, plans: str, configuration: str, fold, resume: bool, num_gpus: int) -> Path:
    """nnU-Net's own DDP path (``run_training(num_gpus=...)``: one process per GPU, NCCL). The ranks read the
    time limit left from the environment; a pause ends them with :data:`PAUSED_EXIT_CODE`."""
    import torch
    from nnunetv2.run.run_training import run_training
    from torch.multiprocessing import ProcessExitedException

    left = time_left()  # the ranks count their own budget from their start: pass them what is left of ours
    name = dataset_name(dataset)
    with _env(**{TIME_LIMIT_ENV: f"{max(left, 1.0):.0f}" if left is not None else os.environ.get(TIME_LIMIT_ENV)}):
        try:
            run_training(name, configuration, fold, tr, plans, num_gpus=num_gpus, continue_training=resume,
                         device=torch.device("cuda"))
        except ProcessExitedException as err:
            if err.exit_code != PAUSED_EXIT_CODE:
                raise
            log.info("paused (DDP rank %d exited with the paused status)", err.error_index)
    return Path(apply_env()["nnUNet_results"]) / name / f"{tr}__{plans}__{configuration}" / f"fold_{fold}"


def predict(model: str | os.PathLike, input_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
            folds: Sequence[int | str] | None = None, device: str = "cpu", checkpoint: str = "checkpoint_final.pth",
            mirroring: bool = True, num_processes: int = 0) -> Path:
    """Predict a folder of raw images (nnU-Net naming ``<case>_0000.<ext>``) with nnU-Net's predictor.

    Args:
        model: the trainer folder (``<trainer>__<plans>__<config>``) or one of its ``fold_X`` folders.
        folds: folds to ensemble (default: the given fold, or every fold with a checkpoint).
        num_processes: 0 predicts sequentially in this process (safest in notebooks and on CPU).

    Returns:
        ``output_dir``, holding one label map per case.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    predictor = load_predictor(model, folds=folds, device=device, checkpoint=checkpoint, mirroring=mirroring)
    output_dir.mkdir(parents=True, exist_ok=True)
    if num_processes == 0:
        predictor.predict_from_files_sequential(str(input_dir), str(output_dir), save_probabilities=False,
                                                overwrite=True)
    else:
        predictor.predict_from_files(str(input_dir), str(output_dir), save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=num_processes,
                                     num_processes_segmentation_export=num_processes)
    return output_dir


def check_device(device: str) -> None:
    """Raise ``ValueError`` unless ``device`` is ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, ``RuntimeError`` when CUDA
    is requested but not available."""
    import torch

    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but CUDA is not available")


def load_predictor(model: str | os.PathLike, *, folds: Sequence[int | str] | None = None, device: str = "cpu",
                   checkpoint: str = "checkpoint_final.pth", mirroring: bool = True, allow_tqdm: bool = True):
    """An ``nnUNetPredictor`` initialised from a trained model (see :func:`predict` for the arguments)."""
    apply_env()
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    check_device(device)
    model = Path(model)
    if model.name.startswith("fold_"):
        folds = folds or [model.name[5:]]
        model = model.parent
    if not (model / "plans.json").is_file():
        raise FileNotFoundError(f"{model} is not an nnU-Net model folder (no plans.json)")
    folds = [f if f == "all" else int(f) for f in folds] if folds else None
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=str(device).startswith("cuda"),
                                device=torch.device(device), verbose=False, allow_tqdm=allow_tqdm)
    predictor.initialize_from_trained_model_folder(str(model), folds, checkpoint_name=checkpoint)
    return predictor
