"""The whole benchmark (`benchmark`), its ratios and warnings, and the trtexec-style text report."""
from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..hardware import usable_cores
from .configs import make_configs
from .settings import BenchError, BenchSettings, PERCENTILES
from .timing import bench_tiles, image_figures, load_hr, make_pair, time_configs

# ---- machine info ---------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device) -> dict:
    from .. import __version__

    dev = torch.device(device)
    info = {"cadyq": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "device": str(dev)}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(device_name=props.name, compute_capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        info["device_name"] = f"CPU: {info['cpu']}"
    return info


# ---- the whole benchmark --------------------------------------------------------------------------------
def benchmark(model: str, compare=(), backend: str = "auto", device: str = "auto", settings: BenchSettings | None = None,
              image=None, threads: int | None = None, foreign: dict | None = None,
              progress: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark; returns the report (JSON-able dict). See the module docstring."""
    from ..runtime.backend import resolve_device

    from ..runtime.memory import keep_large_allocations

    settings = settings or BenchSettings()
    settings.validate()
    keep_large_allocations()  # for every row alike: large CPU tensors are not page-faulted in again on each run
    if threads is not None and threads < 1:
        raise BenchError(f"--threads must be at least 1, got {threads}")
    load_before = _load1()  # the machine's load before this process adds its own
    dev = resolve_device(device)
    hr_full, image_name = load_hr(image)
    torch_threads = torch.get_num_threads()
    tmp = tempfile.TemporaryDirectory(prefix="cadyq-bench-")
    try:
        if threads:
            torch.set_num_threads(threads)
        pairs: dict[int, tuple] = {}

        def inputs(scale: int):  # (HR, LR, tiles) at the model's scale; also calibrates a pams8 baseline
            if scale not in pairs:
                hr, lr = make_pair(hr_full, scale)
                pairs[scale] = (hr, lr, bench_tiles(lr, settings))
            return pairs[scale]

        if progress:
            progress("building configurations")
        configs, skipped = make_configs(model, compare, backend, str(dev), settings.tile, lambda s: inputs(s)[2],
                                        tmp.name, threads, foreign)
        hr, lr, tiles = inputs(configs[0].backend.info.scale)
        for c in configs:
            ts = c.backend.tile_sizes
            if ts is not None and tuple(ts) != (settings.tile, settings.tile):
                raise BenchError(f"{c.label} takes {ts[0]}x{ts[1]} tiles; pass --tile {ts[0]}")
        timing = time_configs(configs, tiles, settings, progress, _fp32_reference(configs, tiles, settings.batch))
        rows = []
        for c, t in zip(configs, timing):
            if progress:
                progress(f"whole image: {c.label}")
            b = c.backend
            row = {"label": c.label, "source": c.source, "backend": b.name, "device": str(b.device),
                   "model": {"backbone": b.info.backbone, "scale": b.info.scale, "method": b.info.method,
                             "bits": list(b.info.bits), "dynamic_layers": b.info.n_layers},
                   "notes": c.notes, **t}
            if b.choice is not None:
                row["choice"] = b.choice.why
            providers = getattr(b, "providers", None)
            if providers:
                row["providers"] = list(providers)
            row["image"] = image_figures(c, hr, lr, settings, settings.batch)
            rows.append(row)
        machine = machine_info(dev)
    finally:
        tmp.cleanup()
        torch.set_num_threads(torch_threads)
    _add_ratios(rows)
    report = {"settings": {**dataclasses.asdict(settings), "model": configs[0].source, "compare": list(compare),
                           "backend": backend, "device": str(dev), "threads": threads,
                           "timing": "CUDA events, synchronized per iteration" if dev.type == "cuda"
                           else "time.perf_counter around Backend.run"},
              "machine": machine,
              "image": {"name": image_name, "hr_size": [int(hr.shape[0]), int(hr.shape[1])],
                        "lr_size": [int(lr.shape[0]), int(lr.shape[1])], "lr": "cadyq.data.resize.bicubic_downscale"},
              "results": rows, "skipped": skipped, "warnings": _warnings(rows, dev, threads, load_before)}
    report["machine"]["load_average_1min_before"] = load_before
    _add_peer_ratios(report)
    return report


def _fp32_reference(configs, tiles: torch.Tensor, batch: int) -> torch.Tensor | None:
    """The fp32 backbone's SR of the timed tiles (the accuracy reference of every row), when a checkpoint
    model is benchmarked."""
    from ..quant import quant_config
    from .configs import build_baseline

    module = configs[0].module
    if module is None:
        return None
    fp32 = module if quant_config(module).method == "fp32" else build_baseline(module, "fp32")[0]
    with torch.inference_mode():
        return fp32.cpu().eval()(tiles[:batch].cpu().float())


def _db(value) -> str:
    if value is None:
        return "-"
    return "exact" if value == float("inf") else f"{value:.1f}"


def _is_float(row: dict) -> bool:
    return row["model"]["method"] in ("fp32", "fp16", "bf16")


def _add_peer_ratios(report: dict) -> None:
    """The fastest float row (tiles/s) and every row's speed against it."""
    rows = report["results"]
    floats = [r for r in rows if _is_float(r)]
    if not floats:
        return
    best = max(floats, key=lambda r: r["throughput"]["tiles_per_s"])
    report["fastest_float_peer"] = best["label"]
    for r in rows:
        r["vs_fastest_float"] = {
            "throughput_x": r["throughput"]["tiles_per_s"] / best["throughput"]["tiles_per_s"],
            "end_to_end_speed_x": best["image"]["end_to_end_s"] / r["image"]["end_to_end_s"]}


def _add_ratios(rows: list[dict]) -> None:
    ref = rows[0]
    for r in rows:
        im, rim = r["image"], ref["image"]
        r["vs_first"] = {
            "throughput_x": r["throughput"]["tiles_per_s"] / ref["throughput"]["tiles_per_s"],
            "mean_latency_x": r["latency_ms"]["mean"] / ref["latency_ms"]["mean"],
            "end_to_end_speed_x": rim["end_to_end_s"] / im["end_to_end_s"],
            "bitops_x": im["bitops_g"] / rim["bitops_g"] if rim["bitops_g"] else float("nan"),
            "psnr_delta_db": im["psnr"] - rim["psnr"],
        }


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _warnings(rows: list[dict], dev: torch.device, threads: int | None = None, load: float | None = None) -> list[str]:
    out = []
    for r in rows:
        key = "compute_ms" if "compute_ms" in r else "latency_ms"
        cov = r[key]["cov"]
        if cov > 0.1:
            out.append(f"{r['label']}: {'GPU compute' if key == 'compute_ms' else 'latency'} time is unstable "
                       f"(coefficient of variation {cov:.0%}); " + ("lock the GPU clocks or run longer (--duration)"
                                                                     if dev.type == "cuda" else
                                                                     "the CPU is shared or busy; run longer or on an idle machine"))
        if "enqueue_ms" in r and r["enqueue_ms"]["mean"] > r["compute_ms"]["mean"]:
            out.append(f"{r['label']}: enqueue time exceeds GPU compute time: the GPU waits for the host "
                       "(larger batches or CUDA graphs may help)")
        if r["batch"] != rows[0]["batch"]:
            out.append(f"{r['label']}: runs batches of {r['batch']} (its model's limit), not {rows[0]['batch']}")
    cores = usable_cores()
    if dev.type == "cpu" and (threads or torch.get_num_threads()) > 1 and load is not None and load >= cores:
        out.append(f"the CPU is busy (load average {load:.1f} on {cores} cores) and the runtimes use several threads: "
                   "their thread pools (torch's OpenMP, ONNX Runtime's spinning workers) then wait for each other "
                   "and times grow several-fold; --threads 1 gives steadier figures")
    return out


# ---- text report ----------------------------------------------------------------------------------------
def _stats_line(name: str, st: dict) -> str:
    return (f"{name}: min = {st['min']:.3f} ms, max = {st['max']:.3f} ms, mean = {st['mean']:.3f} ms, "
            f"median = {st['median']:.3f} ms, " + ", ".join(f"percentile({p}%) = {st[f'p{p}']:.3f} ms" for p in PERCENTILES))


def format_report(report: dict) -> str:
    st, m, img = report["settings"], report["machine"], report["image"]
    lines = ["=== Setup ===",
             f"Device: {m['device_name']} ({m['device']}); torch {m['torch']} ({m['torch_threads']} threads)"
             + (f", onnxruntime {m['onnxruntime']}" if m.get("onnxruntime") else "")
             + (f"; load average before the run {m['load_average_1min_before']} on {m.get('affinity_cpus', m['cpu_count'])} cores"
                if m.get("load_average_1min_before") is not None else ""),
             f"Image: {img['name']}, HR {img['hr_size'][1]}x{img['hr_size'][0]}, LR {img['lr_size'][1]}x{img['lr_size'][0]} (bicubic)",
             f"Tiles: {st['tile']}x{st['tile']} LR, batch {st['batch']}, {st['warmup']} warm-up iterations, "
             + (f"{st['iterations']} timed iterations" if st["iterations"] else f"~{st['duration']:g} s per configuration")
             + f"; {st['timing']}; configurations timed {st['schedule']}"
             + (f"; {st['threads']} thread(s)" if st.get("threads") else "")]
    for r in report["results"]:
        t, im = r["throughput"], r["image"]
        lines += ["", (f"=== Performance summary: {r['label']} ({r['model']['backbone']} x{r['model']['scale']} "
                       f"{r['model']['method']}, {r['backend']} on {r['device']}) ===")]
        if r.get("choice"):
            lines.append(f"Backend: {r['backend']}, chosen automatically: {r['choice']}")
        lines += [f"Note: {n}" for n in r["notes"]]
        lines.append(f"Throughput: {t['tiles_per_s']:.2f} tiles/s ({t['batches_per_s']:.2f} batches of {r['batch']}/s), "
                     f"{t['lr_mpix_per_s']:.3f} LR MP/s, {t['sr_mpix_per_s']:.3f} SR MP/s")
        lines.append(_stats_line("Latency", r["latency_ms"]))
        for k, name in (("enqueue_ms", "Enqueue Time"), ("h2d_ms", "H2D Latency"), ("compute_ms", "GPU Compute Time"),
                        ("d2h_ms", "D2H Latency")):
            if k in r:
                lines.append(_stats_line(name, r[k]))
        lines.append(f"Total Host Walltime: {r['total_host_walltime_s']:.3f} s ({r['iterations']} iterations)")
        if "total_gpu_compute_s" in r:
            lines.append(f"Total GPU Compute Time: {r['total_gpu_compute_s']:.3f} s")
        tm = im["timings_s"]
        lines.append(f"Whole image: {im['lr_size'][1]}x{im['lr_size'][0]} -> {im['sr_size'][1]}x{im['sr_size'][0]}, "
                     f"{im['n_tiles']} tiles, end-to-end {im['end_to_end_s'] * 1e3:.1f} ms (inference "
                     f"{tm['inference'] * 1e3:.1f}, stitch {tm['stitch'] * 1e3:.1f} ms), {im['sr_mpix_per_s']:.3f} SR MP/s")
        lines.append(f"Quality: PSNR {im['psnr']:.2f} dB, SSIM {im['ssim']:.4f} (Y), bicubic {im['psnr_bicubic']:.2f} dB "
                     f"({im['psnr_gain_db']:+.2f} dB); FQR {im['fqr']:.2f}; BitOPs {im['bitops_g']:.3f} G "
                     f"({im['bitops_g_per_sr_mpix']:.3f} G per SR MP)")
    for s in report["skipped"]:
        lines += ["", f"=== {s['label']}: not run: {s['reason']} ==="]
    lines += ["", "=== Comparison (ratios against the first row, measured in this run) ==="]
    head = (f"{'configuration':<26} {'backend':<11} {'mean ms':>9} {'p99 ms':>9} {'tiles/s':>9} {'speed':>7} "
            f"{'e2e ms':>8} {'e2e x':>6} {'FQR':>6} {'BitOPs G':>9} {'BitOPs x':>8} {'PSNR':>6} {'dPSNR':>6} {'SSIM':>7} {'vs bic':>7} "
            f"{'vs fp32':>7}")
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        v, im = r["vs_first"], r["image"]
        lines.append(f"{r['label'][:26]:<26} {r['backend'][:11]:<11} {r['latency_ms']['mean']:9.3f} {r['latency_ms']['p99']:9.3f} "
                     f"{r['throughput']['tiles_per_s']:9.2f} {v['throughput_x']:6.2f}x {im['end_to_end_s'] * 1e3:8.1f} "
                     f"{v['end_to_end_speed_x']:5.2f}x {im['fqr']:6.2f} {im['bitops_g']:9.3f} {v['bitops_x']:7.3f}x "
                     f"{im['psnr']:6.2f} {v['psnr_delta_db']:+6.2f} {im['ssim']:7.4f} {im['psnr_gain_db']:+7.2f} "
                     f"{_db(r.get('psnr_vs_fp32_tiles_db')):>7}")
    if any("psnr_vs_fp32_tiles_db" in r for r in report["results"]):
        lines.append("vs fp32: PSNR (dB, RGB) of each row's SR of the timed tiles against the fp32 model's")
    for s in report["skipped"]:
        lines.append(f"{s['label']:<26} {'-':<11} unsupported here: {s['reason']}")
    if report.get("fastest_float_peer"):
        lines += ["", f"=== Against the fastest float peer ({report['fastest_float_peer']}), measured in this run ==="]
        for r in report["results"]:
            v = r["vs_fastest_float"]
            lines.append(f"{r['label'][:26]:<26} {r['backend'][:11]:<11} tiles {v['throughput_x']:6.2f}x   "
                         f"whole image {v['end_to_end_speed_x']:6.2f}x")
    if report["warnings"]:
        lines.append("")
        lines += [f"[W] {w}" for w in report["warnings"]]
    return "\n".join(lines)
