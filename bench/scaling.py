"""Data-parallel training throughput, 1 process against N: ``python bench/scaling.py --ranks 1 2``.

Each configuration is launched with torchrun (``--standalone``) and runs the trainer's own step
(empirical.training.steps.batch_loss through DDP, gradient clipping, Adam) on random images of the dataset's
shape with
the preset's global batch; rank 0 reports images/s. Prints each configuration's images/s and its ratio to the
first (the scaling ratio). On a CPU, ``--threads`` sets the torch threads of every process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from empirical.data.registry import DATASETS  # noqa: E402
from empirical.io import distributed  # noqa: E402
from empirical.models.registry import MODELS, build_model  # noqa: E402
from empirical.training.presets import get_preset  # noqa: E402
from empirical.training.steps import batch_loss, initialize, make_optimizer, step_generator, training_forward  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """One rank: join the group, time the steps, and leave the group once the DDP model is gone."""
    torch.set_num_threads(args.threads)
    device = distributed.init_from_env(args.device)
    try:
        img_s, batch = time_steps(args, device)
        world = distributed.world()
        if world.main:
            Path(args.result).write_text(json.dumps({
                "ranks": world.size, "threads": args.threads, "batch": batch, "device": str(device),
                "img_s": img_s}))
    finally:
        distributed.shutdown()


def time_steps(args: argparse.Namespace, device: torch.device) -> tuple[float, int]:
    """(images/s over ``--iters`` training steps of the global batch after 3 warm-up steps, the global batch)."""
    world = distributed.world()
    preset = get_preset(args.preset, args.model, DATASETS[args.dataset].shape)
    cfg = preset.train
    model = build_model(args.model, preset.model).to(device).train()
    images = torch.randint(0, 256, (2048, *DATASETS[args.dataset].shape), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    initialize(model, images, cfg.seed, device)
    forward, optimizer = training_forward(model, cfg, device), make_optimizer(model, cfg)
    shard = world.shard(cfg.batch_size) if world.size > 1 else None

    def step(i: int) -> None:
        gen = step_generator(cfg.seed, i, device)
        batch = images[torch.randint(len(images), (cfg.batch_size,), generator=gen, device=device)]
        loss, _ = batch_loss(forward, batch, gen, preset.model.dims, shard)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()

    for i in range(3):
        step(i)
    distributed.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(args.iters):
        step(3 + i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    distributed.barrier()
    return cfg.batch_size * args.iters / (time.perf_counter() - t0), cfg.batch_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--model", default="cvglow", choices=MODELS)
    p.add_argument("--dataset", default="cifar10", choices=list(DATASETS))
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if present, else cpu), cpu, cuda")
    p.add_argument("--json", type=Path)
    p.add_argument("--result", help=argparse.SUPPRESS)  # set for the torchrun workers
    args = p.parse_args(argv)
    if args.result:
        worker(args)
        return 0
    rows = []
    for n in args.ranks:
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                   __file__, *(argv if argv is not None else sys.argv[1:]), "--result", str(result)]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            code = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode
            if code != 0:
                print(f"torchrun with {n} process(es) failed (exit {code}); its output is above", file=sys.stderr)
                return 1
            rows.append(json.loads(result.read_text()))
    print(f"{args.model}/{args.preset} training on {args.dataset}-shaped batches of {rows[0]['batch']} "
          f"(global), {args.threads} thread(s) per process, device {rows[0]['device']}")
    print(f"{'processes':>9} {'train img/s':>12} {'ratio':>6}")
    for r in rows:
        r["ratio"] = r["img_s"] / rows[0]["img_s"]
        print(f"{r['ranks']:>9} {r['img_s']:>12.1f} {r['ratio']:>6.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
