"""`cadyq train`: the arguments and the command (cadyq.cli wires them in).

  cadyq train --method fp32  --data DIV2K --out runs/edsr-fp32
  cadyq train --method pams8 --data DIV2K --init runs/edsr-fp32/best.safetensors --out runs/edsr-pams8
  cadyq train --method cadyq --data DIV2K --init runs/edsr-pams8/best.safetensors --out runs/edsr-cadyq
  torchrun --nproc_per_node=4 -m cadyq train ...   (DDP; --batch is the global batch)
"""
from __future__ import annotations

import argparse
import sys

from ..errors import CadyqError
from ..methods import METHODS


def _bits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.replace("+", ",").split(",") if b.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bit-widths like 4,6,8, got {text!r}") from None


HELP = {"train": "train fp32 -> pams8 -> cadyq (DDP under torchrun)"}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--method", choices=METHODS, default="cadyq",
                   help="fp32 from scratch; pams8 from an fp32 --init; cadyq (default) or gdq (Granular-DQ: one "
                        "bit-width per tile) from a pams8 --init")
    g.add_argument("--backbone", default=None, help="edsr | srresnet | carn | idn (default: the --init "
                   "checkpoint's, else edsr)")
    g.add_argument("--scale", type=int, default=None, help="2, 3 or 4 (default: the --init checkpoint's, else 4)")
    g.add_argument("--n-feats", type=int, default=None, help="channels of a model built from scratch")
    g.add_argument("--n-resblocks", type=int, default=None, help="residual blocks of a model built from scratch")
    g.add_argument("--bits", type=_bits, default=None, help="bit candidates (default 4,6,8; gdq 4,5,6,8)")
    g.add_argument("--mode", choices=("full", "fixed", "tile", "layer"), default="full",
                   help="bit selection (ablations of Table 2; default full)")
    g.add_argument("--init", default=None, help="checkpoint to start from (.safetensors or an official .pt/.pth)")
    g.add_argument("--teacher", default=None, help="distillation teacher (cadyq; default: --init)")
    g.add_argument("--no-kd", dest="kd", action="store_false", help="no distillation")

    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True, help="DIV2K folder (DIV2K_train_HR + DIV2K_train_LR_bicubic) or a "
                   "folder of HR images (LR made by MATLAB bicubic)")
    g.add_argument("--patch", type=int, default=None, help="LR patch size (default 48)")
    g.add_argument("--batch", type=int, default=None, help="global batch, split across processes (default 16)")
    g.add_argument("--workers", type=int, default=None,
                   help="data loader processes (default: the usable cores, at most 4)")
    g.add_argument("--cache", choices=("memory", "npy", "none"), default="memory",
                   help="decoded-image cache (default memory)")
    g.add_argument("--cache-dir", default=None, help="folder of the npy cache (default DATA/.cadyq_cache)")
    g.add_argument("--seed", type=int, default=0)

    g = parser.add_argument_group("optimisation (defaults: the paper's)")
    g.add_argument("--iters", type=int, default=None, help="iterations (300K; CARN 600K)")
    g.add_argument("--lr", type=float, default=None, help="network lr (1e-4)")
    g.add_argument("--alpha-lr", type=float, default=None, help="clip-value lr (1e-2)")
    g.add_argument("--selector-lr", type=float, default=None, help="bit-selector lr (1e-4; CARN 1e-3)")
    g.add_argument("--decay", type=int, default=None, help="halve every lr every N iterations (150K; CARN 400K)")
    g.add_argument("--gamma", type=float, default=None, help="lr decay factor (0.5)")
    g.add_argument("--w-bit", type=float, default=None, help="bit-loss weight at the start (1e-4)")
    g.add_argument("--w-bit-step", type=float, default=None, help="added to w_bit every --w-bit-every (1e-6)")
    g.add_argument("--w-bit-every", type=int, default=None, help="iterations per w_bit step (1000)")
    g.add_argument("--bit-loss", choices=("weighted", "plain"), default="weighted",
                   help="weighted (the paper) or plain (ablation)")
    g.add_argument("--w-feat", type=float, default=None, help="distillation weight, body feature (1e3)")
    g.add_argument("--w-block", type=float, default=None, help="distillation weight per block (1e2)")
    g.add_argument("--observe-batches", type=int, default=None, help="batches of the clip-value warm start (10)")
    g.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="autocast dtype of the forward, fp32 master weights (auto: bf16 on CUDA and on CPUs with "
                        "AVX512-BF16/AMX, fp16 on older GPUs, else fp32)")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="NCHW instead of channels_last activations")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")

    g = parser.add_argument_group("validation and output")
    g.add_argument("--val", default=None, help="validation folder (any layout cadyq knows, or HR images)")
    g.add_argument("--val-every", type=int, default=1000, help="validate and save every N iterations (1000)")
    g.add_argument("--val-max", type=int, default=None, help="use only the first N validation images")
    g.add_argument("--val-tile", type=int, default=96, help="validation tile (96, the test protocol)")
    g.add_argument("--val-overlap", type=int, default=6, help="validation tile overlap (6)")
    g.add_argument("--val-batch", type=int, default=16, help="tiles per validation batch")
    g.add_argument("--out", default=None, help="run folder (default runs/<backbone>-<method>-x<scale>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    g.add_argument("--log-every", type=int, default=10, help="train.csv row every N iterations (10)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    from .trainer import TrainConfig

    arch = {k: v for k, v in (("n_feats", args.n_feats), ("n_resblocks", args.n_resblocks)) if v is not None}
    if arch and not args.init:
        from ..models import create_model

        import dataclasses

        full = dataclasses.asdict(create_model(args.backbone or "edsr", args.scale or 4).config)
        bad = sorted(set(arch) - set(full))
        if bad:
            raise CadyqError(f"{full['name']} has no option {', '.join(bad)}; its options: "
                             f"{', '.join(k for k in full if k not in ('name', 'scale'))}")
        arch = {**{k: v for k, v in full.items() if k not in ("name", "scale")}, **arch}
    return TrainConfig(
        method=args.method, data=args.data, backbone=args.backbone, scale=args.scale, arch=arch,
        bits=tuple(args.bits) if args.bits else None, mode=args.mode, init=args.init, teacher=args.teacher, kd=args.kd, iters=args.iters,
        batch=args.batch, patch=args.patch, lr=args.lr, alpha_lr=args.alpha_lr, selector_lr=args.selector_lr,
        decay=args.decay, gamma=args.gamma, w_bit=args.w_bit, w_bit_step=args.w_bit_step,
        w_bit_every=args.w_bit_every, bit_loss=args.bit_loss, w_feat=args.w_feat, w_block=args.w_block,
        observe_batches=args.observe_batches, precision=args.precision, channels_last=args.channels_last, val=args.val, val_every=args.val_every,
        val_max=args.val_max, val_tile=args.val_tile, val_overlap=args.val_overlap, val_batch=args.val_batch,
        out=args.out, resume=args.resume, seed=args.seed, workers=args.workers, cache=args.cache,
        cache_dir=args.cache_dir, device=args.device, log_every=args.log_every, progress=args.progress)


def run_train(args: argparse.Namespace) -> int:
    """Run `cadyq train`; 0 when done, 130 when stopped by Ctrl-C/SIGTERM (last state saved)."""
    from .trainer import Trainer, distributed

    config = config_from_args(args)
    with distributed() as info:
        def log(msg: str) -> None:
            if info.is_main:
                print(msg, file=sys.stderr)

        trainer = Trainer(config, info, log=log)
        log(f"training {trainer.cfg.backbone} x{trainer.cfg.scale} {trainer.cfg.method} for {trainer.cfg.iters} "
            f"iterations (batch {trainer.cfg.batch}, patch {trainer.cfg.patch}, {info.world} process(es), "
            f"{trainer.device}) -> {trainer.out}")
        result = trainer.train()
        if result.interrupted:
            log(f"stopped at iteration {result.iteration}; saved {result.out}/last.safetensors; continue with "
                "the same command and --resume")
            return 130
        v = result.last_val
        if v:
            log(f"done: iteration {result.iteration}, PSNR {v['psnr']:.3f} dB (bicubic {v['bicubic_psnr']:.3f}), "
                f"SSIM {v['ssim']:.4f}, FQR {v['fqr']:.3f}; best PSNR {result.best_psnr:.3f}")
        else:
            log(f"done: iteration {result.iteration}; weights in {result.out}/last.safetensors")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry (`python -m cadyq.train.cli ...`), for use before cadyq.cli wires it in."""
    parser = argparse.ArgumentParser(prog="cadyq train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except CadyqError as e:
        if args.debug:
            raise
        print(f"cadyq train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
