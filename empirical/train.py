"""The one trainer: ``python -m empirical.train --dataset cifar10 --model glow --preset cpu``, or data-parallel
``torchrun --nproc_per_node=N -m empirical.train ...`` (see empirical.distributed).

Minimises bits/dim of dequantised images with Adam/Adamax, linear warm-up and gradient clipping.
The uint8 training set lives on the training device and batches are drawn from a generator seeded
by (seed, step), so a resumed run sees exactly the batches and noise it would have seen, whatever the
number of ranks before and after.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import MISSING, dataclass, fields
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from empirical import distributed, sources
from empirical.atomic import write_json
from empirical.checkpoint import code_version, load_checkpoint, non_finite_tensors, save_checkpoint, trained_on
from empirical.cli import add_data_arguments, data_options, run_cli, writable_dir
from empirical.contract import describe
from empirical.distributed import resolve_device
from empirical.errors import CheckpointError, TrainingError
from empirical.evaluate import NonFiniteLikelihood, evaluate
from empirical.likelihood import bits_per_dim, log_likelihood
from empirical.locking import run_lock
from empirical.models import MODELS, build_model
from empirical.presets import PRESETS, Preset, TrainConfig, get_preset
from empirical.provenance import device_description, git_commit
from empirical.sources import ImageSet, training_digest

CHECKPOINT = "last.pt"


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.optimizer == "adamax":
        return torch.optim.Adamax(model.parameters(), lr=cfg.lr)
    raise TrainingError(f"unknown optimizer {cfg.optimizer!r}; use adam or adamax")


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    test_bpd: float | None
    seconds: float
    model: torch.nn.Module  # the trained model in memory (every rank's is identical)


RESUMABLE = ("steps", "lr", "warmup", "eval_every")  # the settings --resume may change
_RESUMABLE_TEXT = "only --steps, --lr, --warmup and --eval-every may change on --resume"


def _resume_state(payload: dict, ckpt_path: Path, preset: Preset, sets: tuple[ImageSet, ImageSet],
                  n_train: int) -> list[dict]:
    """Check a checkpoint can be resumed under ``preset`` on these data; returns the schedule changes (lr, warm-up,
    steps) it records, with this resume's changes appended. Other data, another training subset, other settings
    or fewer steps than it has done are refused."""
    cfg = preset.train
    if not trained_on(payload, *sets):
        raise CheckpointError(f"{ckpt_path} was trained on other data ({payload.get('dataset')}, other images); "
                              f"resume it on the data it was trained on, or choose another --out")
    if payload.get("train_images", n_train) != n_train:
        raise CheckpointError(f"{ckpt_path} was trained on {payload['train_images']} images, this run would use "
                              f"{n_train} (another --train-subset?); {_RESUMABLE_TEXT}")
    if cfg.steps < payload["step"]:
        raise CheckpointError(f"{ckpt_path} has already done {payload['step']} steps; --steps {cfg.steps} would "
                              f"rewrite its record: pass --steps ≥ {payload['step']}")
    # a field added to TrainConfig after the checkpoint was written takes its default (what that run used)
    old = {**{f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}, **payload["train_config"]}
    if payload["model_config"] != preset.model.to_dict() or {**old, **{k: cfg.to_dict()[k] for k in RESUMABLE}} \
            != cfg.to_dict():
        raise CheckpointError(f"{ckpt_path} was trained with other hyperparameters; use another --out or drop "
                              f"--resume ({_RESUMABLE_TEXT})")
    changes = list(payload.get("schedule_changes", []))
    changed = {k: [old[k], cfg.to_dict()[k]] for k in ("lr", "warmup") if old[k] != cfg.to_dict()[k]}
    if changed:
        changes.append({"step": payload["step"], **changed})
    return changes


def train(train_set: ImageSet, test_set: ImageSet, model_name: str, preset: Preset, out_dir: Path, *,
          device: str = "auto", resume: bool = False, train_subset: int | None = None, command: str | None = None,
          progress: bool = True, wait_for_lock: bool = False, time_limit: float | None = None) -> TrainResult:
    """Train (or resume) ``model_name`` on ``train_set`` with ``preset``; checkpoints go to ``out_dir``; the periodic
    test bits/dim come from the first ``eval_images`` of ``test_set``.

    One job at a time per ``out_dir`` (a lock; ``wait_for_lock`` waits instead of refusing). Under torchrun
    every rank calls this with the same arguments; rank 0 alone writes. Every step
    checks the loss and the gradient norm, every save the parameters: a non-finite value stops training
    before it reaches the weights, and the last checkpoint written stays the last good one. ``time_limit``
    (seconds of this session) stops early with an evaluation and a checkpoint; ``resume`` continues from it.
    """
    cfg = preset.train
    dev = resolve_device(device)
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT
    if time_limit is not None and not time_limit > 0:
        raise TrainingError(f"--time-limit must be > 0 minutes, got {time_limit / 60:g}")
    if train_subset is not None and train_subset < 1:
        raise TrainingError(f"--train-subset must be ≥ 1, got {train_subset}")
    n_train = len(train_set)
    if cfg.holdout >= n_train:
        raise TrainingError(f"the preset holds out {cfg.holdout} of the {n_train} {train_set.name} images, "
                            f"leaving none to train on")
    images = train_set.images[: n_train - cfg.holdout]  # the last `holdout` images are never trained on
    images = images[:train_subset] if train_subset else images
    if train_set.shape != preset.model.shape or test_set.shape != preset.model.shape:
        raise TrainingError(f"{train_set.name} images are {train_set.shape} and {test_set.name} {test_set.shape}, "
                            f"the preset expects {preset.model.shape}")
    data = {"dataset": train_set.source, "data": {"train": train_set.provenance(), "test": test_set.provenance()},
            "data_digest": training_digest(train_set, test_set), "train_images": int(images.shape[0])}
    lock = run_lock(out_dir, wait=wait_for_lock, what=f"training {model_name} on {train_set.source}") \
        if distributed.world().main else nullcontext()  # rank 0 holds the lock for the whole job
    with lock:
        return _train_locked(model_name, preset, out_dir, ckpt_path, dev, images, (train_set, test_set), data,
                             resume=resume, command=command, progress=progress,
                             hflip=cfg.hflip and train_set.mirror_symmetric, time_limit=time_limit)


def perturb_subpixels(x: torch.Tensor, mu: float, generator: torch.Generator) -> torch.Tensor:
    """Ren et al. (NeurIPS 2019), the background model's input: each sub-pixel of uint8 images is replaced by
    a uniform random value in 0..255 with probability μ (independently), the rest kept."""
    mask = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device) < mu
    noise = torch.randint(0, 256, x.shape, generator=generator, device=generator.device, dtype=torch.uint8)
    return torch.where(mask, noise.to(x.device), x)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay: lr·½(1 + cos(π·t)), t the fraction
    of the post-warm-up steps done (0 at the end of the warm-up, 1 at ``steps``)."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
    if cfg.decay == "cosine" and step >= cfg.warmup:
        lr *= 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))
    return lr


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of N×C×H×W mirrored left–right with probability ½ (the flip augmentation of public Glow
    recipes for natural images); one draw per image of the whole batch, so every rank agrees."""
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _build_or_resume(model_name: str, preset: Preset, ckpt_path: Path, dev: torch.device, resume: bool,
                     sets: tuple[ImageSet, ImageSet], n_train: int):
    """A fresh model and optimizer on ``dev``, or both restored from ``ckpt_path``; with the step to start
    from, the history so far and the schedule changes (see _resume_state). bf16 coupling networks on CUDA."""
    cfg = preset.train
    model = build_model(model_name, preset.model).to(dev)
    optimizer = make_optimizer(model, cfg)
    start, history, changes = 0, [], []
    if resume and ckpt_path.exists():
        payload = load_checkpoint(ckpt_path)
        changes = _resume_state(payload, ckpt_path, preset, sets, n_train)
        model.load_state_dict(payload["model_state"])
        optimizer.load_state_dict(payload["optimizer_state"])
        start, history = payload["step"], payload["history"]
        print(f"resuming {ckpt_path} at step {start}/{cfg.steps}", file=sys.stderr)
    elif ckpt_path.exists():
        raise CheckpointError(f"{ckpt_path} exists; pass --resume to continue it or choose another --out")
    if dev.type == "cuda":
        for module in model.modules():
            if hasattr(module, "amp_dtype"):
                module.amp_dtype = torch.bfloat16 if cfg.amp else None
    return model, optimizer, start, history, changes


def initialize(model: torch.nn.Module, train_x: torch.Tensor, seed: int, dev: torch.device) -> None:
    """Data-dependent initialisation (Glow's ActNorm) on 512 training images drawn with ``seed``; in a group
    each rank passes its rows and the statistics are all-reduced, so every rank gets one process's init."""
    init = train_x[torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))[:512].to(dev)]
    world = distributed.world()
    shard = world.shard(len(init)) if world.size > 1 else None
    with torch.no_grad():
        log_likelihood(model, init if shard is None else shard.rows(init), step_generator(seed, -1, dev), shard)


def training_forward(model: torch.nn.Module, cfg: TrainConfig, dev: torch.device):
    """What a training step calls, ``log_likelihood(model, x, generator, shard)``: wrapped in DDP in a group,
    compiled on CUDA if asked."""
    if distributed.active():
        return distributed.data_parallel(model, dev)
    forward = partial(log_likelihood, model, info=describe(model))
    return torch.compile(forward) if (cfg.compile and dev.type == "cuda") else forward


def batch_loss(forward, batch: torch.Tensor, gen: torch.Generator, dims: int,
               shard: distributed.Shard | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(this rank's loss to backpropagate, the whole batch's mean bits/dim). One process: the mean bpd, twice.
    In a group: Σ bpd over this rank's rows · W / B, so that DDP's mean over the ranks is the batch's mean
    gradient, and the batch's mean bpd all-reduced, the same on every rank (for the log and the finite check)."""
    if shard is None:
        loss = bits_per_dim(forward(batch, gen)["log_px"], dims).mean()
        return loss, loss
    bpd = bits_per_dim(forward(shard.rows(batch), gen, shard)["log_px"], dims)
    size = distributed.world().size
    return bpd.sum() * size / shard.total, distributed.all_sum(bpd.sum().detach()) / shard.total


def _train_locked(model_name: str, preset: Preset, out_dir: Path, ckpt_path: Path, dev: torch.device, images,
                  sets: tuple[ImageSet, ImageSet], data: dict, *, resume: bool, command: str | None, progress: bool,
                  hflip: bool, time_limit: float | None) -> TrainResult:
    cfg = preset.train
    world = distributed.world()
    train_x = torch.from_numpy(images).to(dev)  # the whole uint8 set lives on the device
    test_images = sets[1].images[: cfg.eval_images]
    model, optimizer, start, history, changes = _build_or_resume(model_name, preset, ckpt_path, dev, resume, sets,
                                                                 len(images))

    hparams = {**data, "model": model_name, "preset": preset.name,
               "model_config": preset.model.to_dict(), "train_config": cfg.to_dict(),
               "code_version": code_version(), "commit": git_commit(), "command": command or shlex.join(sys.argv),
               "device": device_description(dev),
               "schedule_changes": changes, "hflip": hflip}
    if world.main:
        write_json(out_dir / "hparams.json", hparams)
    last_saved = {"step": start if ckpt_path.exists() else None}

    def stop(what: str, step: int, lr: float) -> TrainingError:
        good = (f"the last good checkpoint is {ckpt_path} (step {last_saved['step']})" if last_saved["step"]
                is not None else "no checkpoint was written yet")
        return TrainingError(f"{what} at step {step} (lr {lr:.2e}); training stopped and nothing non-finite was "
                             f"saved: {good}. To go on, resume with a lower learning rate or a longer warm-up "
                             f"(python -m empirical.train ... --resume --lr {cfg.lr / 4:.2e} --warmup "
                             f"{2 * cfg.warmup})")

    def check_parameters(step: int) -> None:
        bad = non_finite_tensors(model.state_dict())
        if bad:  # never replace a good checkpoint with a broken one
            raise stop(f"parameters became non-finite ({bad[0]} and {len(bad) - 1} more)", step, cfg.lr)

    def save(step: int) -> None:
        check_parameters(step)
        if world.main:
            save_checkpoint(ckpt_path, {**hparams, "step": step, "history": history,
                                        "model_state": model.state_dict(),
                                        "optimizer_state": optimizer.state_dict()})
        last_saved["step"] = step

    dims, batch_size = preset.model.dims, cfg.batch_size
    model.train()
    if start == 0:
        initialize(model, train_x, cfg.seed, dev)
    forward = training_forward(model, cfg, dev)
    shard = world.shard(batch_size) if world.size > 1 else None  # this rank's rows of every batch
    t0, last_test = time.time(), None
    before = history[-1]["seconds"] if history else 0.0  # wall-clock of earlier sessions of this run
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not (progress and world.main),
               desc=f"{data['dataset']} {model_name}/{preset.name}", mininterval=5, file=sys.stderr)
    seen, done = 0, start
    for step in bar:
        gen = step_generator(cfg.seed, step, dev)
        idx = torch.randint(len(train_x), (batch_size,), generator=gen, device=dev)
        batch = perturb_subpixels(train_x[idx], cfg.perturb, gen) if cfg.perturb else train_x[idx]
        batch = random_hflip(batch, gen) if hflip else batch
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, shown = batch_loss(forward, batch, gen, dims, shard)
        if not torch.isfinite(shown):
            raise stop(f"the loss became {shown.item()}", step, lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        if not torch.isfinite(grad_norm):
            raise stop(f"the gradient became non-finite (norm {grad_norm.item()}) with a finite loss", step, lr)
        optimizer.step()
        seen += batch_size
        done = step + 1
        if done % 10 == 0:
            bar.set_postfix(bpd=f"{shown.item():.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
        out_of_time = time_limit is not None and bool(distributed.all_sum(  # every rank stops at the same step
            torch.tensor(float(time.time() - t0 >= time_limit), device=dev)) > 0)  # on dev: NCCL has no CPU tensors
        if done % cfg.eval_every == 0 or done == cfg.steps or out_of_time:
            model.eval()
            try:
                last_test = float(evaluate(model, test_images, device=dev, label="test images").bpd.mean())
            except NonFiniteLikelihood as err:  # sharded over the ranks, so every rank stops here together
                check_parameters(done)
                raise stop(str(err), done, lr) from err
            model.train()
            history.append({"step": done, "train_bpd": float(shown.item()), "test_bpd": last_test,
                            "seconds": before + time.time() - t0, "device": str(dev), "ranks": world.size})
            if world.main:
                bar.write(f"step {done}: train bpd {shown.item():.3f}, test bpd {last_test:.3f} "
                          f"({len(test_images)} test images)", file=sys.stderr)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or out_of_time:
            save(done)
        if out_of_time:
            if world.main:
                bar.write(f"time limit of {time_limit:.0f} s reached at step {done} of {cfg.steps}; --resume "
                          f"continues", file=sys.stderr)
            break
    bar.close()
    distributed.barrier()  # no rank returns before rank 0 has written the last checkpoint
    if start >= cfg.steps:
        last_test = history[-1]["test_bpd"] if history else None
    return TrainResult(ckpt_path, done, last_test, time.time() - t0, model)


def arch_override(text: str) -> tuple[str, int | float | bool | str]:
    """``FIELD=VALUE`` → (field, value), the value read as an int, a float, a bool or else a string."""
    field, sep, raw = text.partition("=")
    if not sep or not field or not raw:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE (e.g. hidden=128), got {text!r}")
    for parse in (int, float):
        try:
            return field, parse(raw)
        except ValueError:
            pass
    return field, {"true": True, "false": False}.get(raw.lower(), raw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m empirical.train", description=__doc__.splitlines()[0],
                                epilog=sources.SOURCE_HELP)
    p.add_argument("--dataset", required=True, metavar="SOURCE",
                   help="what to train on: a registry name or a path (see below); its train part is trained on")
    p.add_argument("--model", default="glow", choices=MODELS)
    p.add_argument("--preset", default="cpu", choices=PRESETS)
    p.add_argument("--out", type=Path, help="checkpoint folder (default runs/train/DATASET-MODEL-PRESET)")
    add_data_arguments(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--steps", type=int, help="override the preset's number of steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="override the preset's learning rate (may change on --resume)")
    p.add_argument("--warmup", type=int, help="override the preset's warm-up steps (may change on --resume)")
    p.add_argument("--eval-every", type=int, metavar="STEPS",
                   help="override the preset's interval between test evaluations (the time-to-bits/dim curve's "
                        "points; may change on --resume)")
    p.add_argument("--decay", choices=["none", "cosine"], help="learning-rate decay after the warm-up")
    p.add_argument("--seed", type=int)
    p.add_argument("--arch", type=arch_override, action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the preset's architecture, e.g. --arch hidden=128 --arch steps=8")
    p.add_argument("--split-prior", choices=["learned", "fixed"],
                   help="flows: 'fixed' makes every split latent N(0, σ_ψ²), the paper's model class")
    p.add_argument("--train-subset", type=int, help="use only the first N training images")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile on CUDA")
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips of training images on mirror-symmetric datasets (CIFAR-10/100; "
                        "default: on in the gpu preset)")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop after this many minutes with an evaluation and a checkpoint (--resume continues)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sources.check_name(args.dataset)
    if args.train_subset is not None and args.train_subset < 1:
        raise TrainingError(f"--train-subset must be ≥ 1, got {args.train_subset}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise TrainingError(f"--time-limit must be > 0 minutes, got {args.time_limit:g}")
    out = args.out or Path("runs/train") / f"{sources.slug(args.dataset)}-{args.model}-{args.preset}"
    device = distributed.init_from_env(args.device)  # joins torchrun's group, if any
    main_rank = distributed.world().main
    try:
        train_set, test_set = sources.open_in(args.dataset, data_options(args))  # read and checked before any write
        preset = get_preset(args.preset, args.model, train_set.shape, split_prior=args.split_prior,
                            arch=dict(args.arch), steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            warmup=args.warmup, seed=args.seed, compile=args.compile, hflip=args.hflip,
                            decay=args.decay, eval_every=args.eval_every)
        writable_dir(out, "--out")
        result = train(train_set, test_set, args.model, preset, out, device=str(device), resume=args.resume,
                       train_subset=args.train_subset, progress=not args.no_progress,
                       time_limit=None if args.time_limit is None else 60 * args.time_limit,
                       command=shlex.join(["python", "-m", "empirical.train",
                                           *(sys.argv[1:] if argv is None else argv)]))
    finally:
        distributed.shutdown()
    if not main_rank:
        return 0
    bpd = "n/a" if result.test_bpd is None or math.isnan(result.test_bpd) else f"{result.test_bpd:.3f}"
    print(f"{train_set.source} {args.model}/{args.preset}: step {result.step}, test bpd {bpd} "
          f"({min(preset.train.eval_images, len(test_set))} test images), "
          f"{result.seconds:.0f} s; checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
