"""What verify's command lines share: naming a model (our checkpoint, or a user's factory and weights), its held-out
images, and early checks of settings. Only the CLIs use this module."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from empirical.cli import add_data_arguments, data_options
from empirical.data import sources
from empirical.data.imageset import ImageSet, ShapeMap
from empirical.io.distributed import resolve_device
from empirical.io.errors import DgmOodError
from empirical.models.contract import image_shape
from empirical.models.factory import call_factory, load_weights
from empirical.training.checkpoint import Checkpoint, check_trained_on
from empirical.training.loading import model_from_checkpoint
from empirical.training.presets import Preset, get_preset
from verify.api import check_heldout
from verify.runs import origin_text, trained_model


@dataclass
class OpenedModel:
    """A model named on the command line, with what the report says about where it came from."""

    module: nn.Module
    name: str
    source: str  # the checkpoint's path, or FACTORY [+ WEIGHTS]
    checkpoint: Checkpoint | None
    heldout: ImageSet | None


def add_model_arguments(p: argparse.ArgumentParser, checkpoint_required: bool = False) -> None:
    g = p.add_argument_group("the model" + ("" if checkpoint_required else
                                            " (verify.compare trains or reuses its own when none is named)"))
    g.add_argument("--checkpoint", type=Path, help="a trained model of ours (last.pt, or its .parts.json manifest)")
    g.add_argument("--model-factory", metavar="MODULE:FUNCTION",
                   help="your own model: FUNCTION() in MODULE returns a torch.nn.Module meeting the density-model "
                        "contract (empirical.models.contract)."
                        " This imports and runs that code: name only code you trust")
    g.add_argument("--weights", type=Path,
                   help="a state dict for --model-factory: .safetensors, or a torch file (read with weights_only)")
    g.add_argument("--heldout", metavar="SOURCE",
                   help="images of IN the model never trained on, for typicality's Ĥ and the thresholds (our "
                        "checkpoints use the images their preset held out)")


def add_family_arguments(p: argparse.ArgumentParser) -> None:
    """A user's model, or our families: --model, --all-models (our PixelCNN and VAE too) and --preset."""
    add_model_arguments(p)
    p.add_argument("--model", default="cvglow", help="our family to train or reuse when no model is named")
    p.add_argument("--all-models", action="store_true",
                   help="also our PixelCNN and VAE of IN (shipped weights, or trained and cached)")
    p.add_argument("--preset", default="cpu", help="the preset of the models we train or reuse")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """How every verify command reads data and runs: the data options, --runs-dir, --device and --seed."""
    add_data_arguments(p)
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where trained models are cached")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)


def check_model_arguments(args: argparse.Namespace) -> None:
    """Contradicting or incomplete model options, refused before any work."""
    if args.checkpoint and args.model_factory:
        raise DgmOodError("--checkpoint and --model-factory both name a model; give one")
    if args.weights and not args.model_factory:
        raise DgmOodError("--weights loads into a --model-factory model; our checkpoints carry their own weights")
    if args.heldout and args.checkpoint:
        raise DgmOodError("--heldout is for outside models; a checkpoint of ours uses the images its preset held out")


def open_model(args: argparse.Namespace, in_train: ImageSet, in_test: ImageSet) -> OpenedModel:
    """The model ``--checkpoint`` or ``--model-factory`` names, checked against IN (a checkpoint must have been
    trained on IN's images), with its held-out IN images."""
    check_model_arguments(args)
    if args.checkpoint:
        ckpt = model_from_checkpoint(args.checkpoint)
        check_trained_on(ckpt.payload, args.checkpoint, in_train, in_test)
        return OpenedModel(ckpt.model, ckpt.name, origin_text(ckpt), ckpt, ckpt.heldout(in_train))
    if not args.model_factory:
        raise DgmOodError("name the model with --checkpoint (ours) or --model-factory MODULE:FUNCTION (yours)")
    module = call_factory(args.model_factory)
    source = args.model_factory
    if args.weights:
        record = load_weights(module, args.weights)
        source += f" with weights {record['path']} (SHA-256 {record['sha256'][:16]}…)"
    return OpenedModel(module.eval(), args.model_factory, source, None, open_heldout(args, module, in_test))


def trained(args: argparse.Namespace, model_name: str, preset: Preset, in_train: ImageSet, in_test: ImageSet,
            command: str) -> OpenedModel:
    """Our ``model_name`` trained with ``preset`` on IN, or reused (shipped weights, the runs cache), with the images
    its preset held out of training."""
    ckpt = trained_model(in_train, in_test, model_name, preset, resolve_device(args.device), args.runs_dir,
                         command=command, retrain=getattr(args, "retrain", False))
    return OpenedModel(ckpt.model, ckpt.name, origin_text(ckpt), ckpt, ckpt.heldout(in_train))


OTHER_SET = {"fashionmnist": "mnist", "mnist": "fashionmnist", "cifar10": "cifar100", "cifar100": "cifar10"}
FAMILIES = ("pixelcnn", "vae")  # what --all-models adds to the flow


def our_models(args: argparse.Namespace, in_train, in_test, command: str) -> list[OpenedModel]:
    """The model named or trained on IN, and with --all-models our PixelCNN and VAE of the same IN and preset."""
    if args.checkpoint or args.model_factory:
        if args.all_models:
            raise DgmOodError("--all-models trains or reuses our three families; it does not take --checkpoint or "
                              "--model-factory")
        return [open_model(args, in_train, in_test)]
    names = [args.model, *([f for f in FAMILIES if f != args.model] if args.all_models else [])]
    return [trained(args, name, get_preset(args.preset, name, in_train.shape, seed=args.seed), in_train, in_test,
                    command) for name in names]


def open_heldout(args: argparse.Namespace, model: nn.Module, in_test: ImageSet) -> ImageSet | None:
    """``--heldout``'s images in the model's shape (as they are: no mapping), never IN-test itself."""
    if not args.heldout:
        return None
    held = sources.open_out(args.heldout, image_shape(model), ShapeMap(), data_options(args))
    check_heldout(held, {"in_test": in_test}, f"--heldout {args.heldout}")
    return held
