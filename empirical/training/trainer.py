"""The one trainer, ``train``: Adam/Adamax on the bits/dim of dequantised images with warm-up and clipping; every
step checks the loss and the gradient, every save the parameters; resume continues exactly (batches and noise come
from a (seed, step) generator, whatever the number of torchrun ranks). ``python -m empirical.train`` is its
command."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import torch
from tqdm import tqdm

from empirical.data.imageset import ImageSet, training_digest
from empirical.io import distributed
from empirical.io.atomic import write_json
from empirical.io.distributed import resolve_device
from empirical.io.errors import CheckpointError, TrainingError, arg
from empirical.io.locking import run_lock
from empirical.io.provenance import command_line, device_description, git_commit
from empirical.models.evaluation import NonFiniteLikelihood, evaluate
from empirical.models.registry import build_model, non_finite_tensors
from empirical.training.checkpoint import code_version, load_checkpoint, save_checkpoint, trained_on
from empirical.training.presets import Preset, TrainConfig
from empirical.training.steps import (
    batch_loss,
    initialize,
    learning_rate,
    make_optimizer,
    perturb_subpixels,
    random_hflip,
    step_generator,
    training_forward,
)

CHECKPOINT = "last.pt"
log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    test_bpd: float | None
    seconds: float
    model: torch.nn.Module  # the trained model in memory (every rank's is identical)


RESUMABLE = ("steps", "lr", "warmup", "eval_every")  # the settings --resume may change


_RESUMABLE_TEXT = arg("only steps, lr, warmup and eval_every may change on resume",
                      "only --steps, --lr, --warmup and --eval-every may change on --resume")


def _resume_state(payload: dict, ckpt_path: Path, preset: Preset, sets: tuple[ImageSet, ImageSet],
                  n_train: int) -> list[dict]:
    """Check a checkpoint can be resumed under ``preset`` on these data; returns the schedule changes (lr, warm-up,
    steps) it records, with this resume's changes appended. Other data, another training subset, other settings
    or fewer steps than it has done are refused."""
    cfg = preset.train
    if not trained_on(payload, *sets):
        raise CheckpointError(f"{ckpt_path} was trained on other data ({payload.get('dataset')}, other images); "
                              f"resume it on the data it was trained on, or choose another {arg('out_dir', '--out')}")
    if payload.get("train_images", n_train) != n_train:
        raise CheckpointError(f"{ckpt_path} was trained on {payload['train_images']} images, this run would use "
                              f"{n_train} (another {arg('train_subset', '--train-subset')}?); {_RESUMABLE_TEXT}")
    if cfg.steps < payload["step"]:
        raise CheckpointError(f"{ckpt_path} has already done {payload['step']} steps; {arg('steps=', '--steps ')}"
                              f"{cfg.steps} would rewrite its record: pass {arg('steps', '--steps')} ≥ "
                              f"{payload['step']}")
    # a field added to TrainConfig after the checkpoint was written takes its default (what that run used)
    old = {**{f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}, **payload["train_config"]}
    if payload["model_config"] != preset.model.to_dict() or {**old, **{k: cfg.to_dict()[k] for k in RESUMABLE}} \
            != cfg.to_dict():
        raise CheckpointError(f"{ckpt_path} was trained with other hyperparameters; use another "
                              f"{arg('out_dir', '--out')} or drop {arg('resume=True', '--resume')} ({_RESUMABLE_TEXT})")
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
        raise TrainingError(arg(f"time_limit must be > 0 seconds, got {time_limit:g}",
                                f"--time-limit must be > 0 minutes, got {time_limit / 60:g}"))
    if train_subset is not None and train_subset < 1:
        raise TrainingError(f"{arg('train_subset', '--train-subset')} must be ≥ 1, got {train_subset}")
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
        run = _Run(model_name, preset, ckpt_path, dev, images, (train_set, test_set), data, resume=resume,
                   command=command, hflip=cfg.hflip and train_set.mirror_symmetric)
        if run.world.main:
            write_json(out_dir / "hparams.json", run.hparams)
        return _train_locked(run, f"{data['dataset']} {model_name}/{preset.name}", progress=progress,
                             time_limit=time_limit)


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
        log.info("resuming %s at step %d/%d", ckpt_path, start, cfg.steps)
    elif ckpt_path.exists():
        raise CheckpointError(f"{ckpt_path} exists; pass {arg('resume=True', '--resume')} to continue it or choose "
                              f"another {arg('out_dir', '--out')}")
    if dev.type == "cuda":
        for module in model.modules():
            if hasattr(module, "amp_dtype"):
                module.amp_dtype = torch.bfloat16 if cfg.amp else None
    return model, optimizer, start, history, changes


class _Run:
    """One training session in ``out_dir``: the model, its optimizer and history, and the four things a step loop
    does with them (``step``, ``evaluate``, ``save``, and ``stop``, the error that names the last good checkpoint)."""

    def __init__(self, model_name: str, preset: Preset, ckpt_path: Path, dev: torch.device, images,
                 sets: tuple[ImageSet, ImageSet], data: dict, *, resume: bool, command: str | None,
                 hflip: bool) -> None:
        self.cfg, self.dev, self.ckpt_path, self.hflip = preset.train, dev, ckpt_path, hflip
        self.world = distributed.world()
        self.train_x = torch.from_numpy(images).to(dev)  # the whole uint8 set lives on the device
        self.test_images = sets[1].images[: self.cfg.eval_images]
        self.model, self.optimizer, self.start, self.history, changes = _build_or_resume(
            model_name, preset, ckpt_path, dev, resume, sets, len(images))
        self.hparams = {**data, "model": model_name, "preset": preset.name,
                        "model_config": preset.model.to_dict(), "train_config": self.cfg.to_dict(),
                        "code_version": code_version(), "commit": git_commit(),
                        "command": command or command_line(), "device": device_description(dev),
                        "schedule_changes": changes, "hflip": hflip}
        self.last_saved = self.start if ckpt_path.exists() else None
        self.dims = preset.model.dims
        self.before = self.history[-1]["seconds"] if self.history else 0.0  # wall-clock of earlier sessions

    def stop(self, what: str, step: int, lr: float) -> TrainingError:
        good = (f"the last good checkpoint is {self.ckpt_path} (step {self.last_saved})" if self.last_saved
                is not None else "no checkpoint was written yet")
        return TrainingError(f"{what} at step {step} (lr {lr:.2e}); training stopped and nothing non-finite was "
                             f"saved: {good}. To go on, resume with a lower learning rate or a longer warm-up "
                             f"(python -m empirical.train ... --resume --lr {self.cfg.lr / 4:.2e} --warmup "
                             f"{2 * self.cfg.warmup})")

    def check_parameters(self, step: int) -> None:
        bad = non_finite_tensors(self.model.state_dict())
        if bad:  # never replace a good checkpoint with a broken one
            raise self.stop(f"parameters became non-finite ({bad[0]} and {len(bad) - 1} more)", step, self.cfg.lr)

    def save(self, step: int) -> None:
        self.check_parameters(step)
        if self.world.main:
            save_checkpoint(self.ckpt_path, {**self.hparams, "step": step, "history": self.history,
                                             "model_state": self.model.state_dict(),
                                             "optimizer_state": self.optimizer.state_dict()})
        self.last_saved = step

    def step(self, forward, step: int, shard: distributed.Shard | None) -> tuple[torch.Tensor, float]:
        """One optimiser step on the (seed, step) batch; returns the batch's mean bits/dim and the learning rate."""
        cfg = self.cfg
        gen = step_generator(cfg.seed, step, self.dev)
        idx = torch.randint(len(self.train_x), (cfg.batch_size,), generator=gen, device=self.dev)
        batch = perturb_subpixels(self.train_x[idx], cfg.perturb, gen) if cfg.perturb else self.train_x[idx]
        batch = random_hflip(batch, gen) if self.hflip else batch
        lr = learning_rate(cfg, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, shown = batch_loss(forward, batch, gen, self.dims, shard)
        if not torch.isfinite(shown):
            raise self.stop(f"the loss became {shown.item()}", step, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        if not torch.isfinite(grad_norm):
            raise self.stop(f"the gradient became non-finite (norm {grad_norm.item()}) with a finite loss", step, lr)
        self.optimizer.step()
        return shown, lr

    def evaluate(self, done: int, shown: torch.Tensor, lr: float, seconds: float) -> float:
        """The test bits/dim after ``done`` steps, appended to the history with the training bits/dim."""
        self.model.eval()
        try:
            test_bpd = float(evaluate(self.model, self.test_images, device=self.dev, label="test images").bpd.mean())
        except NonFiniteLikelihood as err:  # sharded over the ranks, so every rank stops here together
            self.check_parameters(done)
            raise self.stop(str(err), done, lr) from err
        self.model.train()
        self.history.append({"step": done, "train_bpd": float(shown.item()), "test_bpd": test_bpd,
                             "seconds": self.before + seconds, "device": str(self.dev), "ranks": self.world.size})
        if self.world.main:
            log.info("step %d: train bpd %.3f, test bpd %.3f (%d test images)", done, shown.item(), test_bpd,
                     len(self.test_images))
        return test_bpd


def _out_of_time(time_limit: float | None, elapsed: float, dev: torch.device) -> bool:
    """Whether any rank has used up ``time_limit`` seconds: every rank stops at the same step."""
    return time_limit is not None and bool(distributed.all_sum(
        torch.tensor(float(elapsed >= time_limit), device=dev)) > 0)  # on dev: NCCL has no CPU tensors


def _train_locked(run: _Run, label: str, *, progress: bool, time_limit: float | None) -> TrainResult:
    cfg, world = run.cfg, run.world
    run.model.train()
    if run.start == 0:
        initialize(run.model, run.train_x, cfg.seed, run.dev)
    forward = training_forward(run.model, cfg, run.dev)
    shard = world.shard(cfg.batch_size) if world.size > 1 else None  # this rank's rows of every batch
    t0, last_test = time.time(), None
    bar = tqdm(range(run.start, cfg.steps), initial=run.start, total=cfg.steps,
               disable=not (progress and world.main), desc=label, mininterval=5, file=sys.stderr)
    seen, done = 0, run.start
    for step in bar:
        shown, lr = run.step(forward, step, shard)
        seen += cfg.batch_size
        done = step + 1
        if done % 10 == 0:
            bar.set_postfix(bpd=f"{shown.item():.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
        out_of_time = _out_of_time(time_limit, time.time() - t0, run.dev)
        if done % cfg.eval_every == 0 or done == cfg.steps or out_of_time:
            last_test = run.evaluate(done, shown, lr, time.time() - t0)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps or out_of_time:
            run.save(done)
        if out_of_time:
            if world.main:
                log.info("time limit of %.0f s reached at step %d of %d; --resume continues", time_limit, done,
                         cfg.steps)
            break
    bar.close()
    distributed.barrier()  # no rank returns before rank 0 has written the last checkpoint
    if run.start >= cfg.steps:
        last_test = run.history[-1]["test_bpd"] if run.history else None
    return TrainResult(run.ckpt_path, done, last_test, time.time() - t0, run.model)
