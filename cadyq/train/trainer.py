"""The training loop of the three stages: fp32 from scratch -> pams8 from fp32 -> cadyq from pams8.

A run directory holds:
  config.json          the resolved configuration
  train.csv            iteration, losses, w_bit, lr, training FQR, seconds per iteration
  val.csv              iteration, PSNR, SSIM, FQR on the validation images (test protocol: 96-px
                       tiles, 6 px overlap, through `cadyq.runtime.Upscaler`), and bicubic PSNR
  last.safetensors     the latest weights (cadyq.checkpoint.save; metadata "extra" has the iteration)
  best.safetensors     the weights of the best validation PSNR
  last_state.pt        weights, optimizer, scheduler, AMP scaler, RNG states, iteration, best PSNR
  tb/                  TensorBoard events, when tensorboard is importable
Every file is written to a temporary name and renamed. `resume=True` continues from last_state.pt
exactly: the data stream is a function of the sample index, so the next batch is the one the
uninterrupted run would have drawn."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from .. import checkpoint
from ..data.layouts import find_pairs, load_pair
from ..data.resize import imresize
from ..data.train_dataset import SRTrainDataset, TrainDataConfig, make_loader
from ..errors import CadyqError, CheckpointError, ModelError
from ..hardware import cpu_has_bf16, usable_cores
from ..metrics import psnr, ssim
from ..models import canonical_name, create_model
from ..quant import METHODS, observe, quant_config, quantize, selected_bits
from ..quant.transform import DEFAULT_BITS
from . import ddp
from .losses import BIT_LOSSES, BitWeightSchedule, Distiller, bit_loss, l1_loss, make_optimizer
from .recipes import recipe_for

STATE_FORMAT = 1
_TRAIN_COLUMNS = ["iter", "loss", "l1", "bit", "kd", "w_bit", "lr", "fqr", "sec"]
_VAL_COLUMNS = ["iter", "psnr", "ssim", "fqr", "bicubic_psnr", "bicubic_ssim", "images", "sec"]
# Fields that must match when a run is resumed (the others may change, e.g. --iters to extend it).
_RESUME_FIXED = ("backbone", "scale", "method", "bits", "mode", "arch", "batch", "patch", "seed", "data",
                 "bit_loss", "precision", "channels_last")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DYNAMIC_METHODS = ("cadyq", "gdq")  # bit loss and distillation from the pams8 teacher


@dataclass
class TrainConfig:
    """What `cadyq train` does. None means: the paper's value (recipe) or, for backbone/scale/arch,
    the init checkpoint's (edsr x4 from scratch)."""

    method: str = "cadyq"  # fp32 | pams8 | cadyq
    data: str = ""
    backbone: str | None = None
    scale: int | None = None
    arch: dict = field(default_factory=dict)  # backbone options for a model built from scratch
    bits: tuple[int, ...] | None = None  # candidates; None: the method's default (cadyq 4,6,8; gdq 4,5,6,8)
    mode: str = "full"
    init: str | None = None
    teacher: str | None = None  # default for cadyq: the init checkpoint
    kd: bool = True
    iters: int | None = None
    batch: int | None = None  # global batch (split across processes)
    patch: int | None = None  # LR patch
    lr: float | None = None
    alpha_lr: float | None = None
    selector_lr: float | None = None
    decay: int | None = None
    gamma: float | None = None
    w_bit: float | None = None
    w_bit_step: float | None = None
    w_bit_every: int | None = None
    bit_loss: str = "weighted"  # weighted | plain
    w_feat: float | None = None
    w_block: float | None = None
    observe_batches: int | None = None
    precision: str = "auto"  # autocast dtype of the forward (fp32 master weights); auto: see resolve_precision
    channels_last: bool = True
    val: str | None = None
    val_every: int = 1000
    val_max: int | None = None  # use only the first N validation images
    val_tile: int = 96
    val_overlap: int = 6
    val_batch: int = 16
    out: str | None = None
    resume: bool = False
    seed: int = 0
    workers: int | None = None  # data loader processes; None: the usable cores, at most 4
    cache: str = "memory"
    cache_dir: str | None = None
    device: str = "auto"
    log_every: int = 10
    progress: bool = True

    def resolved(self) -> "TrainConfig":
        """A copy with every None filled in (recipe, init checkpoint, defaults)."""
        if self.method not in METHODS:
            raise ModelError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.precision not in PRECISIONS:
            raise CadyqError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.bit_loss not in BIT_LOSSES:
            raise ModelError(f"unknown bit loss {self.bit_loss!r}; choose one of {', '.join(BIT_LOSSES)}")
        if not self.data:
            raise CadyqError("no training data; pass --data DIR (DIV2K or a folder of HR images)")
        bits = DEFAULT_BITS.get(self.method, (4, 6, 8)) if self.bits is None else self.bits
        c = dataclasses.replace(self, arch=dict(self.arch), bits=tuple(int(b) for b in bits))
        if c.init:
            meta = _describe(c.init)
            if c.backbone and canonical_name(c.backbone) != meta["backbone"]:
                raise CheckpointError(f"--backbone {c.backbone} but {c.init} is a {meta['backbone']} model")
            if c.scale and int(c.scale) != int(meta["scale"]):
                raise CheckpointError(f"--scale {c.scale} but {c.init} is a x{meta['scale']} model")
            clash = {k: v for k, v in c.arch.items() if k in meta["arch"] and meta["arch"][k] != v}
            if clash:
                raise CheckpointError(f"{c.init} has {({k: meta['arch'][k] for k in clash})}, not {clash}; "
                                      "drop the architecture options when starting from a checkpoint")
            c.backbone, c.scale, c.arch = meta["backbone"], int(meta["scale"]), dict(meta["arch"])
        c.backbone = canonical_name(c.backbone or "edsr")
        c.scale = int(c.scale or 4)
        if not c.arch:
            c.arch = {k: v for k, v in dataclasses.asdict(create_model(c.backbone, c.scale).config).items()
                      if k not in ("name", "scale")}
        r = recipe_for(c.backbone)
        for name in ("iters", "batch", "patch", "lr", "alpha_lr", "selector_lr", "decay", "gamma", "w_bit",
                     "w_bit_step", "w_bit_every", "w_feat", "w_block", "observe_batches"):
            if getattr(c, name) is None:
                setattr(c, name, getattr(r, name))
        if c.teacher is None and c.method in DYNAMIC_METHODS and c.kd and c.init:
            c.teacher = c.init
        if not c.kd or c.method not in DYNAMIC_METHODS:
            c.teacher = None
        if c.out is None:
            c.out = str(Path("runs") / f"{c.backbone}-{c.method}-x{c.scale}")
        for name in ("iters", "batch", "patch", "val_every", "log_every", "decay", "w_bit_every"):
            if getattr(c, name) < 1:
                raise CadyqError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
        return c

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["bits"] = None if d["bits"] is None else list(d["bits"])
        return d


def _describe(path: str) -> dict:
    """backbone, scale, arch and method of a checkpoint (foreign ones are imported to find out)."""
    if str(path).endswith(".safetensors"):
        meta = checkpoint.read_metadata(path)
        return {"backbone": canonical_name(meta["backbone"]), "scale": int(meta["scale"]),
                "arch": dict(meta.get("arch", {})), "method": meta.get("method", "fp32")}
    model = checkpoint.load(path)
    arch = {k: v for k, v in dataclasses.asdict(model.config).items() if k not in ("name", "scale")}
    return {"backbone": model.config.name, "scale": model.config.scale, "arch": arch,
            "method": quant_config(model).method}


@dataclass
class TrainResult:
    iteration: int  # iterations completed
    interrupted: bool
    best_psnr: float | None
    last_val: dict | None
    out: Path


class _StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks between iterations (a second Ctrl-C aborts)."""

    def __init__(self):
        self.requested = False
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class _CSV:
    """Append-only CSV log; on resume, rows past the resumed iteration are dropped first."""

    def __init__(self, path: Path, columns: list[str], keep_until: int | None):
        self.path, self.columns = path, columns
        rows = []
        if keep_until is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["iter"])) <= keep_until]
        buf = io.StringIO()
        w = csv.DictWriter(buf, columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        checkpoint.atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
        self._f = open(path, "a", newline="")
        self._w = csv.DictWriter(self._f, columns, extrasaction="ignore")

    def write(self, row: dict) -> None:
        self._w.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(path))


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                       int(has_gauss), float(gauss)],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB imresize(lr, scale, 'bicubic'), rounded to uint8: the bicubic baseline."""
    return np.clip(np.rint(imresize(lr, scale=scale)), 0, 255).astype(np.uint8)


class Trainer:
    """Builds the student (and teacher), the data and the optimizer of a TrainConfig and trains it.

    `train()` runs to `config.iters`; `compute_loss()` / `forward_backward()` are one step's pieces
    (the DDP test compares their gradients across process counts)."""

    def __init__(self, config: TrainConfig, dist_info: ddp.DistInfo | None = None,
                 log: Callable[[str], None] | None = None):
        self.cfg = config.resolved()
        self.dist = dist_info or ddp.DistInfo()
        self.device = ddp.device_for(self.dist, self.cfg.device)
        self.log = log or (lambda msg: None)
        self.out = Path(self.cfg.out)
        self.state_path = self.out / "last_state.pt"
        c = self.cfg
        if c.batch % self.dist.world:
            raise CadyqError(f"--batch {c.batch} is not divisible by the {self.dist.world} processes")
        if self.dist.is_main:
            if c.resume and not self.state_path.is_file():
                raise CadyqError(f"{self.state_path}: nothing to resume; drop --resume to start a new run")
            if not c.resume and self.state_path.is_file():
                raise CadyqError(f"{self.out} already holds a run; pass --resume to continue it, or choose "
                                 "another --out")
        from ..data.photos import refuse_report

        refuse_report(c.data, use="train on")  # before any work: the report set never trains nor picks a run
        refuse_report(c.val, use="validate on")
        torch.manual_seed(c.seed)
        np.random.seed(c.seed % 2**32)
        random.seed(c.seed)

        self.memory_format = torch.channels_last if c.channels_last else torch.contiguous_format
        self.model = self._build_student().to(self.device, memory_format=self.memory_format)
        self.quantized = quant_config(self.model).method != "fp32"
        self.teacher = None
        self.distiller = None
        if c.teacher:
            self.teacher = checkpoint.load(c.teacher).to(self.device, memory_format=self.memory_format).eval()
            self.distiller = Distiller(self.model, self.teacher, c.w_feat, c.w_block)
        self.w_bit = BitWeightSchedule(c.w_bit, c.w_bit_step, c.w_bit_every)
        self.dataset = SRTrainDataset(TrainDataConfig(c.data, c.scale, c.patch, True, c.cache, c.cache_dir, c.seed))
        self.optimizer, self.scheduler = make_optimizer(self.model, c.lr, c.alpha_lr, c.selector_lr, c.decay, c.gamma)
        self.precision = resolve_precision(c.precision, self.device)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.iteration = 0
        self.best_psnr: float | None = None
        self.last_val: dict | None = None
        self._val_images: list | None = None
        self._stop = _StopRequest()
        if c.resume:
            self._load_state()
        elif self._needs_warm_start:
            self.warm_start()
        self.ddp_model = ddp.wrap(self.model, self.dist, self.device, find_unused=c.mode != "full")

    # ---- building ------------------------------------------------------------------------------
    def _build_student(self) -> nn.Module:
        c = self.cfg
        model = quantize(create_model(c.backbone, c.scale, **c.arch), c.method, c.bits, mode=c.mode)
        self._needs_warm_start = c.method != "fp32"
        if c.init and not c.resume:
            src = checkpoint.load(c.init)
            checkpoint.transfer_state(model, src.state_dict())
            # clip values come from the init checkpoint when it has them (pams8 -> cadyq): no reset
            self._needs_warm_start = c.method != "fp32" and quant_config(src).method == "fp32"
            self.log(f"initialised from {c.init} ({quant_config(src).method})")
        if c.selector_lr == 0 and c.method == "gdq":  # frozen controller: no Gumbel noise on its decisions
            model.gdq.gbc.requires_grad_(False)
        return model

    @torch.no_grad()
    def warm_start(self) -> None:
        """PAMS warm start: every clip value becomes the mean observed max |x| over a few batches."""
        n = self.cfg.observe_batches
        loader = make_loader(self.dataset, self.cfg.batch, 0, n, self.dist.rank, self.dist.world, workers=0)
        self.model.eval()  # calibration must not move BatchNorm running statistics
        with observe(self.model):
            for lr, _ in loader:
                self.model(lr.to(self.device).float())
        self.model.train()
        self.log(f"clip values initialised from {n} batches (observe)")

    def dataset_batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of the global batch of `iteration` (what the loader yields then)."""
        loader = make_loader(self.dataset, self.cfg.batch, iteration, iteration + 1, self.dist.rank, self.dist.world)
        return next(iter(loader))

    # ---- one step ------------------------------------------------------------------------------
    def compute_loss(self, lr: torch.Tensor, hr: torch.Tensor, iteration: int) -> tuple[torch.Tensor, dict]:
        """Total loss of one batch (uint8 or float tensors on any device) and its terms."""
        lr = lr.to(self.device, non_blocking=True).float().contiguous(memory_format=self.memory_format)
        hr = hr.to(self.device, non_blocking=True).float()
        if self.distiller is not None:
            with self._autocast():
                self.distiller.teacher_features(lr)
        with self._autocast():
            sr = self.ddp_model(lr)
        terms = {"l1": l1_loss(sr.float(), hr)}
        if self.cfg.method in DYNAMIC_METHODS:
            w = self.w_bit(iteration)
            # a sum over the batch: times the world size, as DDP averages the gradients
            terms["bit"] = bit_loss(self.model, w, self.cfg.bit_loss) * self.dist.world
        if self.distiller is not None:
            terms["kd"] = self.distiller.loss()
        total = sum(terms.values())
        return total, terms

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None)

    def forward_backward(self, lr: torch.Tensor, hr: torch.Tensor, iteration: int) -> dict:
        self.ddp_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total, terms = self.compute_loss(lr, hr, iteration)
        if not torch.isfinite(total):
            raise CadyqError(f"the loss became {float(total)} at iteration {iteration}; lower --lr or train with "
                             "--precision fp32")
        self.scaler.scale(total).backward()
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["loss"] = float(total.detach())
        return out

    def train_step(self, lr: torch.Tensor, hr: torch.Tensor) -> dict:
        terms = self.forward_backward(lr, hr, self.iteration)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        return terms

    # ---- the loop ------------------------------------------------------------------------------
    def train(self, callback: Callable[["Trainer", dict], None] | None = None) -> TrainResult:
        """Train to cfg.iters; returns early (after saving) on SIGINT/SIGTERM or request_stop()."""
        c, main = self.cfg, self.dist.is_main
        start = self.iteration
        writers = self._open_logs(start) if main else None
        workers = min(4, usable_cores()) if c.workers is None else c.workers
        loader = make_loader(self.dataset, c.batch, start, c.iters, self.dist.rank, self.dist.world, workers,
                             pin_memory=self.device.type == "cuda")
        bar = None
        if main and c.progress:
            from tqdm import tqdm

            bar = tqdm(total=c.iters, initial=start, desc=f"{c.backbone} {c.method} x{c.scale}", dynamic_ncols=True)
        interrupted = False
        validated_at = -1
        try:
            with self._stop:
                t_last = time.perf_counter()
                for lr, hr in loader:
                    terms = self.train_step(lr, hr)
                    it = self.iteration
                    now = time.perf_counter()
                    sec, t_last = now - t_last, now
                    if it % c.log_every == 0 or it == c.iters:
                        row = self._train_row(it, terms, sec)
                        if main:
                            writers["train"].write(row)
                            self._tb(writers, "train", row, it)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(self._postfix(terms), refresh=False)
                    if callback is not None:
                        callback(self, terms)
                    if it % c.val_every == 0 or it == c.iters:
                        self._checkpoint(writers, bar)
                        validated_at = it
                    if ddp.any_true(self._stop.requested, self.dist, self.device) and it < c.iters:
                        interrupted = True
                        break
                if self.iteration != validated_at and self.iteration > start:
                    self._checkpoint(writers, bar, validate=not interrupted)
        finally:
            if bar is not None:
                bar.close()
            if writers:
                for w in writers.values():
                    if w is not None:
                        w.close()
        return TrainResult(self.iteration, interrupted, self.best_psnr, self.last_val, self.out)

    def request_stop(self) -> None:
        """Stop after the current iteration (as Ctrl-C does)."""
        self._stop.requested = True

    def _train_row(self, it: int, terms: dict, sec: float) -> dict:
        keys = ["loss", "l1", "bit", "kd"]
        vals = ddp.all_mean(torch.tensor([terms.get(k, 0.0) for k in keys], dtype=torch.float64, device=self.device),
                            self.dist).tolist()
        row = dict(zip(keys, vals), iter=it, sec=sec, lr=self.optimizer.param_groups[0]["lr"])
        if self.cfg.method in DYNAMIC_METHODS:
            row["w_bit"] = self.w_bit(it - 1)
        row["fqr"] = float(selected_bits(self.model).float().mean()) if self.quantized else 32.0
        return row

    def _postfix(self, terms: dict) -> dict:
        p = {"loss": f"{terms['loss']:.4g}"}
        if self.last_val:
            p["psnr"] = f"{self.last_val['psnr']:.2f}"
            p["fqr"] = f"{self.last_val['fqr']:.2f}"
        elif self.quantized:
            p["fqr"] = f"{float(selected_bits(self.model).float().mean()):.2f}"
        return p

    def _open_logs(self, start: int) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        keep = start if self.cfg.resume else None
        cfg = json.dumps(self.cfg.to_dict(), indent=2)
        checkpoint.atomic_write(self.out / "config.json", lambda tmp: Path(tmp).write_text(cfg))
        return {"train": _CSV(self.out / "train.csv", _TRAIN_COLUMNS, keep),
                "val": _CSV(self.out / "val.csv", _VAL_COLUMNS, keep),
                "tb": _tensorboard(self.out / "tb")}

    @staticmethod
    def _tb(writers, prefix: str, row: dict, it: int) -> None:
        tb = writers.get("tb")
        if tb is None:
            return
        for k, v in row.items():
            if k != "iter" and isinstance(v, (int, float)) and math.isfinite(v):
                tb.add_scalar(f"{prefix}/{k}", v, it)

    def _checkpoint(self, writers, bar, validate: bool = True) -> None:
        """Validate (rank 0, when a validation folder is set), then save last (and best)."""
        if not self.dist.is_main:
            return
        it = self.iteration
        if validate and self.cfg.val:
            res = self.validate()
            res["iter"] = it
            self.last_val = res
            writers["val"].write(res)
            self._tb(writers, "val", res, it)
            if bar is not None:
                bar.set_postfix({"psnr": f"{res['psnr']:.2f}", "fqr": f"{res['fqr']:.2f}"})
            if self.best_psnr is None or res["psnr"] > self.best_psnr:
                self.best_psnr = res["psnr"]
                checkpoint.save(self.model, self.out / "best.safetensors", self._extra(res))
        self.save_last()

    def _extra(self, val: dict | None = None) -> dict:
        extra = {"iteration": self.iteration, "train": {k: v for k, v in self.cfg.to_dict().items()
                                                         if k in ("data", "iters", "batch", "patch", "seed", "init",
                                                                  "teacher", "bit_loss", "w_bit", "w_bit_step")}}
        if val:
            extra["val"] = {k: val[k] for k in ("psnr", "ssim", "fqr", "bicubic_psnr", "images") if k in val}
        return extra

    # ---- validation ----------------------------------------------------------------------------
    def _load_val(self) -> list:
        if self._val_images is None:
            self._val_images = validation_images(self.cfg.val, self.cfg.scale, self.cfg.val_max)
        return self._val_images

    def validate(self) -> dict:
        try:
            return validate(self.model, self._load_val(), self.cfg.scale, str(self.device), self.cfg.val_tile,
                            self.cfg.val_overlap, self.cfg.val_batch)
        finally:
            self.model.train()

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "iteration": self.iteration, "config": self.cfg.to_dict(),
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": _rng_state(),
                "best_psnr": self.best_psnr, "last_val": self.last_val}

    def save_last(self) -> None:
        """last.safetensors (the weights, for users) and last_state.pt (everything, for --resume)."""
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        checkpoint.save(self.model, self.out / "last.safetensors", self._extra(self.last_val))
        state = self.state_dict()
        checkpoint.atomic_write(self.state_path, lambda tmp: torch.save(state, tmp))

    def _load_state(self) -> None:
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{self.state_path}: cannot read the training state ({e})") from e
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{self.state_path}: unknown training-state format {state.get('format')}")
        saved, now = state["config"], self.cfg.to_dict()
        diff = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in _RESUME_FIXED if saved.get(k) != now.get(k)]
        if diff:
            raise CadyqError(f"--resume with a different configuration ({'; '.join(diff)}); resume with the "
                             "options of the original run")
        if state["iteration"] > self.cfg.iters:
            raise CadyqError(f"the run already has {state['iteration']} iterations, more than --iters "
                             f"{self.cfg.iters}; pass a larger --iters to continue it")
        checkpoint.load_state(self.model, state["model"], str(self.state_path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self.best_psnr = state.get("best_psnr")
        self.last_val = state.get("last_val")
        self.log(f"resumed {self.out} at iteration {self.iteration}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto": bf16 where the hardware computes in it (CUDA with bf16, CPUs with AVX512-BF16/AMX), fp16 on
    older CUDA GPUs, fp32 elsewhere: emulated bf16 on a CPU without it is many times slower than fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


@contextlib.contextmanager
def distributed():
    """Join the torchrun process group for the duration of the block (no-op for one process)."""
    info = ddp.init_from_env()
    try:
        yield info
    finally:
        ddp.cleanup(info)


def validation_images(folder, scale: int, limit: int | None = None, *, report: bool = False) -> list:
    """(name, lr, hr, bicubic PSNR, bicubic SSIM) of each validation pair in `folder`. Validation picks runs, so the
    report set (cadyq.data.photos.REPORT) is refused unless `report` says these images are only reported."""
    if not report:
        from ..data.photos import refuse_report

        refuse_report(folder, use="validate on")
    imgs = []
    for p in find_pairs(folder, scale)[: limit or None]:
        lr, hr = (np.array(a) for a in load_pair(p, scale))  # writable copies
        bic = bicubic_upscale(lr, scale)
        imgs.append((p.name, lr, hr, psnr(bic, hr, scale), ssim(bic, hr, scale)))
    return imgs


@torch.no_grad()
def validate(model: nn.Module, images: list, scale: int, device: str = "cpu", tile: int = 96, overlap: int = 6,
             batch: int = 16) -> dict:
    """PSNR/SSIM (Y, shave = scale) and FQR of `model` on `validation_images`, through the Upscaler with the test
    protocol (96-px tiles, 6 px overlap, the torch reference), and the bicubic baseline."""
    from ..runtime import Upscaler

    t0 = time.perf_counter()
    up = Upscaler(model, backend="torch", device=device, tile=tile, overlap=overlap, batch=batch)
    ps, ss, fq = [], [], []
    for _, lr, hr, _, _ in images:
        r = up.upscale(lr)
        ps.append(psnr(r.image.rgb, hr, scale))
        ss.append(ssim(r.image.rgb, hr, scale))
        fq.append(r.fqr)
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "fqr": float(np.mean(fq)),
            "bicubic_psnr": float(np.mean([i[3] for i in images])),
            "bicubic_ssim": float(np.mean([i[4] for i in images])), "images": len(images),
            "sec": time.perf_counter() - t0}
