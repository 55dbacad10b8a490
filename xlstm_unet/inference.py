"""Segment your own images with a trained model: ``xlstm-unet predict MODEL INPUT OUTPUT``.

    from xlstm_unet.inference import predict_images
    masks = predict_images("results/.../nnUNetTrainerXLSTMEnc__nnUNetPlans__2d", "my_photos/", "masks/",
                           overlay=True)

MODEL is a trained model folder (nnU-Net's ``<trainer>__<plans>__<configuration>`` or one of its ``fold_X``) or a
model zip (:mod:`xlstm_unet.nnunet.share`; checked, extracted to a temporary folder and removed afterwards).

INPUT, with any file names (no nnU-Net ``_0000`` naming):

- an image file: one case;
- a folder: each image file in it is one case, holding all channels (grey = 1 channel, RGB = 3); each sub-folder is
  one case with **one file per channel**, found by the model's channel names (``dataset.json`` ``channel_names``,
  case-insensitive): ``t1.nii.gz``, ``patient7_t1.nii.gz``, ``patient7-t1.nii.gz``, or nnU-Net's channel index
  ``patient7_0000.nii.gz``; other files there (e.g. ``seg.nii.gz``) are ignored. A sub-folder with a single image
  uses it for all channels;
- a case folder itself (no sub-folders, one file per channel as above): one case, for a multi-channel model.

2D models take PNG, JPEG, TIFF and BMP (JPEGs are decoded as the converters do, then fed losslessly); 3D models take
NIfTI (``.nii.gz``, ``.nii``), and also ``.nrrd`` / ``.mha``. Every case is checked against the model's
``dataset.json`` (channel count, grey vs RGB, 2D vs 3D, file type) before the model is loaded; an error names the
file. Inputs are never modified: they are staged (copied, converted or linked) with nnU-Net naming in a temporary
folder and predicted there with nnU-Net's predictor.

OUTPUT gets one mask per case, named like the input (``polyp 1.jpg`` -> ``polyp 1.png``; a case folder ``PGBM-009``
-> ``PGBM-009.nii.gz``) in the model's file type, label values as in ``dataset.json`` ``labels``; with ``overlay``
also ``overlays/<name>.png`` (image + masks in the project's label colours; for 3D the axial slice with the largest
mask). Results are written to a temporary folder next to OUTPUT and moved in when every case is done, so a failure
leaves OUTPUT as it was; existing masks are only replaced with ``overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlstm_unet.datasets._common import IMAGE_SUFFIXES_2D, DatasetFormatError, read_image_2d, write_array

__all__ = ["ModelInputs", "InputCase", "predict_images", "find_cases", "register", "VOLUME_SUFFIXES"]

log = logging.getLogger(__name__)

#: 3D file types accepted as input (SimpleITK reads them, as nnU-Net does).
VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")
_OVERLAYS = "overlays"


@dataclass(frozen=True)
class ModelInputs:
    """What a trained model expects, from its ``dataset.json``.

    Attributes:
        channel_names: channel names in channel order (``("R", "G", "B")``, ``("t1", "t1c", "t2", "flair")``).
        file_ending: nnU-Net's file type of the model (``.png``, ``.tif``, ``.nii.gz``); masks are written in it.
        dims: 2 or 3 (``dataset.json["xlstm_unet"]["dims"]``, else from ``file_ending``).
        num_classes: largest label value + 1 (for the overlay colours).
    """

    channel_names: tuple[str, ...]
    file_ending: str
    dims: int
    num_classes: int

    @classmethod
    def from_dataset_json(cls, path: Path) -> ModelInputs:
        import json

        ds = json.loads(Path(path).read_text())
        names = tuple(str(v) for _, v in sorted(ds["channel_names"].items(), key=lambda kv: int(kv[0])))
        ending = ds["file_ending"]
        dims = ds.get("xlstm_unet", {}).get("dims") or (3 if ending.lower() in VOLUME_SUFFIXES else 2)
        values = [v for lab in ds["labels"].values() for v in (lab if isinstance(lab, list) else [lab])]
        return cls(channel_names=names, file_ending=ending, dims=int(dims), num_classes=max(values) + 1)

    @property
    def suffixes(self) -> tuple[str, ...]:
        return IMAGE_SUFFIXES_2D if self.dims == 2 else VOLUME_SUFFIXES

    def describe(self) -> str:
        n = len(self.channel_names)
        return f"{n} channel{'s' if n > 1 else ''} ({', '.join(self.channel_names)})"


@dataclass(frozen=True)
class InputCase:
    """One case to segment: ``name`` (the mask's stem), its input ``files`` in channel order (an RGB file holds 3
    channels) and its ``source`` (the input file or case folder, for messages)."""

    name: str
    files: tuple[Path, ...]
    source: Path


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suf in sorted((*IMAGE_SUFFIXES_2D, *VOLUME_SUFFIXES), key=len, reverse=True):
        if name.endswith(suf):
            return suf
    return path.suffix.lower()


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(_suffix(path))]


def _check_type(path: Path, spec: ModelInputs) -> None:
    suf = _suffix(path)
    if suf in spec.suffixes:
        return
    if suf in VOLUME_SUFFIXES:
        raise DatasetFormatError(path, f"a 3D volume ({suf}), but this model segments 2D images "
                                       f"({', '.join(spec.suffixes)})")
    if suf in IMAGE_SUFFIXES_2D:
        raise DatasetFormatError(path, f"a 2D image ({suf}), but this model segments 3D volumes "
                                       f"({', '.join(spec.suffixes)})")
    raise DatasetFormatError(path, f"unsupported file type {suf or '(none)'!r}; this {spec.dims}D model takes "
                                   f"{', '.join(spec.suffixes)}")


def _channel_files(folder: Path, files: Sequence[Path], spec: ModelInputs) -> tuple[Path, ...] | None:
    """The files of a case folder in channel order, matched by channel name or index; None if none matches."""
    chosen: list[Path] = []
    for i, name in enumerate(spec.channel_names):
        n = name.lower()
        hits = [f for f in files if _stem(f).lower() == n or _stem(f).lower().endswith((f"_{n}", f"-{n}"))
                or _stem(f).endswith(f"_{i:04d}")]
        if len(hits) > 1:
            raise DatasetFormatError(hits[1], f"two files for channel {name!r} in this case folder (also "
                                              f"{hits[0].name})")
        if not hits:
            if not chosen and i == 0:
                return None
            raise DatasetFormatError(folder, f"no file for channel {name!r} (expected {name}<ext>, <case>_{name}"
                                             f"<ext> or <case>_{i:04d}<ext>; the model needs {spec.describe()})")
        chosen.append(hits[0])
    return tuple(chosen)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _folder_case(folder: Path, spec: ModelInputs) -> InputCase:
    images = [f for f in _visible(folder) if f.is_file() and _suffix(f) in (*IMAGE_SUFFIXES_2D, *VOLUME_SUFFIXES)]
    if len(images) == 1:
        return InputCase(folder.name, (images[0],), folder)
    files = _channel_files(folder, images, spec)
    if files is None:
        raise DatasetFormatError(folder, f"case folder without a file for channel {spec.channel_names[0]!r}; name "
                                         f"one file per channel after the model's channels: {spec.describe()}")
    return InputCase(folder.name, files, folder)


def find_cases(inputs: str | os.PathLike, spec: ModelInputs, *, exclude: Path | None = None) -> list[InputCase]:
    """The cases in ``inputs`` by the rules of the module docstring (``exclude``: a folder to skip, e.g. OUTPUT).

    Raises:
        FileNotFoundError: no such input. DatasetFormatError: no images, an unknown file type, a case folder
            without a channel, or two inputs that would write the same mask (each naming the file).
    """
    inputs = Path(inputs)
    if inputs.is_file():
        cases = [InputCase(_stem(inputs), (inputs,), inputs)]
    elif inputs.is_dir():
        entries = [p for p in _visible(inputs) if exclude is None or p.resolve() != exclude.resolve()]
        dirs = [p for p in entries if p.is_dir()]
        files = [p for p in entries if p.is_file()]
        single = None
        if not dirs and len(spec.channel_names) > 1:
            with contextlib.suppress(DatasetFormatError):  # not one case folder: a folder of cases
                single = _channel_files(inputs, [f for f in files if _suffix(f) in spec.suffixes], spec)
        if single is not None:
            cases = [InputCase(inputs.name, single, inputs)]
        else:
            cases = [InputCase(_stem(f), (f,), f) for f in files] + [_folder_case(d, spec) for d in dirs]
    else:
        raise FileNotFoundError(f"input {inputs} does not exist")
    if not cases:
        raise DatasetFormatError(inputs, f"no images found (expected {', '.join(spec.suffixes)} files, or one folder "
                                         f"per case)")
    seen: dict[str, InputCase] = {}
    for case in cases:
        for f in case.files:
            _check_type(f, spec)
        if case.name in seen:
            raise DatasetFormatError(case.source, f"its mask would have the same name as the mask of "
                                                  f"{seen[case.name].source.name} ({case.name}{spec.file_ending})")
        seen[case.name] = case
    return cases


# ---------------------------------------------------------------------------------------------------------------
# checking and staging one case


def _channel_error(path: Path, got: str, n_got: int, spec: ModelInputs) -> DatasetFormatError:
    n = len(spec.channel_names)
    if n == 3 and n_got == 1 and spec.dims == 2:
        hint = "; give an RGB image, or a case folder with one grey file per channel"
    elif n == 1 and n_got == 3:
        hint = "; convert it to greyscale"
    elif n_got < n:
        hint = "; give each case a folder of its own with one file per channel, named after the channels"
    else:
        hint = ""
    return DatasetFormatError(path, f"{got} with {n_got} channel{'s' if n_got != 1 else ''}, but the model expects "
                                    f"{spec.describe()}{hint}")


def _stage_2d(case: InputCase, spec: ModelInputs, stem: Path) -> list[Path]:
    arrays = [read_image_2d(f) for f in case.files]
    counts = [1 if a.ndim == 2 else a.shape[-1] for a in arrays]
    for f, a, c in zip(case.files, arrays, counts):
        if c == 4:
            raise DatasetFormatError(f, "an RGBA image with transparency; save it as RGB (no alpha channel)")
        if a.shape[:2] != arrays[0].shape[:2]:
            raise DatasetFormatError(f, f"size {a.shape[:2]} differs from {case.files[0].name} {arrays[0].shape[:2]}")
        if spec.file_ending == ".png" and a.dtype not in (np.uint8, np.uint16):
            raise DatasetFormatError(f, f"{a.dtype} pixels; this model reads 8- or 16-bit PNG: convert the image")
    if sum(counts) != len(spec.channel_names):
        f = case.files[0]
        got = "an RGB image" if len(arrays) == 1 and counts[0] == 3 else (
            "a grey image" if len(arrays) == 1 else f"a case of {len(arrays)} files")
        raise _channel_error(f, got, sum(counts), spec)
    out = []
    for c, a in enumerate(arrays):
        out.append(stem.parent / f"{stem.name}_{c:04d}{spec.file_ending}")
        write_array(out[-1], a, spec.file_ending)
    return out


def _stage_3d(case: InputCase, spec: ModelInputs, stem: Path) -> list[Path]:
    import SimpleITK as sitk

    infos = []
    for f in case.files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        try:
            reader.ReadImageInformation()
        except RuntimeError as err:
            raise DatasetFormatError(f, f"unreadable or corrupt volume ({str(err).strip().splitlines()[-1]})") from err
        dim, comps = reader.GetDimension(), reader.GetNumberOfComponents()
        if dim == 4 or comps > 1:
            raise DatasetFormatError(f, f"several channels in one file (a {dim}D volume with {comps} component(s) "
                                        f"per voxel); save one 3D file per channel in a case folder")
        if dim != 3:
            raise DatasetFormatError(f, f"a {dim}D image, but this model segments 3D volumes")
        infos.append((reader.GetSize(), reader.GetSpacing()))
    if len(case.files) != len(spec.channel_names):
        raise _channel_error(case.files[0], "a case of 1 volume" if len(case.files) == 1 else
                             f"a case of {len(case.files)} volumes", len(case.files), spec)
    for f, (size, spacing) in zip(case.files, infos):
        if size != infos[0][0] or not np.allclose(spacing, infos[0][1], rtol=1e-4):
            raise DatasetFormatError(f, f"geometry {size} / {spacing} mm differs from {case.files[0].name} "
                                        f"{infos[0][0]} / {infos[0][1]} mm")
    out = []
    for c, f in enumerate(case.files):
        out.append(stem.parent / f"{stem.name}_{c:04d}{spec.file_ending}")
        if _suffix(f) == spec.file_ending.lower():
            out[-1].symlink_to(f.resolve())
        else:
            sitk.WriteImage(sitk.ReadImage(str(f)), str(out[-1]), useCompression=True)
    return out


def _overlay(staged: Sequence[Path], mask: Path, spec: ModelInputs, dest: Path) -> None:
    """PNG of the first input file with the mask in the shared label colours (3D: the slice with most mask)."""
    from xlstm_unet.figures import normalize_intensity, overlay_labels

    if spec.dims == 2:
        img, lab = read_image_2d(staged[0]), read_image_2d(mask)
        img = img / 255.0 if img.dtype == np.uint8 else normalize_intensity(img)
    else:
        import SimpleITK as sitk

        vol = sitk.GetArrayFromImage(sitk.ReadImage(str(staged[0])))  # (Z, Y, X)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(mask)))
        z = int(np.argmax((labels > 0).sum(axis=(1, 2)))) if labels.any() else labels.shape[0] // 2
        img, lab = normalize_intensity(vol[z]), labels[z]
    rgb = overlay_labels(img, lab, opacity=0.5, num_classes=spec.num_classes)
    write_array(dest, np.round(rgb * 255).astype(np.uint8), ".png")


# ---------------------------------------------------------------------------------------------------------------
# the command


def predict_images(model: str | os.PathLike, inputs: str | os.PathLike, output: str | os.PathLike, *,
                   device: str = "cpu", overlay: bool = False, folds: Sequence[int | str] | None = None,
                   checkpoint: str = "checkpoint_final.pth", overwrite: bool = False, trust: bool = False,
                   progress: bool = True) -> list[Path]:
    """Segment ``inputs`` with a trained model and write one mask per case into ``output``.

    Args:
        model: model folder (``<trainer>__<plans>__<config>`` or ``fold_X``) or model zip.
        inputs: an image file, a folder of images and/or case folders, or one case folder (module docstring).
        output: folder for the masks (created); ``output/overlays/`` with ``overlay``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        folds: folds to ensemble (default: the given fold, or every fold with ``checkpoint``).
        checkpoint: checkpoint file in each fold (``checkpoint_best.pth``, ``checkpoint_latest.pth``).
        overwrite: replace masks (and overlays) that exist in ``output``.
        trust: for a model zip: skip the checkpoint checks of :mod:`xlstm_unet.nnunet.share`.
        progress: show a progress bar over the cases.

    Returns:
        The written masks, in case order.

    Raises:
        DatasetFormatError: an input does not fit the model (the message names the file). FileExistsError: a mask
            exists and ``overwrite`` is false. FileNotFoundError: no such model, input or checkpoint.
    """
    from tqdm.auto import tqdm

    from xlstm_unet.nnunet.api import check_device, load_predictor
    from xlstm_unet.nnunet.share import model_folds, opened_model

    check_device(device)
    output = Path(output)
    with opened_model(model, trust=trust) as model_dir:
        trainer_dir, fold_names = model_folds(model_dir, folds, checkpoint)
        spec = ModelInputs.from_dataset_json(trainer_dir / "dataset.json")
        cases = find_cases(inputs, spec, exclude=output)
        finals = [output / f"{c.name}{spec.file_ending}" for c in cases]
        finals += [output / _OVERLAYS / f"{c.name}.png" for c in cases] if overlay else []
        taken = [p for p in finals if p.exists()]
        if taken and not overwrite:
            raise FileExistsError(f"{taken[0]} exists ({len(taken)} of the outputs do); pass overwrite=True (CLI: "
                                  f"--overwrite) to replace them")
        with tempfile.TemporaryDirectory(prefix="xlstm-unet-predict-") as stage:
            stage_fn = _stage_2d if spec.dims == 2 else _stage_3d
            staged = [stage_fn(c, spec, Path(stage) / f"case{i:04d}")
                      for i, c in enumerate(tqdm(cases, desc="checking inputs", unit="case", disable=not progress,
                                                 leave=False))]
            with contextlib.redirect_stdout(io.StringIO()) as said:  # keep stdout for the CLI's result line
                predictor = load_predictor(trainer_dir, folds=fold_names, device=device, checkpoint=checkpoint,
                                           allow_tqdm=False)
            log.debug("nnU-Net: %s", said.getvalue())
            output.parent.mkdir(parents=True, exist_ok=True)
            tmp = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:12]}"
            (tmp / _OVERLAYS).mkdir(parents=True)
            try:
                for case, files in zip(tqdm(cases, desc="predicting", unit="case", disable=not progress), staged):
                    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints a few lines per call
                        predictor.predict_from_files_sequential([[str(f) for f in files]], [str(tmp / case.name)],
                                                                save_probabilities=False, overwrite=True)
                    if overlay:
                        _overlay(files, tmp / f"{case.name}{spec.file_ending}", spec,
                                 tmp / _OVERLAYS / f"{case.name}.png")
                _move_into(tmp, output, [f.relative_to(output) for f in finals])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %d masks to %s", len(cases), output)
    return finals[:len(cases)]


def _move_into(tmp: Path, output: Path, names: Sequence[Path]) -> None:
    """Move the finished results into ``output``: one rename when it is new, else file by file."""
    if not output.exists():
        keep = {tmp / n for n in names} | {tmp / _OVERLAYS}
        for p in tmp.iterdir():  # nnU-Net's dataset.json, plans.json and argument record
            if p not in keep:
                p.unlink()
        if not any((tmp / _OVERLAYS).iterdir()):
            (tmp / _OVERLAYS).rmdir()
        tmp.rename(output)
        return
    for n in names:
        (output / n).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / n, output / n)


def _run(args: argparse.Namespace) -> int:
    try:
        masks = predict_images(args.model, args.input, args.output, device=args.device, overlay=args.overlay,
                               folds=args.folds, checkpoint=args.checkpoint, overwrite=args.overwrite,
                               trust=args.trust, progress=not args.quiet)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"xlstm-unet predict: error: {err}", file=sys.stderr)
        return 2
    print(Path(args.output))
    log.debug("masks: %s", masks)
    return 0


def register(subparsers) -> None:
    """Add the ``predict`` sub-command."""
    p = subparsers.add_parser("predict", help="segment your own images with a trained model (folder or zip)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="<trainer>__<plans>__<config> folder, one of its fold_X, or a zip")
    p.add_argument("input", metavar="INPUT", help="an image, a folder of images / case folders, or one case folder")
    p.add_argument("output", metavar="OUTPUT", help="folder for the masks (created)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--overlay", action="store_true", help="also write OUTPUT/overlays/<name>.png")
    p.add_argument("--folds", nargs="+", default=None, help="folds to ensemble (default: all with a checkpoint)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file of each fold")
    p.add_argument("--overwrite", action="store_true", help="replace existing masks in OUTPUT")
    p.add_argument("--trust", action="store_true", help="model zip: skip the checkpoint checks (trusted source only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
