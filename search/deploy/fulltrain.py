"""``search train``: an architecture at full size with the LITv2 paper's ImageNet recipe.

The recipe is the official code's (DeiT's, on Swin's code base): AdamW with learning rate
5e-4 x global batch / 512, betas (0.9, 0.999), weight decay 0.05 (none on norms, biases and
relative position tables), a per-step cosine schedule with linear warm-up (20 of 300
epochs, kept in proportion for shorter runs; warm-up and final rates 5e-7 and 5e-6, scaled by
the batch like the peak), label smoothing 0.1, RandAugment ``rand-m9-mstd0.5-inc1``, mixup 0.8,
cutmix 1.0, random erasing 0.25, the config's drop path, gradient clipping at 5.0, and the
DTM offset predictors at 0.01x the learning rate. Every piece is timm's: ``create_loader``
(transforms and distributed sampling), ``Mixup`` + ``SoftTargetCrossEntropy``,
``create_optimizer_v2`` (param groups with an ``lr_scale``), ``create_scheduler_v2`` and
``ModelEmaV3``.

On CUDA it trains with autocast (bf16 on Ampere and later, fp16 with loss scaling before) and
channels_last. Under ``torchrun --nproc_per_node N -m search train ...`` each process trains
a DistributedDataParallel replica (NCCL on GPUs, gloo on CPUs); ``--batch-size`` is per
process and the learning rate follows the global batch.

After every epoch ``OUTPUT/last.pt`` is replaced atomically with everything the next epoch
needs: weights, optimiser, scheduler, loss scaler, EMA, the epoch, and every process's RNG
states (python, numpy, torch, CUDA). The data order is a function of the seed and the epoch
(DistributedSampler) or drawn from the saved torch RNG, and loader workers are seeded from it,
so ``--resume OUTPUT/last.pt`` continues as if never stopped: on the CPU the weights equal an
uninterrupted run's exactly (tested); on CUDA they agree to run-to-run noise (atomic adds in
backward kernels). When the schedule ends, ``OUTPUT/model/`` holds the trained model in timm's
local-dir layout (and ``OUTPUT/model-ema/`` the EMA weights, if kept).
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from litv2 import NAMED_CONFIGS, LITConfig
from litv2.files import atomic_write
from litv2.target import MIN_RESOLUTION
from space.spec import MAX_IMG_SIZE

from .evaluation import data_config, default_workers, loader_options, top1, validation_loader
from .export import create_lit_model, read_export
from .registry import ALIAS_TRAINED, check_model_name, log_and_register, model_name_from
from .trained import Measurement, TrainingReport, export_trained, measure_trained, target_for
from ..training.common import LossScaler, rng_state, seed_everything, set_rng_state, training_step
from ..training.fulldata import TrainingData, allow_zero_bit_posterize, load_training_data

CHECKPOINT_FORMAT = "litv2-search-train/1"
CHECKPOINT_FILE = "last.pt"
NO_TARGET = "none"  # --target none: the trained network is not measured (a shared or busy node)
FINAL_EXPORT = "model"  # OUTPUT/model: the trained export (its EMA twin: model-ema)
OFFSET_PARAMS = "conv_offset"  # DTM's offset predictor (litv2.layers.deform)
PAPER_EPOCHS, PAPER_WARMUP = 300, 20


@dataclass(frozen=True)
class Recipe:
    """The paper's training recipe; ``batch_size`` is per process."""

    epochs: int = PAPER_EPOCHS
    batch_size: int = 128
    img_size: int = 224
    warmup_epochs: int | None = None  # None: 20 of 300 epochs, in proportion
    base_lr: float = 5e-4  # per 512 images of global batch
    warmup_lr: float = 5e-7
    min_lr: float = 5e-6
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    auto_augment: str = "rand-m9-mstd0.5-inc1"
    mixup: float = 0.8
    cutmix: float = 1.0
    reprob: float = 0.25
    clip_grad: float = 5.0
    offset_lr_scale: float = 0.01
    ema_decay: float | None = None
    seed: int = 0

    @property
    def warmup(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return min(PAPER_WARMUP, self.epochs * PAPER_WARMUP // PAPER_EPOCHS)

    def lr_scale(self, world_size: int) -> float:
        """The linear scaling rule: rates are quoted for a global batch of 512."""
        return self.batch_size * world_size / 512


@dataclass(frozen=True)
class TrainRequest:
    """What the command line asked for; None = default (or, on --resume, the checkpoint's)."""

    model: str | None = None
    dataset: str | None = None
    data_root: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    img_size: int | None = None
    warmup_epochs: int | None = None
    ema_decay: float | None = None
    seed: int | None = None
    workers: int | None = None  # None: default_workers()
    resume: str | None = None
    stop_after_epoch: int | None = None
    output: str | None = None
    workdir: str = "."
    tracking_uri: str | None = None
    target: str | None = None  # None: the export's, or the local device's default
    register: str | None = None  # None: the export's study, or the model's name
    export_every: int | None = None
    command: str = ""


@dataclass(frozen=True)
class TrainPlan:
    """A validated training: stored in every checkpoint, so a resume needs nothing else."""

    model: str
    name: str
    config_json: str
    dataset: str
    data_root: str | None
    recipe: Recipe
    output: str
    tracking_uri: str
    artifact_root: str
    source: dict[str, Any] = field(default_factory=dict)  # provenance of an exported model
    target: str = ""  # where the trained network is measured (at the training resolution)
    register: str = ""  # the MLflow registered model its export becomes a version of

    @property
    def config(self) -> LITConfig:
        return LITConfig.from_json(self.config_json)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainPlan":
        return cls(**{**data, "recipe": Recipe(**data["recipe"])})


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (one process alone: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls) -> "Distributed":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                   int(os.environ.get("WORLD_SIZE", 1)))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")


# ---------------------------------------------------------------------- planning (no side effects)
def resolve_model(ref: str) -> tuple[LITConfig, str, int, dict[str, Any]]:
    """``--model``: an export folder or a registered name -> (config, short name, input side, provenance)."""
    if Path(ref).exists():
        export = read_export(ref)
        name = export.provenance.get("arch_id") or Path(ref).resolve().name
        return export.config, name, export.img_size, export.provenance
    if ref in NAMED_CONFIGS:
        return NAMED_CONFIGS[ref], ref, Recipe.img_size, {}
    raise ValueError(f"--model {ref!r} is neither an export folder (search pick --export) nor a registered model "
                     f"({', '.join(NAMED_CONFIGS)})")


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{flag} {value} is invalid: expected a positive integer")


def plan_training(request: TrainRequest) -> tuple[TrainPlan, dict[str, Any] | None]:
    """Validate every option (one-line ValueErrors) and read the checkpoint to resume, if any."""
    from ..core.datasets import dataset_choices, parse_dataset_spec
    from ..core.target import parse_target
    from ..study.preflight import check_tracking_endpoint
    from ..study.storage import check_tracking_uri, default_tracking_uri

    for flag, value in (("--epochs", request.epochs), ("--batch-size", request.batch_size),
                        ("--img-size", request.img_size),
                        ("--workers", None if request.workers is None else request.workers + 1),
                        ("--stop-after-epoch", request.stop_after_epoch), ("--export-every", request.export_every)):
        _positive(value, flag)
    if request.img_size is not None and not MIN_RESOLUTION <= request.img_size <= MAX_IMG_SIZE:
        raise ValueError(f"--img-size {request.img_size} is invalid: expected {MIN_RESOLUTION} to {MAX_IMG_SIZE} px "
                         f"({MIN_RESOLUTION}: the smallest input whose last stage keeps a feature map)")
    if request.warmup_epochs is not None and request.warmup_epochs < 0:
        raise ValueError(f"--warmup-epochs {request.warmup_epochs} is invalid: expected 0 or more")
    if request.ema_decay is not None and not 0 < request.ema_decay < 1:
        raise ValueError(f"--ema-decay {request.ema_decay} is invalid: expected a number between 0 and 1")
    if request.tracking_uri:
        check_tracking_uri(request.tracking_uri)
    if request.target is not None and request.target != NO_TARGET:
        parse_target(request.target)
    if request.register is not None:
        check_model_name(request.register)
    state = None
    if request.resume:
        state = load_checkpoint(request.resume)
        plan = TrainPlan.from_dict(state["plan"])
        _check_agrees(request, plan, Path(request.resume).resolve().parent)
        plan = replace(plan, output=str(Path(request.resume).resolve().parent),
                       tracking_uri=request.tracking_uri or plan.tracking_uri)
        if state["epoch"] >= plan.recipe.epochs and (Path(plan.output) / FINAL_EXPORT).exists():
            raise ValueError(f"--resume {request.resume!r} has finished all {plan.recipe.epochs} epochs and its "
                             f"export {Path(plan.output) / FINAL_EXPORT} exists already")
    else:
        if not request.model or not request.dataset:
            raise ValueError(f"train needs --model DIR|NAME and --dataset ({dataset_choices()}), or --resume "
                             "CHECKPOINT")
        config, name, img_size, source = resolve_model(request.model)
        dataset = parse_dataset_spec(request.dataset).name
        recipe = Recipe(**{k: v for k, v in dict(
            epochs=request.epochs, batch_size=request.batch_size, img_size=request.img_size or img_size,
            warmup_epochs=request.warmup_epochs, ema_decay=request.ema_decay, seed=request.seed).items()
            if v is not None})
        workdir = Path(request.workdir)
        if not workdir.is_dir():
            raise ValueError(f"--workdir {request.workdir!r} does not exist or is not a folder")
        tracking = request.tracking_uri or default_tracking_uri(workdir)
        check_tracking_uri(tracking)
        output = Path(request.output or f"train-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        if output.exists():
            raise ValueError(f"--output {str(output)!r} already exists: continue its training with --resume "
                             f"{output / CHECKPOINT_FILE} or name a new folder")
        if not output.resolve().parent.is_dir():
            raise ValueError(f"--output {str(output)!r} is invalid: its parent folder does not exist")
        from ..engine.tracking import ARTIFACTS_DIR  # loads MLflow, which the training uses: once the options passed

        plan = TrainPlan(model=request.model, name=name, config_json=config.to_json(), dataset=dataset,
                         data_root=request.data_root, recipe=recipe, output=str(output.resolve()),
                         tracking_uri=tracking, artifact_root=str((workdir / ARTIFACTS_DIR).resolve()), source=source)
    # an option given now, else the plan's (a checkpoint's), else the export's, else this machine's
    plan = replace(plan, target=request.target or plan.target or plan.source.get("target") or _local_target(),
                   register=request.register or plan.register or model_name_from(plan.source.get("study") or plan.name))
    check_tracking_endpoint(plan.tracking_uri)  # before anything is trained or written
    recipe = plan.recipe
    if recipe.batch_size % 2:
        raise ValueError(f"--batch-size {recipe.batch_size} is invalid: mixup pairs images, so it must be even")
    if recipe.warmup >= recipe.epochs and recipe.warmup > 0:
        raise ValueError(f"--warmup-epochs {recipe.warmup} is invalid: expected fewer than --epochs {recipe.epochs}")
    done = state["epoch"] if state else 0
    stop = request.stop_after_epoch
    if stop is not None and not done < stop <= recipe.epochs:
        raise ValueError(f"--stop-after-epoch {stop} is invalid: expected an epoch after {done} and at most "
                         f"{recipe.epochs}")
    return plan, state


def _local_target() -> str:
    """Where a named model is measured when nothing says: this machine's default target."""
    from ..core.target import default_target

    return default_target("gpu" if torch.cuda.is_available() else "cpu").key


def _check_agrees(request: TrainRequest, plan: TrainPlan, folder: Path) -> None:
    """A resumed training keeps its settings: an explicit option that differs is an error."""
    recipe = plan.recipe
    stored = dict(model=plan.model, dataset=plan.dataset, data_root=plan.data_root, epochs=recipe.epochs,
                  batch_size=recipe.batch_size, img_size=recipe.img_size, warmup_epochs=recipe.warmup_epochs,
                  ema_decay=recipe.ema_decay, seed=recipe.seed)
    for key, value in stored.items():
        asked = getattr(request, key)
        if asked is not None and asked != value:
            raise ValueError(f"--{key.replace('_', '-')} {asked!r} disagrees with the checkpoint's {value!r}: a "
                             "resumed training keeps its settings")
    if request.output and Path(request.output).resolve() != folder:
        raise ValueError(f"--output {request.output!r} is not the checkpoint's folder {str(folder)!r}: a resumed "
                         "training writes where it started")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by ``search train``, or a one-line ValueError."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--resume {str(path)!r} is not a file: expected OUTPUT/{CHECKPOINT_FILE} of a training")
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same bad input
        raise ValueError(f"--resume {str(path)!r} cannot be read as a checkpoint: {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"--resume {str(path)!r} is not a 'search train' checkpoint")
    return state


# ---------------------------------------------------------------------- pieces of the recipe
def param_groups(model: nn.Module, weight_decay: float, offset_lr_scale: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on 1-d tensors, biases and the model's no-decay keywords; the DTM
    offset predictors at ``offset_lr_scale`` x the learning rate (timm schedulers honour ``lr_scale``)."""
    keywords = model.no_weight_decay_keywords() if hasattr(model, "no_weight_decay_keywords") else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim <= 1 or name.endswith(".bias") or any(k in name for k in keywords))
        groups.setdefault((decay, OFFSET_PARAMS in name), []).append(param)
    return [dict(params=params, weight_decay=weight_decay if decay else 0.0,
                 **({"lr_scale": offset_lr_scale} if offset else {}))
            for (decay, offset), params in sorted(groups.items())]


# ---------------------------------------------------------------------- the training
class Trainer:
    """One process's share of a training (the whole of it without torchrun)."""

    def __init__(self, plan: TrainPlan, data: TrainingData, env: Distributed, state: dict[str, Any] | None,
                 workers: int = 4) -> None:
        from timm.data import Mixup, create_loader
        from timm.loss import SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2
        from timm.utils import ModelEmaV3

        from ..training.proxy import resolve_precision

        self.plan, self.env, self.data = plan, env, data
        recipe = self.recipe = plan.recipe
        self.device = env.device()
        cuda = self.device.type == "cuda"
        self.precision = resolve_precision("auto", self.device)
        seed_everything(recipe.seed)  # the same initial weights in every process
        self.model = create_lit_model(plan.config, data.num_classes, recipe.img_size).to(self.device)
        if cuda:
            self.model.to(memory_format=torch.channels_last)
        seed_everything(recipe.seed + env.rank)  # each process its own augmentation stream
        allow_zero_bit_posterize()
        config = data_config(self.model, recipe.img_size)
        self.train_loader = create_loader(
            data.train, batch_size=recipe.batch_size, is_training=True, auto_augment=recipe.auto_augment,
            re_prob=recipe.reprob, re_mode="pixel", re_count=1,
            **loader_options(config, workers, self.device, env.enabled))
        if env.enabled:
            self.train_loader.sampler.seed = recipe.seed  # DistributedSampler orders by seed + epoch
        self.val_loader = validation_loader(data.val, config, recipe.batch_size, workers, self.device, env.enabled)
        self.steps = len(self.train_loader)
        self.mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, label_smoothing=recipe.label_smoothing,
                           num_classes=data.num_classes)
        self.criterion = SoftTargetCrossEntropy()
        scale = recipe.lr_scale(env.world_size)
        self.lr = recipe.base_lr * scale
        self.optimizer = create_optimizer_v2(
            param_groups(self.model, recipe.weight_decay, recipe.offset_lr_scale), "adamw", lr=self.lr,
            weight_decay=recipe.weight_decay, betas=(0.9, 0.999))
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, "cosine", num_epochs=recipe.epochs, warmup_epochs=recipe.warmup,
            warmup_lr=recipe.warmup_lr * scale, min_lr=recipe.min_lr * scale, step_on_epochs=False,
            updates_per_epoch=self.steps)
        self.scaler = LossScaler(self.device, self.precision)
        self.ema = ModelEmaV3(self.model, decay=recipe.ema_decay) if recipe.ema_decay else None
        self.net: nn.Module = self.model
        if env.enabled:
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.run_id: str | None = None
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------ checkpoints
    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.history, self.run_id = state["epoch"], list(state["history"]), state.get("mlflow_run_id")
        rngs = state["rng"]
        if len(rngs) == self.env.world_size:
            set_rng_state(rngs[self.env.rank], self.device)
        else:  # a different number of processes cannot replay the same streams
            seed_everything(self.recipe.seed + 7919 * self.epoch + self.env.rank)
            if self.env.main:
                print(f"note: the checkpoint was written by {len(rngs)} processes and this run has "
                      f"{self.env.world_size}: training continues, but not bit for bit", file=sys.stderr)

    def _save(self) -> None:
        """Every process's RNG state goes to rank 0, which replaces ``last.pt`` atomically."""
        rng = rng_state(self.device)
        states = [None] * self.env.world_size
        if self.env.enabled:
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        if not self.env.main:
            return
        state = dict(format=CHECKPOINT_FORMAT, plan=self.plan.to_dict(), epoch=self.epoch, history=self.history,
                     model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                     scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                     ema=self.ema.state_dict() if self.ema is not None else None, rng=states,
                     world_size=self.env.world_size, steps_per_epoch=self.steps, mlflow_run_id=self.run_id)
        atomic_write(Path(self.plan.output) / CHECKPOINT_FILE, lambda partial: torch.save(state, partial))

    # ------------------------------------------------------------------ epochs
    def train_epoch(self) -> float:
        """One pass over the training set; returns the mean loss over every process."""
        from tqdm import tqdm

        if self.env.enabled:
            self.train_loader.sampler.set_epoch(self.epoch)
        self.net.train()
        updates = self.epoch * self.steps
        total = torch.zeros((), device=self.device)
        bar = tqdm(total=self.steps, desc=f"epoch {self.epoch + 1}/{self.recipe.epochs}", unit="step",
                   disable=not self.env.main, leave=False, mininterval=1.0, file=sys.stderr)
        with bar:
            for images, targets in self.train_loader:
                images, targets = images.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
                if self.device.type == "cuda":
                    images = images.contiguous(memory_format=torch.channels_last)
                images, soft_targets = self.mixup(images, targets)
                loss = training_step(self.net, self.criterion, images, soft_targets, self.optimizer, self.scaler,
                                     self.precision, self.recipe.clip_grad)
                updates += 1
                if self.ema is not None:
                    self.ema.update(self.model, step=updates)
                self.scheduler.step_update(num_updates=updates)
                total += loss.detach().float()
                bar.update(1)
                if bar.n % 20 == 0 or bar.n == self.steps:  # reading the loss waits for the device
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
        self.scheduler.step(self.epoch + 1)
        mean = total / self.steps
        if self.env.enabled:
            dist.all_reduce(mean)
            mean /= self.env.world_size
        return float(mean)

    def evaluate(self, model: nn.Module) -> float:
        """Top-1 % on the validation set (:func:`search.deploy.evaluation.top1`)."""
        return top1(model, self.val_loader, self.device, self.precision, self.env.enabled)

    def run_epochs(self, stop: int, tracker: "TrainTracker | None") -> None:
        while self.epoch < stop:
            tic = time.perf_counter()
            loss = self.train_epoch()
            if not math.isfinite(loss):
                raise RuntimeError(f"training diverged in epoch {self.epoch + 1} (mean loss {loss}); "
                                   f"the last good checkpoint is {Path(self.plan.output) / CHECKPOINT_FILE}")
            self.epoch += 1
            record = dict(epoch=self.epoch, train_loss=loss, val_top1=self.evaluate(self.model),
                          lr=self.optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - tic)
            if self.ema is not None:
                record["val_top1_ema"] = self.evaluate(self.ema.module)
            self.history.append(record)
            self._save()
            if self.env.main:
                if tracker is not None:
                    tracker.log_epoch(record)
                ema = f", EMA {record['val_top1_ema']:.2f}%" if "val_top1_ema" in record else ""
                print(f"epoch {self.epoch}/{self.recipe.epochs}: train loss {loss:.4f}, val top-1 "
                      f"{record['val_top1']:.2f}%{ema}, lr {record['lr']:.2e}, {record['seconds']:.1f} s; "
                      f"checkpoint {Path(self.plan.output) / CHECKPOINT_FILE}", flush=True)

    def report(self, metric: str = "val_top1", command: str = "") -> TrainingReport:
        """What the card of this training's export says, as plain values."""
        plan, recipe = self.plan, self.recipe
        return TrainingReport(
            name=plan.name, config=plan.config, dataset=plan.dataset, num_classes=self.data.num_classes,
            train_images=len(self.data.train), val_images=len(self.data.val), img_size=recipe.img_size,
            recipe=asdict(recipe), schedule_epochs=recipe.epochs, world_size=self.env.world_size,
            precision=self.precision, device=str(self.device), history=list(self.history),
            source=dict(plan.source, model=plan.model), run_id=self.run_id, tracking_uri=plan.tracking_uri,
            command=command, metric=metric)

    def export(self, measurement: Measurement, command: str, suffix: str = "") -> list[tuple[Path, TrainingReport]]:
        """The model (and its EMA) as export folders in the output: ``model{suffix}/``, ``model-ema{suffix}/``."""
        models = [(FINAL_EXPORT, self.model, "val_top1")]
        if self.ema is not None:
            models.append((f"{FINAL_EXPORT}-ema", self.ema.module, "val_top1_ema"))
        exports = []
        for name, model, metric in models:
            report = self.report(metric, command)
            folder = Path(self.plan.output) / f"{name}{suffix}"
            export_trained(folder, model, report, measurement)
            exports.append((folder, report))
        return exports


class TrainTracker:
    """The MLflow run of one training (rank 0 only): parameters, a metric series per epoch, the model."""

    def __init__(self, plan: TrainPlan, run_id: str | None, world_size: int) -> None:
        from mlflow.entities import Param

        from ..engine.tracking import StudyTracker

        tracker = StudyTracker(plan.tracking_uri, Path(plan.artifact_root))
        self.client = tracker.client
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return
        tags = {"kind": "train", "model": plan.model, "dataset": plan.dataset,
                **{f"source.{k}": str(v) for k, v in plan.source.items() if k in ("study", "trial", "arch_id",
                                                                                  "mlflow_run_id", "target")}}
        self.run_id = self.client.create_run(tracker.experiment_id, run_name=f"train-{plan.name}", tags=tags).info.run_id
        recipe = plan.recipe
        params = {**{f"recipe.{k}": v for k, v in asdict(recipe).items()}, "recipe.warmup": recipe.warmup,
                  **{f"arch.{k}": v for k, v in plan.config.to_dict().items()}, "world_size": world_size,
                  "global_batch": recipe.batch_size * world_size, "lr": recipe.base_lr * recipe.lr_scale(world_size),
                  "output": plan.output}
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_epoch(self, record: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, int(record["epoch"]))
                                                    for k, v in record.items() if k != "epoch"])

    def log_folder(self, folder: Path) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path=folder.name)

    def register(self, plan: TrainPlan, folder: Path, report: TrainingReport, measurement: Measurement) -> str:
        """Log ``folder`` and register its ONNX graph as a version of ``plan.register``, alias ``trained``."""
        figure = measurement.figure or {}
        tags = dict(study=plan.source.get("study"), trial=plan.source.get("trial"),
                    arch_id=plan.source.get("arch_id"), target=measurement.target.key if measurement.target else None,
                    throughput=f"{figure['median']:.1f}" if figure else None,
                    throughput_interval=f"[{figure['ci_low']:.1f}, {figure['ci_high']:.1f}]" if figure else None,
                    dataset=plan.dataset, epochs=report.epoch, val_top1=f"{report.final_top1:.2f}",
                    best_val_top1=f"{report.best[report.metric]:.2f}", weights="trained")
        registration = log_and_register(plan.tracking_uri, self.run_id, folder, artifact_path=folder.name,
                                        model_name=f"trained-{plan.name}", name=plan.register, alias=ALIAS_TRAINED,
                                        num_classes=report.num_classes, tags=tags)
        return f"registered as {registration.name} version {registration.version}: {registration.uri}"

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


@contextlib.contextmanager
def _process_group(env: Distributed) -> Iterator[None]:
    if not env.enabled:
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    # rank 0 measures, exports and uploads while the others wait: longer than the 10-minute default
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=datetime.timedelta(hours=2))
    try:
        yield
    finally:
        dist.destroy_process_group()


def train_model(request: TrainRequest) -> int:
    """Run (or resume) one training; returns the exit code. Invalid input raises ValueError
    before anything is written."""
    env = Distributed.from_environment()
    plan, state = plan_training(request)
    data = load_training_data(plan.dataset, plan.data_root, seed=plan.recipe.seed)
    global_batch = plan.recipe.batch_size * env.world_size
    if len(data.train) < global_batch:
        raise ValueError(f"--batch-size {plan.recipe.batch_size} x {env.world_size} processes is more than the "
                         f"{len(data.train)} training images of {plan.dataset}")
    stop = request.stop_after_epoch or plan.recipe.epochs
    with _process_group(env):
        workers = default_workers() if request.workers is None else request.workers
        trainer = Trainer(plan, data, env, state, workers)
        tracker = None
        if env.main:
            Path(plan.output).mkdir(exist_ok=state is not None)
            tracker = TrainTracker(plan, trainer.run_id, env.world_size)
            trainer.run_id = tracker.run_id
            print(f"training {plan.name} ({plan.config.to_json()}) on {plan.dataset} ({data.num_classes} classes, "
                  f"{len(data.train)} training images) at {plan.recipe.img_size} px: "
                  + (f"epochs {trainer.epoch + 1}-{stop} of {plan.recipe.epochs}" if trainer.epoch < stop else
                     f"all {plan.recipe.epochs} epochs done, the export is missing: exporting")
                  + f", {env.world_size} process(es) x batch {plan.recipe.batch_size}, lr "
                  f"{trainer.lr:.2e}, {trainer.precision} on {trainer.device}; output {plan.output}; MLflow run "
                  f"{tracker.run_id}", flush=True)
        try:
            _train_and_export(trainer, tracker, stop, request.export_every, request.command)
            if env.enabled:
                dist.barrier()
        except KeyboardInterrupt:
            if tracker is not None:
                tracker.finish("KILLED")
            return 130
        except BaseException:
            if tracker is not None:
                tracker.finish("FAILED")
            raise
    if tracker is not None:
        tracker.finish("FINISHED")
        last = trainer.history[-1]
        if trainer.epoch < plan.recipe.epochs:
            print(f"stopped after epoch {trainer.epoch} of {plan.recipe.epochs}, val top-1 {last['val_top1']:.2f}%; "
                  f"continue with --resume {Path(plan.output) / CHECKPOINT_FILE}")
    return 0


def _train_and_export(trainer: Trainer, tracker: TrainTracker | None, stop: int, every: int | None,
                      command: str) -> None:
    """Train to epoch ``stop``; on rank 0 export every ``every`` epochs and, once the schedule
    has ended and its export is not there yet (a resume after a failed export included), the
    final export, logged and registered. Measuring and exporting draw no random numbers of
    the training's streams, so a run with exports trains as one without."""
    plan = trainer.plan
    measurements: list[Measurement] = []  # the architecture's speed: the same at every epoch

    def export(suffix: str) -> list[tuple[Path, TrainingReport]]:
        with torch.random.fork_rng(devices=[trainer.device] if trainer.device.type == "cuda" else []):
            if not measurements:
                measurements.append(Measurement(None, why_not="not measured: --target none") if plan.target == NO_TARGET
                                    else measure_trained(trainer.model, target_for(plan.target, plan.recipe.img_size)))
            return trainer.export(measurements[0], command, suffix)

    while trainer.epoch < stop:
        trainer.run_epochs(min(stop, (trainer.epoch // every + 1) * every) if every else stop, tracker)
        if tracker is not None and every and trainer.epoch % every == 0 and trainer.epoch < plan.recipe.epochs:
            for folder, report in export(f"-epoch{trainer.epoch}"):
                tracker.log_folder(folder)
                print(f"exported {folder} (epoch {report.epoch}, {report.metric} {report.final_top1:.2f}%)", flush=True)
    if tracker is None or trainer.epoch < plan.recipe.epochs or (Path(plan.output) / FINAL_EXPORT).exists():
        return
    for folder, report in export(""):
        if not report.ema:
            registered = tracker.register(plan, folder, report, measurements[0])
            print(f"done: {plan.name} trained for {report.epoch} epochs, val top-1 {report.final_top1:.2f}%; model "
                  f"in {folder} (timm.create_model('local-dir:{folder}', pretrained=True) after import litv2; "
                  f"ONNX, card); {registered}", flush=True)
        else:
            tracker.log_folder(folder)
            print(f"exported {folder} (the EMA weights, val top-1 {report.final_top1:.2f}%)", flush=True)
