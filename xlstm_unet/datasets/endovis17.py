"""EndoVis 2017 Robotic Instrument Segmentation, 7 instrument types -> ``Dataset702_EndoVis17``.

Format sources: the challenge's data description
(https://endovissub2017-roboticinstrumentsegmentation.grand-challenge.org/Data/): 8 training videos of 225 frames
(``instrument_dataset_1..8``) and a test set of 8 x 75 frames of the same videos plus 2 x 300 frames of two new
videos (``instrument_dataset_1..10``); frames ``left_frames/frameNNN.png`` are 1920 x 1080 RGB, and the 1280 x 1024
camera image is the crop from pixel (x 320, y 28); ground truth ``ground_truth/<Instrument_Name>_labels/frameNNN.png``
holds one grey mask per instrument (0 background, part values > 0). The instrument-type classes and their order
follow U-Mamba's ``Dataset704_Endovis17/dataset.json``.

Raw layout::

    <source>/train/instrument_dataset_<k>/left_frames/frameNNN.png
    <source>/train/instrument_dataset_<k>/ground_truth/<Instrument_Name>_labels/frameNNN.png
    <source>/test/instrument_dataset_<k>/...            (same structure; the released test ground truth)

Conversion: per frame, every instrument mask ``> 0`` is painted with its type (folders in sorted order, so later
folders win where masks overlap): 1 Bipolar Forceps (also "Maryland_Bipolar_Forceps"), 2 Prograsp Forceps,
3 Large Needle Driver, 4 Vessel Sealer, 5 Grasping Retractor, 6 Monopolar Curved Scissors, 7 Ultrasound Probe
("Other_labels"). Geometry: the official 1280 x 1024 crop, then ``downscale`` (default 2: block mean for the image,
the top-left pixel of each block for the label) to 640 x 512, then a centred crop to ``crop_hw`` (default
384 x 640, the paper's size; the paper does not say how it got there, so this resize-then-crop is our choice,
recorded in dataset.json). Case ids ``v<video>_frame<NNN>``. The split is the official one (train/test folders:
1800/1200 frames), i.e. by video and time. Protocol ``endoscopy``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from ._common import (
    CaseData,
    CasePlan,
    DatasetFormatError,
    DatasetInfo,
    DatasetPlan,
    Protocol,
    read_image_2d,
    require_dir,
)

__all__ = ["build_endovis17", "ENDOVIS17", "ENDOVIS_LABELS", "instrument_type"]

ENDOVIS_LABELS: dict[str, int] = {
    "background": 0, "Bipolar Forceps": 1, "Prograsp Forceps": 2, "Large Needle Driver": 3, "Vessel Sealer": 4,
    "Grasping Retractor": 5, "Monopolar Curved Scissors": 6, "Ultrasound Probe": 7}
_FOLDER_KEYS: tuple[tuple[str, int], ...] = (
    ("Bipolar_Forceps", 1), ("Prograsp_Forceps", 2), ("Large_Needle_Driver", 3), ("Vessel_Sealer", 4),
    ("Grasping_Retractor", 5), ("Monopolar_Curved_Scissors", 6), ("Ultrasound_Probe", 7), ("Other", 7))
#: The official camera crop of the 1920 x 1080 frames: rows 28..1052, columns 320..1600.
OFFICIAL_CROP: tuple[int, int, int, int] = (28, 320, 1024, 1280)
_SOURCE = "EndoVis 2017 Robotic Instrument Segmentation (Allan et al. 2019), " \
          "https://endovissub2017-roboticinstrumentsegmentation.grand-challenge.org/"


def instrument_type(folder_name: str) -> int | None:
    """Instrument-type label of a ground-truth folder name (``"Left_Prograsp_Forceps_labels"`` -> 2), else None."""
    for key, value in _FOLDER_KEYS:
        if key in folder_name:
            return value
    return None


def _geometry(arr: np.ndarray, path: Path, downscale: int, crop_hw: tuple[int, int] | None,
              is_label: bool) -> np.ndarray:
    y0, x0, h, w = OFFICIAL_CROP
    if arr.shape[0] < y0 + h or arr.shape[1] < x0 + w:
        raise DatasetFormatError(path, f"expected a 1920 x 1080 frame (H >= {y0 + h}, W >= {x0 + w}), got "
                                       f"{arr.shape[:2]}")
    arr = arr[y0:y0 + h, x0:x0 + w]
    if downscale > 1:
        if is_label:
            arr = arr[::downscale, ::downscale]
        else:
            hh, ww = h // downscale, w // downscale
            blocks = arr[:hh * downscale, :ww * downscale].reshape(hh, downscale, ww, downscale, -1)
            arr = np.round(blocks.astype(np.float64).mean(axis=(1, 3))).astype(np.uint8)
    if crop_hw is not None:
        ch, cw = crop_hw
        if ch > arr.shape[0] or cw > arr.shape[1]:
            raise ValueError(f"crop_hw {crop_hw} larger than the downscaled frame {arr.shape[:2]}")
        top, left = (arr.shape[0] - ch) // 2, (arr.shape[1] - cw) // 2
        arr = arr[top:top + ch, left:left + cw]
    return np.ascontiguousarray(arr)


def _load(frame: Path, masks: tuple[tuple[Path, int], ...], downscale: int,
          crop_hw: tuple[int, int] | None) -> CaseData:
    img = read_image_2d(frame)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise DatasetFormatError(frame, f"expected an RGB uint8 frame (H, W, 3), got {img.shape} {img.dtype}")
    label = np.zeros(img.shape[:2], dtype=np.uint8)
    for mask_path, value in masks:
        m = read_image_2d(mask_path)
        if m.ndim == 3:
            m = m.max(axis=-1)
        if m.shape != label.shape:
            raise DatasetFormatError(mask_path, f"image/label shape mismatch: frame {label.shape} "
                                                f"({frame.name}), mask {m.shape}")
        label[m > 0] = value
    return CaseData(channels=(_geometry(img, frame, downscale, crop_hw, False),),
                    label=_geometry(label, frame, downscale, crop_hw, True),
                    channel_files=(frame,), label_file=masks[0][0] if masks else None)


def _scan_split(split_dir: Path, subset: str, max_frames: int | None, downscale: int,
                crop_hw: tuple[int, int] | None) -> list[CasePlan]:
    require_dir(split_dir, f"EndoVis 2017 {subset} set; the official split needs both train/ and test/ in the "
                           f"source, each with instrument_dataset_<k>/ folders")
    videos = sorted((p for p in split_dir.iterdir() if p.is_dir() and p.name.startswith("instrument_dataset_")),
                    key=lambda p: int(p.name.rsplit("_", 1)[-1]) if p.name.rsplit("_", 1)[-1].isdigit() else 0)
    if not videos:
        raise DatasetFormatError(split_dir, "empty dataset: no instrument_dataset_<k>/ folders")
    plans: list[CasePlan] = []
    for vid in videos:
        k = vid.name.rsplit("_", 1)[-1]
        if not k.isdigit():
            raise DatasetFormatError(vid, "video folder must be named instrument_dataset_<number>")
        frames_dir = require_dir(vid / "left_frames", "left_frames")
        gt_dir = require_dir(vid / "ground_truth", "ground_truth")
        folders = []
        for f in sorted(p for p in gt_dir.iterdir() if p.is_dir()):
            t = instrument_type(f.name)
            if t is None:
                raise DatasetFormatError(f, "unknown instrument folder (expected <Instrument_Name>_labels with a "
                                            "known instrument type)")
            folders.append((f, t))
        if not folders:
            raise DatasetFormatError(gt_dir, "no <Instrument_Name>_labels folders")
        frames = sorted(frames_dir.glob("frame*.png"))
        if not frames:
            raise DatasetFormatError(frames_dir, "empty dataset: no frameNNN.png files")
        for frame in frames[:max_frames] if max_frames is not None else frames:
            masks = []
            for f, t in folders:
                mp = f / frame.name
                if not mp.is_file():
                    raise DatasetFormatError(mp, f"missing instrument mask for {frame}")
                masks.append((mp, t))
            cid = f"v{int(k):02d}_{frame.stem}"
            plans.append(CasePlan(case_id=cid, subset=subset,  # type: ignore[arg-type]
                                  load=partial(_load, frame, tuple(masks), downscale, crop_hw),
                                  files=(frame, *(m for m, _ in masks)), group=f"video{int(k):02d}"))
    return plans


def build_endovis17(source: Path, *, seed: int = 0, downscale: int = 2,
                    crop_hw: tuple[int, int] | None = (384, 640),
                    max_frames_per_video: int | None = None) -> DatasetPlan:
    """Plan the EndoVis 2017 conversion (see the module docstring). ``seed`` is unused (the split is official)."""
    source = require_dir(Path(source), "EndoVis 2017 source")
    if downscale < 1:
        raise ValueError(f"downscale must be >= 1, got {downscale}")
    crop = None if crop_hw is None else (int(crop_hw[0]), int(crop_hw[1]))
    cases = tuple(_scan_split(source / "train", "train", max_frames_per_video, downscale, crop)
                  + _scan_split(source / "test", "test", max_frames_per_video, downscale, crop))
    return DatasetPlan(
        name="EndoVis17",
        description="EndoVis 2017 robotic instrument segmentation (real data), 7 instrument types, official "
                    "train/test split by video.",
        reference=_SOURCE,
        licence="EndoVis 2017 challenge data terms (research use; see the challenge page)",
        channel_names={"0": "R", "1": "G", "2": "B"},
        labels=dict(ENDOVIS_LABELS),
        file_ending=".png",
        protocol=Protocol.ENDOSCOPY,
        synthetic=False,
        source=_SOURCE,
        seed=seed,
        cases=cases,
        dims=2,
        extra={"geometry": {"official_crop_yxhw": list(OFFICIAL_CROP), "downscale": downscale,
                            "center_crop_hw": None if crop is None else list(crop)},
               "options": {"max_frames_per_video": max_frames_per_video}},
        split_extra={"method": "official EndoVis 2017 split (train/ and test/ folders)"},
    )


ENDOVIS17 = DatasetInfo(
    name="endovis17", default_id=702, folder_name="EndoVis17", protocol=Protocol.ENDOSCOPY,
    summary="EndoVis 2017 robotic instruments, 2D RGB, 7 instrument types, official split (real; download needed)",
    build=build_endovis17,
    download="https://endovissub2017-roboticinstrumentsegmentation.grand-challenge.org/ (registration)",
    raw_layout="train|test/instrument_dataset_<k>/left_frames/frameNNN.png + ground_truth/<Name>_labels/frameNNN.png")
