"""Helpers for the dataset tests: nnU-Net's integrity check run in-process, folder hashing, tiny fixture writers."""

from __future__ import annotations

import hashlib
import itertools
import types
from pathlib import Path

import numpy as np


class _SerialPool:
    """Stands in for ``multiprocessing.Pool`` inside nnU-Net's verify module: runs ``starmap`` in this process."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self) -> "_SerialPool":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def starmap(self, func, iterable):
        return list(itertools.starmap(func, iterable))


def verify_nnunet(folder: Path, monkeypatch) -> None:
    """Run ``nnunetv2...verify_dataset_integrity`` on ``folder`` with its checks executed in-process.

    The checks (label values, shapes, spacing, channel count, NaN) are nnU-Net's own functions; only the spawn pool
    is replaced, because starting spawn workers that re-import nnU-Net costs ~10-20 s per call on 2 busy cores.
    """
    import nnunetv2.experiment_planning.verify_dataset_integrity as vdi

    monkeypatch.setattr(vdi, "multiprocessing", types.SimpleNamespace(
        get_context=lambda *_a, **_k: types.SimpleNamespace(Pool=_SerialPool)))
    vdi.verify_dataset_integrity(str(folder), num_processes=1)


def tree_digest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def snapshot_mtimes(folder: Path) -> dict[str, tuple[int, str]]:
    """``{relative path: (mtime_ns, sha256)}``: to check that sources were not modified."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_nifti(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    """Write ``arr`` ``(X, Y, Z)`` as NIfTI with a diagonal affine of ``spacing`` (mm)."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), str(path))
    return path


def write_png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


# ----------------------------------------------------------------------------------------------------------------
# tiny format-faithful fixtures of the raw releases (same folder names, file names, dtypes and label values; the
# shapes are reduced for speed, except EndoVis frames, whose 1920 x 1080 size the official crop needs)


def _disks(shape, n, rng, r_range=(3, 6)) -> np.ndarray:
    """Instance map ``shape`` with ``n`` random disks (ids 1..n, later disks overwrite earlier ones)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inst = np.zeros(shape, dtype=np.uint16)
    for k in range(1, n + 1):
        r = rng.integers(*r_range)
        cy, cx = rng.integers(r, shape[0] - r), rng.integers(r, shape[1] - r)
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return inst


def make_kvasir(root: Path, n: int = 4, shape=(24, 32)) -> Path:
    """Kvasir-SEG layout: ``images/<id>.jpg`` RGB uint8, ``masks/<id>.png`` uint8 {0, 1}."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        cid = f"cju{k:04d}kvasir"
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(root / "images" / f"{cid}.jpg")
        mask = np.zeros(shape, np.uint8)
        mask[4:14, 6:20] = 1
        write_png(root / "masks" / f"{cid}.png", mask)
    return root


def make_brats23(root: Path, n: int = 10, shape=(12, 14, 10), dtype=np.int16) -> Path:
    """BraTS 2023 GLI layout: ``BraTS-GLI-XXXXX-000/BraTS-GLI-XXXXX-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``.

    Images ``dtype`` (int16 assumed), seg uint8 with values {0, 1, 2, 3}, 1 mm spacing.
    """
    rng = np.random.default_rng(2)
    for k in range(n):
        cid = f"BraTS-GLI-{k:05d}-000"
        for m in ("t1n", "t1c", "t2w", "t2f"):
            write_nifti(root / cid / f"{cid}-{m}.nii.gz", rng.integers(0, 1000, shape).astype(dtype))
        seg = np.zeros(shape, np.uint8)
        seg[2:9, 3:10, 2:8] = 2
        seg[4:7, 5:8, 3:6] = 3
        seg[5, 6, 4] = 1
        write_nifti(root / cid / f"{cid}-seg.nii.gz", seg)
    return root


def make_amos(root: Path, shape=(10, 12, 6)) -> Path:
    """AMOS 2022 release layout: ``imagesTr|imagesVa|imagesTs/amos_XXXX.nii.gz``, ``labelsTr|labelsVa`` (no
    ``labelsTs``, as in the challenge release); ids <= 500 CT (int16), > 500 MRI; labels uint8 AMOS values 0..15."""
    rng = np.random.default_rng(3)
    spacing = (1.2, 1.2, 6.0)
    for sub, ids in (("Tr", (1, 507, 508, 510)), ("Va", (2, 540, 541)), ("Ts", (520,))):
        for i in ids:
            write_nifti(root / f"images{sub}" / f"amos_{i:04d}.nii.gz",
                        rng.integers(0, 800, shape).astype(np.int16), spacing)
            if sub != "Ts":
                lab = np.zeros(shape, np.uint8)
                lab[1:4, 1:4, 1:3] = 6  # liver
                lab[5:7, 1:4, 1:3] = 1  # spleen
                lab[1:3, 6:9, 3:5] = 3  # left kidney
                lab[6:8, 6:9, 3:5] = 14  # bladder (not one of the 13 organs)
                write_nifti(root / f"labels{sub}" / f"amos_{i:04d}.nii.gz", lab, spacing)
    return root


def make_umamba_amos_test(root: Path, ids=(600, 601), shape=(10, 12, 6)) -> Path:
    """U-Mamba Dataset702 test layout: ``imagesTs/amos_XXXX_0000.nii.gz`` + ``labelsTs/amos_XXXX.nii.gz`` (0..13)."""
    rng = np.random.default_rng(4)
    for i in ids:
        write_nifti(root / "imagesTs" / f"amos_{i:04d}_0000.nii.gz", rng.integers(0, 800, shape).astype(np.int16),
                    (1.2, 1.2, 6.0))
        lab = np.zeros(shape, np.uint8)
        lab[1:4, 1:4, 1:3] = 1
        lab[5:7, 5:9, 2:5] = 13
        write_nifti(root / "labelsTs" / f"amos_{i:04d}.nii.gz", lab, (1.2, 1.2, 6.0))
    return root


#: EndoVis fixture: (instrument folder, rectangle rows, cols in full-frame pixels, part value)
ENDOVIS_MASKS = (
    ("Maryland_Bipolar_Forceps_labels", (300, 500), (400, 700), 10),
    ("Right_Prograsp_Forceps_labels", (600, 800), (900, 1300), 20),
    ("Other_labels", (760, 900), (1000, 1100), 40),  # overlaps the prograsp mask in rows 760..800
)


def make_endovis17(root: Path, train_videos=(1, 2), test_videos=(9,), frames=(0, 1)) -> Path:
    """EndoVis 2017 layout: ``train|test/instrument_dataset_<k>/left_frames/frameNNN.png`` (1920 x 1080 RGB uint8)
    and ``ground_truth/<Instrument>_labels/frameNNN.png`` (grey uint8, 0 background, part values 10..40)."""
    for split, videos in (("train", train_videos), ("test", test_videos)):
        for v in videos:
            vid = root / split / f"instrument_dataset_{v}"
            for f in frames:
                img = np.zeros((1080, 1920, 3), np.uint8)
                img[:, :, 0] = (np.arange(1920) // 8 % 256).astype(np.uint8)[None, :]
                img[:, :, 1] = (np.arange(1080) // 5 % 256).astype(np.uint8)[:, None]
                img[:, :, 2] = 20 * v + f
                write_png(vid / "left_frames" / f"frame{f:03d}.png", img)
                for name, (r0, r1), (c0, c1), val in ENDOVIS_MASKS:
                    m = np.zeros((1080, 1920), np.uint8)
                    m[r0:r1, c0:c1] = val
                    write_png(vid / "ground_truth" / name / f"frame{f:03d}.png", m)
    return root


def make_neurips_cells(root: Path) -> Path:
    """NeurIPS 2022 cells layout: ``Training-labeled|Tuning/images/cell_XXXXX.<png|bmp|tif|tiff>`` (grey or RGB,
    8/16 bit, one channel-first TIFF) and ``labels/cell_XXXXX_label.tiff`` (uint16 / uint32 instances)."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(5)
    shape = (48, 64)

    def image(inst, rgb):
        base = (inst > 0) * 150.0 + rng.normal(20, 5, shape)
        return np.repeat(base[..., None], 3, -1) if rgb else base

    specs = {
        "Training-labeled": [("cell_00001", ".png", "rgb8"), ("cell_00002", ".tif", "grey16"),
                             ("cell_00003", ".bmp", "rgb8"), ("cell_00004", ".tiff", "chw16")],
        "Tuning": [("cell_00001", ".tiff", "rgb8"), ("cell_00002", ".png", "grey8")],
    }
    for split, items in specs.items():
        for k, (cid, ext, kind) in enumerate(items):
            inst = _disks(shape, 6, rng)
            path = root / split / "images" / f"{cid}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "rgb8":
                arr = np.clip(image(inst, True), 0, 255).astype(np.uint8)
            elif kind == "grey8":
                arr = np.clip(image(inst, False), 0, 255).astype(np.uint8)
            elif kind == "grey16":
                arr = (image(inst, False) * 100).astype(np.uint16)
            else:  # channel-first 16-bit
                arr = np.moveaxis((image(inst, True) * 100).astype(np.uint16), -1, 0)
            if ext in (".tif", ".tiff"):
                tifffile.imwrite(path, arr)
            else:
                Image.fromarray(arr).save(path)
            lab_dtype = np.uint32 if k == 1 else np.uint16
            lpath = root / split / "labels" / f"{cid}_label.tiff"
            lpath.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(lpath, inst.astype(lab_dtype))
    return root
