"""The one trainer: ``python -m empirical.train --dataset cifar10 --model glow --preset cpu``.

Minimises bits/dim of dequantised images with Adam/Adamax, linear warm-up and gradient clipping.
The uint8 training set lives on the training device and batches are drawn from a generator seeded
by (seed, step), so a resumed run sees exactly the batches and noise it would have seen.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from empirical import data
from empirical.atomic import write_json
from empirical.checkpoint import code_version, load_checkpoint, non_finite_tensors, save_checkpoint
from empirical.cli import run_cli
from empirical.errors import CheckpointError, TrainingError
from empirical.evaluate import evaluate
from empirical.likelihood import bits_per_dim
from empirical.locking import run_lock
from empirical.models import MODELS, build_model
from empirical.presets import PRESETS, Preset, TrainConfig, get_preset

CHECKPOINT = "last.pt"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def _make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
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


def _resume_state(payload: dict, ckpt_path: Path, preset: Preset) -> list[dict]:
    """Check a checkpoint can be resumed under ``preset``; returns the schedule changes (lr, warm-up, steps) it
    records, with this resume's changes appended. Anything else that differs is refused."""
    cfg, old = preset.train, payload["train_config"]
    changeable = ("steps", "lr", "warmup")
    if payload["model_config"] != preset.model.to_dict() or {**old, **{k: cfg.to_dict()[k] for k in changeable}} \
            != cfg.to_dict():
        raise CheckpointError(f"{ckpt_path} was trained with other hyperparameters; use another --out or drop "
                              f"--resume (only --steps, --lr and --warmup may change on resume)")
    changes = list(payload.get("schedule_changes", []))
    changed = {k: [old[k], cfg.to_dict()[k]] for k in ("lr", "warmup") if old[k] != cfg.to_dict()[k]}
    if changed:
        changes.append({"step": payload["step"], **changed})
    return changes


def train(dataset: str, model_name: str, preset: Preset, out_dir: Path, *, data_dir: str | None = None,
          device: str = "auto", resume: bool = False, train_subset: int | None = None,
          allow_nonstandard: bool = False, command: str | None = None, progress: bool = True,
          wait_for_lock: bool = False) -> TrainResult:
    """Train (or resume) ``model_name`` on ``dataset`` with ``preset``; checkpoints go to ``out_dir``.

    One process at a time per ``out_dir`` (a lock; ``wait_for_lock`` waits instead of refusing). Every step
    checks the loss and the gradient norm, every save the parameters: a non-finite value stops training
    before it reaches the weights, and the last checkpoint written stays the last good one.
    """
    cfg = preset.train
    dev = resolve_device(device)
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT
    if train_subset is not None and train_subset < 1:
        raise TrainingError(f"--train-subset must be ≥ 1, got {train_subset}")
    train_split = data.load(dataset, "train", data_dir, allow_nonstandard=allow_nonstandard)
    test_split = data.load(dataset, "test", data_dir, allow_nonstandard=allow_nonstandard)
    n_train = len(train_split.images)
    if cfg.holdout >= n_train:
        raise TrainingError(f"the preset holds out {cfg.holdout} of the {n_train} {dataset} training images, "
                            f"leaving none to train on")
    images = train_split.images[: n_train - cfg.holdout]  # the last `holdout` images are never trained on
    images = images[:train_subset] if train_subset else images
    test_images = test_split.images[: cfg.eval_images]
    if tuple(images.shape[1:]) != preset.model.shape:
        raise TrainingError(f"{dataset} images are {images.shape[1:]}, preset expects {preset.model.shape}")
    with run_lock(out_dir, wait=wait_for_lock, what=f"training {model_name} on {dataset}"):
        return _train_locked(dataset, model_name, preset, out_dir, ckpt_path, dev, images, test_images,
                             [f.to_dict() for f in (*train_split.files, *test_split.files)], resume=resume,
                             command=command, progress=progress)


def perturb_subpixels(x: torch.Tensor, mu: float, generator: torch.Generator) -> torch.Tensor:
    """Ren et al. (NeurIPS 2019), the background model's input: each sub-pixel of uint8 images is replaced by
    a uniform random value in 0..255 with probability μ (independently), the rest kept."""
    mask = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device) < mu
    noise = torch.randint(0, 256, x.shape, generator=generator, device=generator.device, dtype=torch.uint8)
    return torch.where(mask, noise.to(x.device), x)


def _build_or_resume(model_name: str, preset: Preset, ckpt_path: Path, dev: torch.device, resume: bool):
    """A fresh model and optimizer on ``dev``, or both restored from ``ckpt_path``; with the step to start
    from, the history so far and the schedule changes (see _resume_state). bf16 coupling networks on CUDA."""
    cfg = preset.train
    model = build_model(model_name, preset.model).to(dev)
    optimizer = _make_optimizer(model, cfg)
    start, history, changes = 0, [], []
    if resume and ckpt_path.exists():
        payload = load_checkpoint(ckpt_path)
        changes = _resume_state(payload, ckpt_path, preset)
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


def _train_locked(dataset: str, model_name: str, preset: Preset, out_dir: Path, ckpt_path: Path,
                  dev: torch.device, images, test_images, data_files: list[dict], *, resume: bool,
                  command: str | None, progress: bool) -> TrainResult:
    cfg = preset.train
    train_x = torch.from_numpy(images).to(dev)  # the whole uint8 set lives on the device
    model, optimizer, start, history, changes = _build_or_resume(model_name, preset, ckpt_path, dev, resume)
    forward = torch.compile(model.log_likelihood) if (cfg.compile and dev.type == "cuda") else model.log_likelihood

    hparams = {"dataset": dataset, "model": model_name, "preset": preset.name,
               "model_config": preset.model.to_dict(), "train_config": cfg.to_dict(),
               "train_images": int(images.shape[0]), "code_version": code_version(),
               "command": command or shlex.join(sys.argv), "device": str(dev), "data_files": data_files,
               "schedule_changes": changes}
    write_json(out_dir / "hparams.json", hparams)
    last_saved = {"step": start if ckpt_path.exists() else None}

    def stop(what: str, step: int, lr: float) -> TrainingError:
        good = (f"the last good checkpoint is {ckpt_path} (step {last_saved['step']})" if last_saved["step"]
                is not None else "no checkpoint was written yet")
        return TrainingError(f"{what} at step {step} (lr {lr:.2e}); training stopped and nothing non-finite was "
                             f"saved: {good}. To go on, resume with a lower learning rate or a longer warm-up "
                             f"(python -m empirical.train ... --resume --lr {cfg.lr / 4:.2e} --warmup "
                             f"{2 * cfg.warmup})")

    def save(step: int) -> None:
        bad = non_finite_tensors(model.state_dict())
        if bad:  # never replace a good checkpoint with a broken one
            raise stop(f"parameters became non-finite ({bad[0]} and {len(bad) - 1} more)", step, cfg.lr)
        save_checkpoint(ckpt_path, {**hparams, "step": step, "history": history,
                                    "model_state": model.state_dict(),
                                    "optimizer_state": optimizer.state_dict()})
        last_saved["step"] = step

    dims = preset.model.dims
    model.train()
    if start == 0:  # data-dependent initialisation (Glow's ActNorm) on a larger batch
        init = train_x[torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg.seed))[:512]
                       .to(dev)]
        with torch.no_grad():
            model.log_likelihood(init, _step_generator(cfg.seed, -1, dev))
    t0, last_test = time.time(), None
    before = history[-1]["seconds"] if history else 0.0  # wall-clock of earlier sessions of this run
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress,
               desc=f"{dataset} {model_name}/{preset.name}", mininterval=5, file=sys.stderr)
    seen = 0
    for step in bar:
        gen = _step_generator(cfg.seed, step, dev)
        idx = torch.randint(len(train_x), (cfg.batch_size,), generator=gen, device=dev)
        batch = perturb_subpixels(train_x[idx], cfg.perturb, gen) if cfg.perturb else train_x[idx]
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = bits_per_dim(forward(batch, gen)["log_px"], dims).mean()
        if not torch.isfinite(loss):
            raise stop(f"the loss became {loss.item()}", step, lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        if not torch.isfinite(grad_norm):
            raise stop(f"the gradient became non-finite (norm {grad_norm.item()}) with a finite loss", step, lr)
        optimizer.step()
        seen += cfg.batch_size
        done = step + 1
        if done % 10 == 0:
            bar.set_postfix(bpd=f"{loss.item():.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            model.eval()
            last_test = float(evaluate(model, test_images, device=dev).bpd.mean())
            model.train()
            history.append({"step": done, "train_bpd": float(loss.item()), "test_bpd": last_test,
                            "seconds": before + time.time() - t0, "device": str(dev)})
            bar.write(f"step {done}: train bpd {loss.item():.3f}, test bpd {last_test:.3f} "
                      f"({len(test_images)} test images)", file=sys.stderr)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save(done)
    bar.close()
    if start >= cfg.steps:
        last_test = history[-1]["test_bpd"] if history else None
    return TrainResult(ckpt_path, max(start, cfg.steps), last_test, time.time() - t0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m empirical.train", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(data.DATASETS)}")
    p.add_argument("--model", default="glow", choices=MODELS)
    p.add_argument("--preset", default="cpu", choices=PRESETS)
    p.add_argument("--out", type=Path, help="checkpoint folder (default runs/train/DATASET-MODEL-PRESET)")
    p.add_argument("--data-dir", help="dataset root (else $DGM_OOD_DATA, <repo>/data, ../shared/data)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--steps", type=int, help="override the preset's number of steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="override the preset's learning rate (may change on --resume)")
    p.add_argument("--warmup", type=int, help="override the preset's warm-up steps (may change on --resume)")
    p.add_argument("--seed", type=int)
    p.add_argument("--split-prior", choices=["learned", "fixed"],
                   help="flows: 'fixed' makes every split latent N(0, σ_ψ²), the paper's model class")
    p.add_argument("--train-subset", type=int, help="use only the first N training images")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile on CUDA")
    p.add_argument("--allow-nonstandard-data", action="store_true",
                   help="accept well-formed files with non-official image counts (plumbing only)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    info = data.dataset_info(args.dataset)
    preset = get_preset(args.preset, args.model, info.shape, split_prior=args.split_prior, steps=args.steps,
                        batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, seed=args.seed,
                        compile=args.compile)
    out = args.out or Path("runs/train") / f"{args.dataset}-{args.model}-{args.preset}"
    result = train(args.dataset, args.model, preset, out, data_dir=args.data_dir, device=args.device,
                   resume=args.resume, train_subset=args.train_subset,
                   allow_nonstandard=args.allow_nonstandard_data, progress=not args.no_progress)
    bpd = "n/a" if result.test_bpd is None or math.isnan(result.test_bpd) else f"{result.test_bpd:.3f}"
    print(f"{args.dataset} {args.model}/{args.preset}: step {result.step}, test bpd {bpd} "
          f"({min(preset.train.eval_images, info.counts['test'])} test images), "
          f"{result.seconds:.0f} s; checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

