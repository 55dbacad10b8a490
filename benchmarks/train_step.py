"""Cost of every method: train-step time, peak memory, parameters, forward FLOPs and sliding-window inference time.

Usage::

    .venv/bin/python benchmarks/train_step.py --json                 # CPU, 2D 256x256 and 3D 32x96x96, batch 2
    .venv/bin/python benchmarks/train_step.py --json --quick         # small sizes, 1 timed step (minutes)
    python benchmarks/train_step.py --json --device cuda --paper-sizes   # GPU: 2D 320x320 b12, 3D 48x160x224 b2
    .venv/bin/python benchmarks/train_step.py --json --models none --methods nnunet,xlstm_enc \
        --plans data/nnUNet_preprocessed/Dataset911_KvasirSEG/nnUNetPlans.json --configuration 2d_sp2x2 --batch 2

``--json`` prints ONE JSON object on stdout (progress goes to stderr)::

    {"device": "cpu", "amp": false, "repeats": 3, "mode": "full" | "quick" | "paper-sizes" | "plans",
     "rows": [{"model": str, "dim": 2|3, "size": [..], "batch": int, "params": int, "flops": int, "step_s": float,
               "peak_mb": float, "peak_rss_mb": float, "infer_s": float | null, "case_shape": [..] | null,
               "vil_stages": [int, ...]}, ...]}

  A row that cannot run keeps its place with ``"not_run": "<reason>"`` (e.g. a method defined for 3D only) and
  ``null`` numbers; a row that failed has ``"not_run": "failed"`` and ``"error"``.
- Method rows (``--methods``, default ``all``): every method of the registry (:data:`xlstm_unet.nnunet.METHODS`),
  its network built by its own nnU-Net trainer (``network_for_plans``: the MONAI and paper baselines round the
  patch up to their divisor, U-Mamba and xLSTM-UNet take the plans' stages) from synthetic plans with the
  configurations below (``nnUNetPlans``: PlainConvUNet stages; ``nnUNetResEncUNetMPlans``: ResEnc M) or from a
  dataset's plans (``--plans``). ``infer_s``: nnU-Net's predictor segmenting one case (sliding window, step 0.5,
  Gaussian, no mirroring) of 1.5 times the patch per axis (synthetic plans: 2 windows per axis) or the
  configuration's median size (``--plans``).
- Network rows (``--models``, default ``resenc,bot,enc,enc_official``): ``resenc`` (dynamic-network-architectures'
  ResidualEncoderUNet, nnU-Net's ResEnc) and XLSTMUNet with ``vil_placement`` = ``bot``, ``enc``, ``enc_official``
  (residual encoder, residual decoder as in the paper) on the same stages, with the ViL defaults (on CPU: long
  sequences in pieces, checkpointed). Opt-in: ``enc_ckpt`` (enc with gradient checkpointing of every ViL stage),
  ``resunet`` (XLSTMUNet without ViL: the residual decoder's own cost) and ``enc_stub`` (enc with the mLSTM kernel
  replaced by an elementwise stand-in: a lower bound on enc's step time with any kernel).
- Configurations (1 input channel, 4 classes, deep supervision where the network has it): 2D 256x256, 7 stages,
  features 32..512; 3D 32x96x96, 5 stages, features 32..320; ``--quick`` 2D 64x64 and 3D 16x64x64 (the smallest at
  which every method trains; SwinUNETR's 1/32 bottleneck needs an axis of 64).
- One train step = forward, deep-supervision cross-entropy (nnU-Net's 1/2^i weights), backward, AdamW step. ``step_s``
  is the median of ``--repeats`` steps after ``--warmup`` steps. ``flops``: forward FLOPs of one sample
  (``torch.utils.flop_counter.FlopCounterMode``: matmuls and convolutions, 2 per multiply-add).
- Every row runs in its own process (:func:`xlstm_unet.benchmarking.run_in_child`; forked on CPU after the imports,
  spawned on CUDA). ``peak_rss_mb`` is that process's max RSS; ``peak_mb`` is the peak RSS on CPU and
  ``torch.cuda.max_memory_allocated`` on CUDA.
- On CUDA the step runs under bf16 autocast (nnU-Net trains with AMP; bf16 needs no grad scaler), unless ``--no-amp``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from xlstm_unet.benchmarking import ChildFailed, peak_memory_mb, peak_rss_mb, run_in_child  # noqa: E402

logger = logging.getLogger("train_step")

MODELS = ("resenc", "bot", "enc", "enc_official")
EXTRA_MODELS = ("resunet", "enc_ckpt", "enc_stub")
"""Opt-in with ``--models``: ``resunet`` is dynamic-network-architectures' ResidualUNet, i.e. XLSTMUNet without ViL
(residual decoder), which separates the ViL cost from the residual decoder's; ``enc_ckpt`` is ``enc`` with gradient
checkpointing of every ViL stage (``vil_kwargs={"checkpoint": True}``; the default ``None`` checkpoints the stages
that run in pieces, i.e. the long sequences on CPU); ``enc_stub`` is ``enc`` with the mLSTM kernel replaced by an
elementwise stand-in (:func:`stub_mlstm`, no sequence mixing): not a model, a lower bound on ``enc``'s step time with
an infinitely fast kernel, i.e. what the rest of the ViL stages (projections, conv, norms, gating) costs."""
ENC_VARIANTS = ("enc_ckpt", "enc_stub")
"""The extra models that build ``enc`` (placement ``"enc"``) and differ in how they run it."""
DIMS = (2, 3)
PRELOAD = ("torch", "dynamic_network_architectures.architectures.unet", "xlstm_unet.networks")
"""Modules the parent imports before forking the workers (~2.5 s that each worker would otherwise spend)."""


@dataclass(frozen=True)
class Config:
    """One benchmark configuration; ``strides[s]`` and ``size`` are per spatial axis."""

    size: tuple[int, ...]
    batch: int
    features: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    blocks: tuple[int, ...]
    input_channels: int = 1
    num_classes: int = 4


def get_config(dim: int, *, quick: bool, paper_sizes: bool) -> Config:
    """The configuration for ``dim`` (2 or 3); ``quick`` gives tiny sizes, ``paper_sizes`` the paper's patches."""
    if quick:  # the smallest sizes at which every method trains (SwinUNETR's 1/32 bottleneck needs an axis of 64)
        if dim == 2:
            return Config((64, 64), 2, (8, 16, 16, 16), ((1, 1),) + ((2, 2),) * 3, (1, 1, 1, 1))
        return Config((16, 64, 64), 2, (8, 8, 16, 16), ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)), (1, 1, 1, 1))
    if dim == 2:
        size, batch = ((320, 320), 12) if paper_sizes else ((256, 256), 2)
        return Config(size, batch, (32, 64, 128, 256, 512, 512, 512), ((1, 1),) + ((2, 2),) * 6, (1, 3, 4, 6, 6, 6, 6))
    size = (48, 160, 224) if paper_sizes else (32, 96, 96)
    return Config(size, 2, (32, 64, 128, 256, 320), ((1, 1, 1), (1, 2, 2)) + ((2, 2, 2),) * 3, (1, 3, 4, 6, 6))


def synthetic_plans(dim: int, config: Config) -> dict[str, dict]:
    """nnU-Net plans (``nnUNetPlans``: PlainConvUNet; ``nnUNetResEncUNetMPlans``: ResidualEncoderUNet) with one
    configuration, ``"bench"``, holding ``config``'s stages: what a registry method's trainer builds from."""
    conv = "torch.nn.modules.conv.Conv%dd" % dim
    common = {
        "n_stages": len(config.features), "features_per_stage": list(config.features), "conv_op": conv,
        "kernel_sizes": [[3] * dim] * len(config.features), "strides": [list(s) for s in config.strides],
        "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm%dd" % dim,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    n = len(config.features)
    archs = {
        "nnUNetPlans": ("dynamic_network_architectures.architectures.unet.PlainConvUNet",
                        {"n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1)}),
        "nnUNetResEncUNetMPlans": ("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                                   {"n_blocks_per_stage": list(config.blocks), "n_conv_per_stage_decoder": [1] * (n - 1)}),
    }
    out = {}
    for plans_id, (cls, extra) in archs.items():
        configuration = {
            "data_identifier": f"{plans_id}_bench", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": config.batch, "patch_size": list(config.size),
            "median_image_size_in_voxels": list(config.size), "spacing": [1.0] * dim,
            "normalization_schemes": ["ZScoreNormalization"] * config.input_channels,
            "use_mask_for_norm": [False] * config.input_channels,
            "architecture": {"network_class_name": cls, "arch_kwargs": {**common, **extra},
                             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        }
        out[plans_id] = {"dataset_name": "Dataset000_Bench", "plans_name": plans_id,
                         "transpose_forward": list(range(3)), "transpose_backward": list(range(3)),
                         "configurations": {"bench": configuration}}
    return out


def build_method(method: str, dim: int, config: Config, plans: dict[str, dict] | None = None,
                 configuration: str = "bench"):
    """The network of a registry method (:data:`xlstm_unet.nnunet.METHODS`) as its nnU-Net trainer builds it from
    ``plans`` (plans identifier -> plans dict; default :func:`synthetic_plans`), with the trainer's patch size."""
    from xlstm_unet.nnunet.methods import get_method
    from xlstm_unet.nnunet.variants import trainer_class

    meth = get_method(method)
    plans = plans or synthetic_plans(dim, config)
    if meth.plans not in plans:
        raise ValueError(f"method {method!r} needs plans {meth.plans!r}; have {sorted(plans)}")
    cls = trainer_class(meth.trainer)
    net, patch = cls.network_for_plans(plans[meth.plans], configuration, config.input_channels, config.num_classes)
    return net, patch, cls.plans_for_network(plans[meth.plans], configuration)


def sliding_window_seconds(net, plans: dict, configuration: str, config: Config, case_shape, device) -> float:
    """Seconds for nnU-Net's predictor to segment one case of ``case_shape`` (spatial) with ``net``: sliding window
    at step 0.5 with Gaussian weighting, no test-time mirroring (nnU-Net's default mirrors, 4x in 2D, 8x in 3D)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    labels = {"background": 0, **{f"class{k}": k for k in range(1, config.num_classes)}}
    ds_json = {"labels": labels, "channel_names": {str(c): f"c{c}" for c in range(config.input_channels)}}
    decoder = getattr(net, "decoder", None)
    if decoder is not None and hasattr(decoder, "deep_supervision"):
        decoder.deep_supervision = False  # as nnU-Net's predictor builds it
    with contextlib.redirect_stdout(sys.stderr):  # nnU-Net prints notes; stdout carries the JSON
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, allow_tqdm=False)
        predictor.manual_initialization(net, pm, cm, None, ds_json, "benchmark", None)
        image = torch.randn(config.input_channels, *([1] if len(case_shape) == 2 else []), *case_shape)
        start = time.perf_counter()
        with torch.no_grad():
            predictor.predict_sliding_window_return_logits(image)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def build_model(model: str, dim: int, config: Config):
    """Build ``model`` for ``config`` with nnU-Net's kwargs and init (``network.apply(network.initialize)``)."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet, ResidualUNet
    from torch import nn

    from xlstm_unet.networks import XLSTMUNet

    n_stages = len(config.features)
    kwargs = dict(
        input_channels=config.input_channels,
        n_stages=n_stages,
        features_per_stage=list(config.features),
        conv_op=nn.Conv2d if dim == 2 else nn.Conv3d,
        kernel_sizes=[[3] * dim] * n_stages,
        strides=[list(s) for s in config.strides],
        num_classes=config.num_classes,
        n_conv_per_stage_decoder=[1] * (n_stages - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
    )
    if model == "resenc":
        net = ResidualEncoderUNet(**kwargs, n_blocks_per_stage=list(config.blocks))
    elif model == "resunet":
        net = ResidualUNet(**kwargs, n_blocks_per_stage=list(config.blocks))
    elif model in MODELS or model in ENC_VARIANTS:
        net = XLSTMUNet(
            **kwargs,
            n_blocks_per_stage=list(config.blocks),
            vil_placement="enc" if model in ENC_VARIANTS else model,
            vil_kwargs={"checkpoint": True} if model == "enc_ckpt" else None,
            patch_size=list(config.size),
        )
    else:
        raise ValueError(f"unknown model {model!r}; expected one of {MODELS + EXTRA_MODELS}")
    net.apply(net.initialize)
    return net


def stub_mlstm(q, k, v, i, f, *, state=None, return_state=False, **_):
    """Elementwise stand-in for :func:`xlstm_unet.vil.mlstm` (``enc_stub``): ``h = v + q * k + i + f``, ``(B, NH, S,
    DH)``, in the kernel's compute dtype, and with ``return_state`` an empty state of the kernel's shapes. It mixes no
    tokens; it only keeps the layer's data flow (and gradients to q, k, v, i, f) at the cost of four elementwise ops
    (memory-bound, like the real kernel's own elementwise part)."""
    from xlstm_unet.vil import _compute_dtype

    dtype = _compute_dtype(q)
    q, k, v, i, f = (t.to(dtype) for t in (q, k, v, i, f))
    h = v + q * k + (i + f)[..., None]  # (B, NH, S, DH)
    if not return_state:
        return h
    B, NH, _, DH = q.shape
    return h, (q.new_zeros(B, NH, DH, v.shape[-1]), q.new_zeros(B, NH, DH), q.new_zeros(B, NH))


@contextmanager
def mlstm_replaced(enabled: bool) -> Iterator[None]:
    """Within the block, the ViL layers call :func:`stub_mlstm` instead of the mLSTM kernel when ``enabled``."""
    if not enabled:
        yield
        return
    import xlstm_unet.vil as vil

    original, vil.mlstm = vil.mlstm, stub_mlstm
    try:
        yield
    finally:
        vil.mlstm = original


def _target_like(output, batch: int, num_classes: int, device):
    import torch

    return torch.randint(0, num_classes, (batch, *output.shape[2:]), device=device)


def forward_flops(net, x) -> int:
    """Forward FLOPs of ``net`` for one sample of ``x`` (``torch.utils.flop_counter.FlopCounterMode``; counts the
    matmuls and convolutions, 2 FLOPs per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net.eval()  # batch and instance norms refuse one sample with a single bottleneck voxel in training mode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x[:1])
    net.train()
    return int(counter.get_total_flops())


def run_worker(model: str, dim: int, config: Config, device_name: str, amp: bool, warmup: int, repeats: int,
               plans: dict | None = None, configuration: str = "bench", case_shape=None) -> dict:
    """Time ``warmup + repeats`` train steps of one model in this process; returns one result row.

    ``model`` is a network of :data:`MODELS` / :data:`EXTRA_MODELS` or a registry method (``plans``: the method's
    nnU-Net plans by identifier; default :func:`synthetic_plans` of ``config``). For a registry method with
    ``case_shape``, the row also times nnU-Net's sliding-window prediction of one case of that shape
    (``infer_s``, :func:`sliding_window_seconds`).
    """
    import torch
    import torch.nn.functional as F

    from xlstm_unet.nnunet.methods import METHODS

    device = torch.device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    method_plans = None
    if model in METHODS:
        net, size, method_plans = build_method(model, dim, config, plans, configuration)
    else:
        net, size = build_model(model, dim, config), tuple(config.size)
    net = net.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(config.batch, config.input_channels, *size, device=device)
    flops = forward_flops(net, x)
    targets: list = []

    def loss_of(outputs):
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        if not targets:  # one target per output (highest resolution first), as nnU-Net's DS downsampling gives
            targets.extend(_target_like(o, config.batch, config.num_classes, device) for o in outputs)
        weights = [1 / 2**i for i in range(len(outputs))]
        if len(weights) > 1:
            weights[-1] = 0.0  # nnU-Net drops the lowest-resolution output from the loss
        total = sum(weights)
        return sum(w / total * F.cross_entropy(o.float(), t) for w, o, t in zip(weights, outputs, targets))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> float:
        sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_of(net(x))
        loss.backward()
        optimizer.step()
        sync()
        return time.perf_counter() - start

    with mlstm_replaced(model == "enc_stub"):
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = [step() for _ in range(repeats)]
    peak_rss, peak_mb = peak_rss_mb(), peak_memory_mb(device)
    infer_s = None
    if method_plans is not None and case_shape is not None:
        infer_s = sliding_window_seconds(net, method_plans, configuration, config, case_shape, device)
    return {
        "model": model,
        "dim": dim,
        "size": list(size),
        "batch": config.batch,
        "params": sum(p.numel() for p in net.parameters()),
        "flops": flops,
        "step_s": statistics.median(times),
        "peak_mb": peak_mb,
        "peak_rss_mb": peak_rss,
        "infer_s": infer_s,
        "case_shape": list(case_shape) if infer_s is not None else None,
        "vil_stages": list(getattr(net, "vil_stages", [])),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from xlstm_unet.nnunet.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default cpu)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run); 1 timed step")
    parser.add_argument("--paper-sizes", action="store_true", help="2D 320x320 batch 12, 3D 48x160x224 batch 2")
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated subset of {MODELS + EXTRA_MODELS}, or none (default: {MODELS})",
    )
    parser.add_argument("--methods", default="all",
                        help="comma-separated registry methods built by their nnU-Net trainers, 'all' (default) or "
                             f"'none'; known: {sorted(METHODS)}")
    parser.add_argument("--plans", default=None,
                        help="a dataset's nnUNetPlans.json (nnU-Net_preprocessed/<Dataset>/): the method rows use "
                             "its configuration (--configuration), batch size, channels and classes instead of the "
                             "built-in sizes (nnUNetResEncUNetMPlans.json beside it for resenc_m)")
    parser.add_argument("--configuration", default=None, help="configuration of --plans (e.g. 2d_sp2x2)")
    parser.add_argument("--batch", type=int, default=None, help="batch size of the --plans rows (default: plans')")
    parser.add_argument("--dims", default="2,3", help="comma-separated subset of 2,3")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps, median reported (default 3; 1 quick)")
    parser.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--no-inference", dest="inference", action="store_false",
                        help="skip the sliding-window inference time of the method rows")
    args = parser.parse_args(argv)
    if args.quick and args.paper_sizes:
        parser.error("--quick and --paper-sizes exclude each other")
    args.models = [m for m in args.models.split(",") if m and m != "none"]
    unknown = sorted(set(args.models) - set(MODELS + EXTRA_MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected a subset of {list(MODELS + EXTRA_MODELS)}")
    args.methods = list(METHODS) if args.methods == "all" else \
        [m for m in args.methods.split(",") if m and m != "none"]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; known: {sorted(METHODS)}")
    if not args.models and not args.methods:
        parser.error("nothing to run: give --models or --methods")
    if (args.plans is None) != (args.configuration is None):
        parser.error("--plans and --configuration go together")
    try:
        args.dims = [int(d) for d in args.dims.split(",") if d]
    except ValueError:
        parser.error(f"--dims must be a comma-separated subset of 2,3, got {args.dims!r}")
    if not args.dims or set(args.dims) - set(DIMS):
        parser.error(f"--dims must be a comma-separated subset of 2,3, got {args.dims}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1 or args.warmup < 0:
        parser.error(f"need --repeats >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    args.amp = args.device == "cuda" and not args.no_amp
    args.mode = "plans" if args.plans else "quick" if args.quick else "paper-sizes" if args.paper_sizes else "full"
    return args


def load_plans(plans_file: str | Path, configuration: str, batch: int | None) -> tuple[int, Config, dict]:
    """A dataset's plans for the method rows: ``(dim, config, plans by identifier)``; ``config`` holds the
    configuration's patch size, batch size (or ``batch``), channels and classes (from ``dataset.json`` beside it)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_file = Path(plans_file)
    plans = {}
    for path in [plans_file, plans_file.with_name("nnUNetResEncUNetMPlans.json")]:
        if path.is_file():
            obj = json.loads(path.read_text())
            plans[obj["plans_name"]] = obj
    first = json.loads(plans_file.read_text())
    cm = PlansManager(first).get_configuration(configuration)
    ds = json.loads((plans_file.parent / "dataset.json").read_text())
    n_in = len(ds["channel_names"])
    n_out = len(ds["labels"])
    config = Config(tuple(cm.patch_size), batch or cm.batch_size, (), (), (), input_channels=n_in, num_classes=n_out)
    return len(cm.patch_size), config, plans


def median_case(plans_file: str | Path, configuration: str) -> list[int]:
    """The configuration's median case size (voxels, after resampling): the case whose prediction is timed."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(json.loads(Path(plans_file).read_text())).get_configuration(configuration)
    return [int(round(s)) for s in cm.median_image_size_in_voxels][-len(cm.patch_size):]


def _not_run(model: str, dim: int, config: Config, reason: str) -> dict:
    return {"model": model, "dim": dim, "size": list(config.size), "batch": config.batch, "params": None,
            "flops": None, "step_s": None, "peak_mb": None, "not_run": reason}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for name in PRELOAD:  # imported once here; on CPU every model then runs in a child forked from this process
        importlib.import_module(name)
    from xlstm_unet.nnunet.methods import get_method

    jobs = []  # (model, dim, config, plans, configuration, case shape for the inference time)
    if args.plans:
        dim, config, plans = load_plans(args.plans, args.configuration, args.batch)
        case = median_case(args.plans, args.configuration) if args.inference else None
        jobs += [(m, dim, config, plans, args.configuration, case) for m in args.methods]
    else:
        for dim in args.dims:
            config = get_config(dim, quick=args.quick, paper_sizes=args.paper_sizes)
            # 1.5 times the patch per axis: 2 windows each at step 0.5, so every window overlaps its neighbour
            case = [s + s // 2 for s in config.size] if args.inference else None
            jobs += [(m, dim, config, None, "bench", case) for m in [*args.models, *args.methods]]
    rows, failed = [], False
    for model, dim, config, plans, configuration, case in jobs:
        if model not in MODELS + EXTRA_MODELS and dim not in get_method(model).dims:
            reason = f"{model} is defined for {'/'.join(f'{d}D' for d in get_method(model).dims)} only"
            logger.info("%s %dD: not run (%s)", model, dim, reason)
            rows.append(_not_run(model, dim, config, reason))
            continue
        logger.info("%s %dD ...", model, dim)
        try:
            row = run_in_child(run_worker, model, dim, config, args.device, args.amp, args.warmup, args.repeats,
                               plans, configuration, case if model not in MODELS + EXTRA_MODELS else None,
                               device=args.device)
        except ChildFailed as error:
            failed = True
            logger.error("%s %dD failed: %s", model, dim, str(error)[-4000:])
            rows.append({**_not_run(model, dim, config, "failed"), "error": str(error).strip().splitlines()[-1]})
            continue
        logger.info("  step %.3f s, peak %.0f MB, %d params, %.3g GFLOP%s", row["step_s"], row["peak_mb"],
                    row["params"], row["flops"] / 1e9,
                    f", one case {row['infer_s']:.2f} s" if row.get("infer_s") is not None else "")
        rows.append(row)
    result = {"device": args.device, "amp": args.amp, "repeats": args.repeats, "mode": args.mode, "rows": rows}
    if args.plans:
        result["plans"] = {"file": str(args.plans), "configuration": args.configuration}
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for row in rows:
            what = f"not run: {row['not_run']}" if row.get("not_run") else \
                f"step {row['step_s']} s, peak {row['peak_mb']} MB, params {row['params']}, flops {row['flops']}"
            sys.stdout.write(f"{row['model']:>18} {row['dim']}D {row['size']} b{row['batch']}: {what}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
