"""nnU-Net v2 trainers: a shared recipe/budget base and the xLSTM-UNet trainers.

Every trainer of this project (ours and the baselines) derives from :class:`nnUNetTrainerRecipe`, so all methods
share the data pipeline, the loss (nnU-Net's Dice + CE), the optimiser recipe and the training budget.

- ``nnUNetTrainerRecipe``: nnU-Net's own network from the plans (PlainConvUNet for ``nnUNetPlans``,
  ResidualEncoderUNet for ``nnUNetResEncUNetMPlans``), trained with our recipe. This is the ``nnunet`` and
  ``resenc_m`` row.
- ``nnUNetTrainerXLSTMBot``: :class:`~xlstm_unet.networks.XLSTMUNet`, ViL at the bottleneck.
- ``nnUNetTrainerXLSTMEnc``: ViL at every encoder stage (the paper's description).
- ``nnUNetTrainerXLSTMEncOfficial``: the official code's placement (3D stages >= 3; 2D alternate stages).
- ``nnUNetTrainerXLSTMEncBidir``: ablation, Enc with bidirectional ViL stages (Vision-LSTM's alternating traversal).

Variants (recipe, budget, learning rate) are derived by name, see :mod:`xlstm_unet.nnunet.variants`, e.g.
``nnUNetTrainerXLSTMEnc_official_5ep_10it``.

Behaviour added to nnU-Net's trainer (nothing of nnU-Net is patched):

- the optimiser comes from the recipe (:mod:`xlstm_unet.nnunet.recipes`), recorded in ``run_config.json`` in the
  fold's output folder together with the budget and the network;
- a non-finite training loss stops the run at once with :class:`NonFiniteLossError`, naming the epoch and iteration;
- ``XLSTM_UNET_STOP_AFTER_EPOCH=N`` (or ``train(..., stop_after_epoch=N)``) saves ``checkpoint_latest.pth`` after
  epoch N and exits with :data:`~xlstm_unet.pause.PAUSED_EXIT_CODE`, for time-sliced jobs; continue with ``--c`` /
  ``resume=True``;
- SIGTERM, SIGUSR1 or SIGUSR2, or the end of a time limit (``XLSTM_UNET_TIME_LIMIT=3h``, ``train(...,
  time_limit=...)``; :mod:`xlstm_unet.pause`), pause the training at the next training iteration: the mid-epoch
  state (iteration, the epoch's losses, its elapsed time) goes into ``checkpoint_latest.pth`` and the resumed run
  finishes that epoch with the remaining iterations, so a paused and resumed training takes as many optimiser
  steps and logs as many epochs as an uninterrupted one. Under DDP the ranks agree on the pause each iteration;
- short budgets save ``checkpoint_latest.pth`` every epoch and shorten the per-epoch validation;
- deep supervision is turned off for 2-stage plans (tiny images), where nnU-Net's loss weights would be 0/0;
- ``_bs<N>`` sets the batch size in the trainer's copy of the plans (so ``plans.json`` in the results folder says
  what ran), ``_noamp`` trains in float32 on CUDA, ``_seed<N>`` seeds python, numpy and torch before anything is
  built;
- ``torch.compile`` stays off unless ``nnUNet_compile=1`` is set (nnU-Net 2.8 compiles on CUDA by default): the ViL
  kernels (triton, a custom autograd Function, checkpointing, ``malloc_trim``) and MONAI's networks have not been
  compiled and tested, and every method of a comparison should run the same way.
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import math
import os
import random
import time
from typing import ClassVar

import numpy as np
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from xlstm_unet._io import atomic_write
from xlstm_unet.benchmarking import peak_memory_mb
from xlstm_unet.nnunet.recipes import Recipe, build_optimizer, resolve_recipe
from xlstm_unet.pause import PAUSED_EXIT_CODE, pause_handling, pause_reason

__all__ = [
    "NonFiniteLossError",
    "TrainingPaused",
    "STOP_AFTER_EPOCH_ENV",
    "PARTIAL_EPOCH_KEY",
    "COMPILE_ENV",
    "CURVE_FILE",
    "force_fp32",
    "seed_everything",
    "nnUNetTrainerRecipe",

    "nnUNetTrainerXLSTMBot",
    "nnUNetTrainerXLSTMEnc",
    "nnUNetTrainerXLSTMEncBidir",
    "nnUNetTrainerXLSTMEncCkpt",
    "nnUNetTrainerXLSTMEncOfficial",
]

STOP_AFTER_EPOCH_ENV = "XLSTM_UNET_STOP_AFTER_EPOCH"
COMPILE_ENV = "nnUNet_compile"
#: Key of a mid-epoch checkpoint's extra state: ``{"epoch", "train_losses", "wall_s", "cpu_s"}``.
PARTIAL_EPOCH_KEY = "xlstm_unet_partial_epoch"
#: Per-epoch training curve written into the fold folder (losses, pseudo Dice, lr, wall and CPU seconds, peak
#: memory so far: CUDA's max allocated, or the process's peak RSS on CPU).
CURVE_FILE = "training_curve.csv"
_TRUE = ("1", "true", "t", "yes")


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (nnU-Net's in-process augmentation draws from them)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def force_fp32(network: nn.Module) -> nn.Module:
    """Run ``network``'s forward in float32 even inside an autocast region (nnU-Net's AMP); returns ``network``.

    The forward is wrapped on the instance, so parameter names (and checkpoints) stay the same; floating inputs are
    cast to float32.
    """
    if getattr(network, "_forced_fp32", False):
        return network
    forward = network.forward

    @functools.wraps(forward)
    def fp32_forward(*args, **kwargs):
        args = tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return forward(*args, **kwargs)

    network.forward = fp32_forward
    network._forced_fp32 = True
    return network


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


class TrainingPaused(SystemExit):
    """Raised when a training pauses (after the epoch named by ``XLSTM_UNET_STOP_AFTER_EPOCH``, or at the next
    iteration after a pause signal or the end of its time limit); ``checkpoint_latest.pth`` is saved.

    A ``SystemExit`` with code :data:`~xlstm_unet.pause.PAUSED_EXIT_CODE` (3), so that ``nnUNetv2_train`` stops
    without the final validation and a job script can tell a pause from success and failure.
    ``iteration``: the training iterations done in epoch ``epoch`` (``None`` when it paused at the epoch's end).
    """

    def __init__(self, epoch: int, checkpoint: str, iteration: int | None = None, reason: str = ""):
        super().__init__(PAUSED_EXIT_CODE)
        self.epoch = epoch
        self.checkpoint = checkpoint
        self.iteration = iteration
        self.reason = reason


class nnUNetTrainerRecipe(nnUNetTrainer):
    """nnU-Net's trainer with our optimiser recipe and an optional short budget.

    Class attributes (set by :func:`xlstm_unet.nnunet.variants.trainer_variant`, not by hand):
        recipe: ``"paper"`` (AdamW, paper lr) or ``"official"`` (SGD 5e-3).
        budget_epochs, budget_iterations: ``None`` keeps nnU-Net's 1000 epochs x 250 iterations.
        lr_override: an explicit learning rate.
        batch_size_override: a batch size instead of the plans'.
        amp: ``False`` trains in float32 on CUDA (no autocast, no grad scaler); CPU training never uses AMP.
        seed: seed of python, numpy and torch, set before anything is built (``None``: not seeded, as nnU-Net).
        recipe_variant: ``"bot"`` or ``"enc"``, for the paper's per-variant cell learning rate.
    """

    recipe: ClassVar[str] = "paper"
    budget_epochs: ClassVar[int | None] = None
    budget_iterations: ClassVar[int | None] = None
    lr_override: ClassVar[float | None] = None
    batch_size_override: ClassVar[int | None] = None
    amp: ClassVar[bool] = True
    seed: ClassVar[int | None] = None
    recipe_variant: ClassVar[str | None] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if self.seed is not None:
            seed_everything(self.seed)
        if self.batch_size_override is not None:
            plans = copy.deepcopy(plans)
            if configuration not in plans.get("configurations", {}):
                raise ValueError(f"configuration {configuration!r} is not in the plans "
                                 f"(available: {sorted(plans.get('configurations', {}))})")
            plans["configurations"][configuration]["batch_size"] = int(self.batch_size_override)
        super().__init__(plans, configuration, fold, dataset_json, device)
        if not self.amp:
            self.grad_scaler = None  # float32 training: nothing to scale (the network runs under force_fp32)
        if self.budget_epochs is not None:
            self.num_epochs = int(self.budget_epochs)
        if self.budget_iterations is not None:
            self.num_iterations_per_epoch = int(self.budget_iterations)
            self.num_val_iterations_per_epoch = max(1, math.ceil(self.num_iterations_per_epoch / 5))
        if self.budget_epochs is not None or self.budget_iterations is not None:
            self.save_every = 1
        if self.enable_deep_supervision and len(self.configuration_manager.pool_op_kernel_sizes) < 3:
            # nnU-Net zeroes the weight of the lowest deep-supervision output and normalises the rest; with a
            # single output (a 2-stage network, planned for tiny images) that is 0/0 = NaN loss. Train without DS.
            self.enable_deep_supervision = False
            self.print_to_log_file("Deep supervision off: the plans give a 2-stage network (one output).")
        self.resolved_recipe: Recipe = resolve_recipe(
            self.recipe, protocol=self.dataset_protocol, variant=self.recipe_variant, lr=self.lr_override)
        self.initial_lr = self.resolved_recipe.lr
        self.weight_decay = self.resolved_recipe.weight_decay
        stop = os.environ.get(STOP_AFTER_EPOCH_ENV)
        self.stop_after_epoch: int | None = int(stop) if stop else None
        self._partial: dict | None = None  # a mid-epoch checkpoint's state, for the resumed epoch
        self._replay: list[float] = []  # losses of the iterations the resumed epoch had already trained
        self._epoch_losses: list[float] = []

    def _do_i_compile(self) -> bool:
        if os.environ.get(COMPILE_ENV, "").lower() in _TRUE:
            return super()._do_i_compile()
        if self.device.type == "cuda":
            self.print_to_log_file(f"torch.compile off (set {COMPILE_ENV}=1 to compile): xlstm-unet's trainers "
                                   "run every method eagerly, since the ViL kernels and baselines are not tested "
                                   "under torch.compile.")
        return False

    @classmethod
    def plans_for_network(cls, plans: dict, configuration: str) -> dict:
        """The plans this trainer builds its network from (a subclass may adapt them, e.g. the patch size)."""
        return plans

    @classmethod
    def network_for_plans(cls, plans: dict, configuration: str, num_input_channels: int, num_output_channels: int,
                          deep_supervision: bool = True) -> tuple[nn.Module, tuple[int, ...]]:
        """The network this trainer trains for ``plans`` (outside a training run, e.g. for benchmarks), and the
        patch size it trains on."""
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        cm = PlansManager(cls.plans_for_network(plans, configuration)).get_configuration(configuration)
        net = cls.build_network_architecture(PlansManager(plans), cm, num_input_channels, num_output_channels,
                                             deep_supervision)
        return net, tuple(int(p) for p in cm.patch_size)

    @property
    def dataset_protocol(self) -> str | None:
        """The evaluation protocol that our converters record in ``dataset.json`` (``None`` if absent)."""
        meta = self.dataset_json.get("xlstm_unet") or {}
        return meta.get("protocol")

    def configure_optimizers(self):
        optimizer = build_optimizer(self.resolved_recipe, self.network.parameters())
        lr_scheduler = PolyLRScheduler(optimizer, self.resolved_recipe.lr, self.num_epochs)
        return optimizer, lr_scheduler

    def run_config(self) -> dict:
        """What this run is: trainer, recipe, budget, network; written to ``run_config.json``."""
        import nnunetv2

        import xlstm_unet

        return {
            "trainer": self.__class__.__name__,
            "recipe": self.resolved_recipe.as_dict(),
            "num_epochs": self.num_epochs,
            "num_iterations_per_epoch": self.num_iterations_per_epoch,
            "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch,
            "full_budget": self.budget_epochs is None and self.budget_iterations is None,
            "batch_size": self.configuration_manager.batch_size,
            "patch_size": list(self.configuration_manager.patch_size),
            "spacing": list(self.configuration_manager.spacing),
            "amp": bool(self.amp and self.device.type == "cuda"),
            "compile": hasattr(self.network, "_orig_mod"),  # what torch.compile wraps
            "seed": self.seed,
            "configuration": self.configuration_name,
            "plans": self.plans_manager.plans_name,
            "fold": self.fold,
            "device": str(self.device),
            "network": self.network_description(),
            "versions": {"torch": torch.__version__, "nnunetv2": getattr(nnunetv2, "__version__", "2.8"),
                         "xlstm_unet": xlstm_unet.__version__},
        }

    def network_description(self) -> dict:
        return {"class": self.configuration_manager.network_arch_class_name}

    def on_train_start(self):
        super().on_train_start()
        self._epoch_bar = None
        if self.local_rank == 0:
            with open(os.path.join(self.output_folder, "run_config.json"), "w") as fh:
                json.dump(self.run_config(), fh, indent=2)
            from tqdm.auto import tqdm  # a widget in JupyterLab, a bar on the terminal's stderr

            self._epoch_bar = tqdm(total=self.num_epochs, initial=self.current_epoch, unit="epoch",
                                   desc=self.__class__.__name__, dynamic_ncols=True)

    def on_train_end(self):
        self._close_epoch_bar()
        super().on_train_end()

    def _close_epoch_bar(self) -> None:
        bar, self._epoch_bar = getattr(self, "_epoch_bar", None), None
        if bar is not None:
            bar.close()

    def run_training(self):
        with pause_handling():  # signals and XLSTM_UNET_TIME_LIMIT (nnUNetv2_train); nested in train()'s own
            super().run_training()

    def train_step(self, batch: dict) -> dict:
        if self._replay:  # trained before the pause: keep its loss, skip this batch
            out = {"loss": np.asarray(self._replay.pop(0), dtype=np.float32)}
        else:
            out = super().train_step(batch)
            loss = np.asarray(out["loss"])
            if not np.all(np.isfinite(loss)):
                raise NonFiniteLossError(
                    f"non-finite training loss ({loss.item() if loss.size == 1 else loss}) at epoch "
                    f"{self.current_epoch} of {self.__class__.__name__} ({self.output_folder}); stopping instead of "
                    "training on NaN. Try a lower learning rate, or the 'official' recipe.")
        self._epoch_losses.append(float(np.mean(out["loss"])))
        if len(self._epoch_losses) < self.num_iterations_per_epoch:  # at the epoch's end on_epoch_end decides
            reason = self._agreed_pause_reason()
            if reason:
                self._pause_mid_epoch(reason)
        return out

    def _agreed_pause_reason(self) -> str | None:
        """:func:`~xlstm_unet.pause.pause_reason`; under DDP any rank's reason pauses every rank at this step."""
        reason = pause_reason()
        if self.is_ddp:
            import torch.distributed as dist

            flag = torch.tensor([1.0 if reason else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            reason = reason or ("another rank's pause request" if flag.item() else None)
        return reason

    def _current_partial(self) -> dict | None:
        return self._partial if self._partial and self._partial.get("epoch") == self.current_epoch else None

    def on_epoch_start(self):
        partial = self._current_partial()
        self._epoch_cpu_start = time.process_time() - (partial["cpu_s"] if partial else 0.0)
        if partial:  # the resumed epoch's time includes what it ran before the pause
            self.logger.log("epoch_start_timestamps", time.time() - partial["wall_s"], self.current_epoch)
        else:
            super().on_epoch_start()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        partial = self._current_partial()
        self._replay = list(partial["train_losses"]) if partial else []
        self._epoch_losses = []
        self._partial = None
        if self._replay:
            self.print_to_log_file(f"Resuming epoch {self.current_epoch} after iteration {len(self._replay)} "
                                   "(mid-epoch checkpoint): the batches of those iterations are drawn and skipped.")

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        ckpt = filename_or_checkpoint
        if isinstance(ckpt, str):  # nnU-Net loaded it already; mmap reads only the small entries again
            ckpt = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
        self._partial = ckpt.get(PARTIAL_EPOCH_KEY)

    def _save_latest_at_epoch(self, epoch: int, extra: dict | None = None) -> str:
        """Write ``checkpoint_latest.pth`` (atomically) so that a resumed run starts at ``epoch``; ``extra`` is
        stored under :data:`PARTIAL_EPOCH_KEY`. Returns the path."""
        latest = os.path.join(self.output_folder, "checkpoint_latest.pth")
        if self.local_rank != 0 or self.disable_checkpointing:
            return latest
        current = self.current_epoch
        self.current_epoch = epoch - 1  # nnU-Net records current_epoch + 1, the epoch to resume at
        with atomic_write(latest, suffix=".tmp") as tmp:
            try:
                self.save_checkpoint(str(tmp))
            finally:
                self.current_epoch = current
            if extra is not None:
                ckpt = torch.load(tmp, map_location="cpu", weights_only=False)
                ckpt[PARTIAL_EPOCH_KEY] = extra
                torch.save(ckpt, tmp)
        return latest

    def _pause_mid_epoch(self, reason: str) -> None:
        epoch, done = self.current_epoch, len(self._epoch_losses)
        logs = self.logger.get_checkpoint()  # nnU-Net's per-epoch lists; this epoch has started some of them
        state = {"epoch": epoch, "train_losses": list(self._epoch_losses),
                 "wall_s": time.time() - logs["epoch_start_timestamps"][epoch],
                 "cpu_s": time.process_time() - self._epoch_cpu_start}
        started = {k: v[epoch:] for k, v in logs.items()}
        for v in logs.values():  # the checkpoint holds complete epochs only; the resumed run logs this one again
            del v[epoch:]
        try:
            latest = self._save_latest_at_epoch(epoch, state)
        finally:
            for k, v in started.items():
                logs[k].extend(v)
        self._stop(f"Paused in epoch {epoch} after iteration {done} of {self.num_iterations_per_epoch} ({reason}); "
                   "resume with --c.")
        raise TrainingPaused(epoch, latest, iteration=done, reason=reason)

    def _stop(self, message: str) -> None:
        self._close_epoch_bar()
        self.print_to_log_file(message)
        for loader in (self.dataloader_train, self.dataloader_val):
            if hasattr(loader, "_finish"):
                loader._finish()
        if self.is_ddp:  # rank 0 has written the checkpoint before any rank exits
            import torch.distributed as dist

            dist.barrier()

    def write_curve_row(self, epoch: int) -> None:
        """Write epoch ``epoch``'s row of ``training_curve.csv`` (rows from a run that crashed after the last
        checkpoint are replaced when the resumed run reaches them again)."""
        get = self.logger.get_value
        row = {"epoch": epoch, "train_loss": get("train_losses", epoch), "val_loss": get("val_losses", epoch),
               "pseudo_dice": get("mean_fg_dice", epoch), "ema_pseudo_dice": get("ema_fg_dice", epoch),
               "lr": get("lrs", epoch),
               "epoch_s": get("epoch_end_timestamps", epoch) - get("epoch_start_timestamps", epoch),
               "epoch_cpu_s": time.process_time() - getattr(self, "_epoch_cpu_start", time.process_time()),
               "peak_mem_mb": peak_memory_mb(self.device)}
        path = os.path.join(self.output_folder, CURVE_FILE)
        rows = []
        if os.path.isfile(path):
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < epoch]
        rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(rows)

    def on_epoch_end(self):
        epoch = self.current_epoch
        reason = None
        if epoch + 1 < self.num_epochs:  # after the last epoch the training just finishes
            if self.stop_after_epoch is not None and epoch + 1 >= self.stop_after_epoch:
                reason = f"{STOP_AFTER_EPOCH_ENV}={self.stop_after_epoch}"
            reason = reason or self._agreed_pause_reason()
        super().on_epoch_end()  # logs the epoch's end, then current_epoch += 1
        if self.local_rank == 0:
            self.write_curve_row(epoch)
            if getattr(self, "_epoch_bar", None) is not None:
                self._epoch_bar.set_postfix(loss=f"{self.logger.get_value('train_losses', epoch):.4f}",
                                            pseudo_dice=f"{self.logger.get_value('mean_fg_dice', epoch):.3f}")
                self._epoch_bar.update(1)
        if reason:
            latest = self._save_latest_at_epoch(epoch + 1)
            self._stop(f"Paused after epoch {epoch} ({reason}); resume with --c.")
            raise TrainingPaused(epoch, latest, reason=reason)


class nnUNetTrainerXLSTM(nnUNetTrainerRecipe):
    """Base of the xLSTM-UNet trainers: builds :class:`XLSTMUNet` from the plans' stage layout.

    The plans' own architecture (PlainConvUNet or ResidualEncoderUNet kwargs) gives the stages; the network class
    is replaced by ``xlstm_unet.networks.XLSTMUNet`` with this trainer's ViL placement, and the configuration's patch
    size is passed in for the channel-token rule. So the ordinary ``nnUNetPlans`` work, with no extra planning.
    """

    vil_placement: ClassVar[str] = "enc"
    vil_kwargs: ClassVar[dict] = {}
    network_class_name: ClassVar[str] = "xlstm_unet.networks.XLSTMUNet"

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        arch_kwargs = dict(configuration_manager.network_arch_init_kwargs)
        arch_kwargs.update(vil_placement=cls.vil_placement, vil_kwargs=dict(cls.vil_kwargs),
                           patch_size=list(configuration_manager.patch_size))
        return get_network_from_plans(
            cls.network_class_name, arch_kwargs, configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels, num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)

    def network_description(self) -> dict:
        return {"class": self.network_class_name, "vil_placement": self.vil_placement,
                "vil_kwargs": dict(self.vil_kwargs)}


class nnUNetTrainerXLSTMBot(nnUNetTrainerXLSTM):
    """xLSTM-UNet Bot: ViL at the bottleneck only."""

    vil_placement = "bot"
    recipe_variant = "bot"


class nnUNetTrainerXLSTMEnc(nnUNetTrainerXLSTM):
    """xLSTM-UNet Enc: ViL at every encoder stage, as the paper describes (linear-time chunkwise mLSTM)."""

    vil_placement = "enc"
    recipe_variant = "enc"


class nnUNetTrainerXLSTMEncCkpt(nnUNetTrainerXLSTMEnc):
    """xLSTM-UNet Enc with gradient checkpointing of every ViL stage (``ViLStage(checkpoint=True)``).

    The same network and results as :class:`nnUNetTrainerXLSTMEnc` (same weights layout, same gradients), for
    less activation memory at the cost of recomputing each ViL stage's forward in backward: for GPUs on which the
    paper's patch sizes do not fit otherwise.
    """

    vil_kwargs = {"checkpoint": True}


class nnUNetTrainerXLSTMEncBidir(nnUNetTrainerXLSTMEnc):
    """xLSTM-UNet Enc with bidirectional ViL stages (``ViLStage(directions="bidirectional")``), an ablation.

    Every ViL stage runs a pair of blocks, the second on the reversed sequence (rows from the bottom-right), as
    Vision-LSTM alternates the traversal direction from block to block; the official xLSTM-UNet code, like
    :class:`nnUNetTrainerXLSTMEnc`, traverses from the top-left only. Twice the ViL parameters and ViL compute.
    """

    vil_kwargs = {"directions": "bidirectional"}


class nnUNetTrainerXLSTMEncOfficial(nnUNetTrainerXLSTM):
    """xLSTM-UNet Enc with the official code's placement (3D: stages >= 3; 2D: alternate stages)."""

    vil_placement = "enc_official"
    recipe_variant = "enc"
