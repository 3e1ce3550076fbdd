"""Training and evaluation throughput of a preset on this device: ``python bench/throughput.py``.

Prints images/s, peak memory and (with --peak-tflops) model FLOPs utilisation, for each option toggled
on/off (bf16 coupling networks, torch.compile, channels-last; on a CPU compile and channels-last with
``--cpu-variants``) with its ratio to the baseline.
``--anchor DIR`` adds the reference PyTorch Glow (y0ast/Glow-PyTorch, from ../shared/anchors) built with the
same levels, steps, hidden channels and coupling, timed the same way on the same batch, with both parameter
counts. 1 process against N under torchrun: bench/scaling.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from empirical.data.registry import DATASETS  # noqa: E402
from empirical.models.flows import Glow  # noqa: E402
from empirical.models.likelihood import bits_per_dim, dequantize  # noqa: E402
from empirical.training.presets import get_preset  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rates(model: torch.nn.Module, train_step, eval_step, device: torch.device, batch: int, iters: int,
           warmup: int) -> tuple[float, float]:
    """(training, evaluation) images/s: ``iters`` timed calls of each after ``warmup`` training steps and one
    evaluation call; the peak-memory counter starts at the warm-up."""
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rates = []
    for step, n_warm, grad in ((train_step, warmup, True), (eval_step, 1, False)):
        if not grad:
            model.eval()
        with torch.set_grad_enabled(grad):
            for _ in range(n_warm):
                step()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                step()
            _sync(device)
        rates.append(batch * iters / (time.perf_counter() - t0))
    return rates[0], rates[1]


def measure(preset_name: str, model_name: str, dataset: str, device: torch.device, batch: int, iters: int,
            amp: bool, compile_: bool, channels_last: bool) -> dict:
    preset = get_preset(preset_name, model_name, DATASETS[dataset].shape)
    model = Glow(preset.model).to(device)
    for m in model.modules():
        if hasattr(m, "amp_dtype"):
            m.amp_dtype = torch.bfloat16 if amp else None
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model.log_prob) if compile_ else model.log_prob
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    images = torch.randint(0, 256, (batch, *DATASETS[dataset].shape), dtype=torch.uint8, device=device)
    dims = preset.model.dims

    def x():
        t = dequantize(images)
        return t.contiguous(memory_format=torch.channels_last) if channels_last else t

    model.train()
    with torch.no_grad():
        model.log_prob(x())  # actnorm init

    def train_step():
        loss = bits_per_dim(fwd(x()), dims).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        loss = bits_per_dim(model.log_prob(x()), dims).mean()
        loss.backward()
    train_flops = counter.get_total_flops() / batch
    train_ips, eval_ips = _rates(model, train_step, lambda: fwd(x()), device, batch, iters, warmup=2)
    return {"preset": preset_name, "model": model_name, "dataset": dataset, "batch": batch, "amp": amp,
            "compile": compile_, "channels_last": channels_last, "train_img_s": train_ips, "eval_img_s": eval_ips,
            "peak_mem_mb": _peak_mb(device), "train_gflop_per_img": train_flops / 1e9}


def measure_anchor(anchor: Path, preset_name: str, model_name: str, dataset: str, device: torch.device,
                   batch: int, iters: int) -> dict:
    """The reference Glow of ``anchor`` (y0ast/Glow-PyTorch) with the preset's architecture: its own forward
    (inputs in [-0.5, 0.5], bpd per image), Adam, fp32; timed like ``measure``."""
    sys.path.insert(0, str(anchor))
    from model import Glow as AnchorGlow  # the reference implementation, for this side-by-side timing only

    cfg = get_preset(preset_name, model_name, DATASETS[dataset].shape).model
    c, h, w = DATASETS[dataset].shape
    model = AnchorGlow(image_shape=(h, w, c), hidden_channels=cfg.hidden, K=cfg.steps, L=cfg.levels,
                       actnorm_scale=1.0, flow_permutation="invconv",
                       flow_coupling="affine" if cfg.coupling == "affine" else "additive", LU_decomposed=cfg.lu,
                       y_classes=10, learn_top=cfg.prior == "learned", y_condition=False).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    images = torch.randint(0, 256, (batch, c, h, w), dtype=torch.uint8, device=device)

    def x():
        return dequantize(images) - 0.5

    def train_step():
        _, bpd, _ = model(x())
        loss = bpd.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # 3 warm-up steps: the first forward runs its actnorm initialisation
    train_ips, eval_ips = _rates(model, train_step, lambda: model(x()), device, batch, iters, warmup=3)
    return {"train_img_s": train_ips, "eval_img_s": eval_ips, "peak_mem_mb": _peak_mb(device),
            "params": sum(p.numel() for p in model.parameters())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--model", default="glow", choices=["glow", "cvglow"])
    p.add_argument("--dataset", default="cifar10", choices=list(DATASETS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak-tflops", type=float, help="device peak (e.g. 989 for H100 bf16) for MFU")
    p.add_argument("--anchor", type=Path, help="folder of the reference Glow (../shared/anchors/y0ast-glow-pytorch)")
    p.add_argument("--json", type=Path)
    p.add_argument("--cpu-variants", action="store_true", help="on a CPU also measure torch.compile and channels-last")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    base = dict(amp=False, compile_=False, channels_last=False)
    variants = [base]
    if device.type == "cuda":
        variants += [{**base, "amp": True}, {**base, "amp": True, "compile_": True},
                     {**base, "amp": True, "channels_last": True}]
    elif args.cpu_variants:  # no bf16 on a CPU; torch.compile needs a C++ compiler (inductor)
        variants += [{**base, "compile_": True}, {**base, "channels_last": True}]
    rows = [measure(args.preset, args.model, args.dataset, device, args.batch, args.iters, **v) for v in variants]
    ref = rows[0]
    print(f"{args.model}/{args.preset} on {args.dataset}-shaped batches of {args.batch}, device {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    print(f"{'bf16':>5} {'compile':>7} {'ch-last':>7} {'train img/s':>12} {'ratio':>6} {'eval img/s':>11} "
          f"{'ratio':>6} {'peak MB':>8} {'GFLOP/img':>9} {'MFU':>6}")
    for r in rows:
        mfu = (r["train_img_s"] * r["train_gflop_per_img"] / 1e3 / args.peak_tflops) if args.peak_tflops else None
        r["mfu"] = mfu
        print(f"{r['amp']!s:>5} {r['compile']!s:>7} {r['channels_last']!s:>7} {r['train_img_s']:>12.1f} "
              f"{r['train_img_s'] / ref['train_img_s']:>6.2f} {r['eval_img_s']:>11.1f} "
              f"{r['eval_img_s'] / ref['eval_img_s']:>6.2f} {r['peak_mem_mb']:>8.0f} {r['train_gflop_per_img']:>9.3f} "
              f"{'n/a' if mfu is None else f'{100 * mfu:.1f}%':>6}")
    out = {"rows": rows}
    if args.anchor:
        ours = sum(p.numel() for p in Glow(get_preset(args.preset, args.model, DATASETS[args.dataset].shape).model)
                   .parameters())
        ref = measure_anchor(args.anchor, args.preset, args.model, args.dataset, device, args.batch, args.iters)
        best = max(rows, key=lambda r: r["train_img_s"])
        out["anchor"] = {**ref, "ours_params": ours, "train_ratio_best": best["train_img_s"] / ref["train_img_s"],
                         "train_ratio_fp32": rows[0]["train_img_s"] / ref["train_img_s"]}
        print(f"reference Glow ({args.anchor.name}, fp32, same architecture): train {ref['train_img_s']:.1f} img/s, "
              f"eval {ref['eval_img_s']:.1f} img/s, peak {ref['peak_mem_mb']:.0f} MB, {ref['params']:,} parameters "
              f"(ours {ours:,}); ours/reference, training: fp32 {out['anchor']['train_ratio_fp32']:.2f}×, "
              f"best option {out['anchor']['train_ratio_best']:.2f}×")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

