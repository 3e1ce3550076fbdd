"""``python -m verify.adversarial IN``: can our generative models (or yours) tell adversarial examples from clean
images? Attacks a classifier of IN (ours, trained or reused, or ``--classifier-factory``) with FGSM, PGD and an
adaptive PGD that also raises log p, scores every detection score on the adversarial images, and moves OOD images
toward typicality (the other direction); one report with tables, ROC curves and example images."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from torch import nn

from empirical.cli import SOURCE_HELP, check_limit, check_seed, data_options, run_cli, writable_dir
from empirical.data import sources
from empirical.data.imageset import ShapeMap
from empirical.io.atomic import atomic_write, staged, write_json
from empirical.io.distributed import resolve_device
from empirical.io.errors import DgmOodError
from empirical.io.provenance import portable_path
from empirical.models.contract import describe
from empirical.models.factory import call_classifier_factory, load_weights
from empirical.ood import attacks
from empirical.ood.suite import one_model_choice
from empirical.training.classifier import accuracy, cached_classifier, classifier_preset
from verify import attack_report
from verify.attacking import attack_all, detect, toward_typical
from verify.cli import OTHER_SET, add_family_arguments, add_run_arguments, our_models
from verify.results import Provenance
from verify.runs import provenance

DEFAULT_LIMIT = 200  # clean IN-test images attacked: the first run takes minutes on 2 cores


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verify.adversarial", description=__doc__.splitlines()[0],
                                epilog=SOURCE_HELP)
    p.add_argument("in_dataset", metavar="IN", help="a registry dataset with class labels (fashionmnist, cifar10, …)")
    add_family_arguments(p)
    p.add_argument("--classifier-factory", metavar="MODULE:FUNCTION",
                   help="your classifier: FUNCTION() returns an nn.Module giving logits of pixel values in [0, 255]")
    p.add_argument("--classifier-weights", type=Path, help="a state dict for --classifier-factory")
    p.add_argument("--ood", help="the OOD set moved toward typicality (default: " +
                   ", ".join(f"{a} → {b}" for a, b in OTHER_SET.items()) + "; none to skip)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
                   help=f"clean IN-test images attacked, and OOD images moved (default {DEFAULT_LIMIT})")
    p.add_argument("--scores", default="cheap", metavar="SET|NAMES", help="detection scores (default cheap)")
    p.add_argument("--top", action="store_true",
                   help="also the margin attacker on the flow's top-latent term, which latent_top reads on its own: "
                        "with log p (margin+top) and alone (margin top-only); about twice the run time")
    p.add_argument("--retrain", action="store_true",
                   help="train our models and classifier from scratch instead of using the shipped weights")
    add_run_arguments(p)
    p.add_argument("--out", type=Path, help="the report's folder (default runs/adversarial/IN-MODEL, or IN-all)")
    return p


def _user_classifier(args: argparse.Namespace, device) -> tuple[nn.Module, str]:
    """``--classifier-factory``'s classifier, with ``--classifier-weights`` loaded, and where it came from."""
    module = call_classifier_factory(args.classifier_factory)
    source = args.classifier_factory
    if args.classifier_weights:
        record = load_weights(module, args.classifier_weights)
        source += f" with weights {record['path']} (SHA-256 {record['sha256'][:16]}…)"
    return module.to(device).eval(), source


def _our_classifier(args: argparse.Namespace, in_train, in_test, test_labels, options, device, command: str):
    """Our SmallCNN (shipped, reused from the runs cache, or trained), with where it came from."""
    train_labels = sources.labels_of(args.in_dataset, "train", options)
    preset = classifier_preset(args.preset if args.preset == "smoke" else "cpu", in_train.shape, seed=args.seed,
                               hflip=in_train.mirror_symmetric)
    model, path = cached_classifier(in_train, train_labels, in_test, test_labels, preset, args.runs_dir,
                                    device=str(device), retrain=args.retrain, command=command)
    return model, f"SmallCNN ({preset.name} preset), {portable_path(path)}"


def _check_classifier_arguments(args: argparse.Namespace) -> None:
    if args.classifier_weights and not args.classifier_factory:
        raise DgmOodError("--classifier-weights loads into a --classifier-factory classifier")
    if args.retrain and (args.checkpoint or args.model_factory):
        raise DgmOodError("--retrain trains our models from scratch; it cannot be combined with --checkpoint or "
                          "--model-factory")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", "-m", "verify.adversarial", *(sys.argv[1:] if argv is None else argv)])
    start = Provenance(command)
    for name in (args.in_dataset, *([args.ood] if args.ood and args.ood != "none" else [])):
        sources.check_name(name)
    check_seed(args.seed)
    check_limit(args.limit)
    _check_classifier_arguments(args)
    choice = one_model_choice(args.scores, "the adversarial experiment (--scores)")
    out = args.out or Path("runs/adversarial") / (f"{sources.slug(args.in_dataset)}-"
                                                  f"{'all' if args.all_models else args.model}")
    writable_dir(out, "--out")
    device, options = resolve_device(args.device), data_options(args)
    in_train, in_test = sources.open_in(args.in_dataset, options)
    test_labels = sources.labels_of(args.in_dataset, "test", options)
    # what the user names is checked before anything trains: their classifier, then the models (ours may train)
    user = _user_classifier(args, device) if args.classifier_factory else None
    opened = our_models(args, in_train, in_test, command)
    classifier, classifier_source = user or _our_classifier(args, in_train, in_test, test_labels, options, device,
                                                            command)
    clean = in_test.head(args.limit)
    smooth = next((m for m in opened if describe(m.module).smooth), None)
    margins = tuple(attacks.MARGIN_GAINS) if args.top else ("margin",)
    clean_acc, attacked = attack_all(classifier, clean, test_labels[:len(clean)], seed=args.seed,
                                     density=smooth.module.to(device).eval() if smooth else None, margins=margins)
    detection = {m.name: detect(m.module.to(device).eval(), m.heldout, clean, attacked, choice=choice,
                                seed=args.seed, device=device) for m in opened}
    if not any(row["auroc"] for d in detection.values() for row in d["attacks"].values()):
        raise DgmOodError(f"--scores {args.scores}: none of these scores applies to "
                          f"{', '.join(m.name for m in opened)} (a flow's latent terms: latent_top, latent_split1, …)")
    ood_name = args.ood or OTHER_SET.get(str(args.in_dataset).lower())
    typical = ood = None
    if smooth and ood_name and ood_name != "none":
        ood = sources.open_out(ood_name, in_train.shape, ShapeMap(), options).head(args.limit)
        typical = toward_typical(smooth.module, smooth.heldout, clean, ood, seed=args.seed, choice=choice,
                                 device=device)
    prov = provenance(start, device)
    facts = {"in": in_test.name, "limit": len(clean), "classifier": classifier_source,
             "classifier_accuracy": {"attacked_images": clean_acc,
                                     "test_2000": accuracy(classifier, in_test.images[:2000], test_labels[:2000])},
             "models": {m.name: m.source for m in opened}, "adaptive_against": smooth.name if smooth else None,
             "attacks": {a.name: {"success_rate": a.success_rate, **a.size, "adaptive": a.adaptive}
                         for a in attacked},
             "detection": {k: {kk: vv for kk, vv in v.items() if kk != "per_image"} for k, v in detection.items()},
             "toward_typical": typical, "ood": ood.name if typical else None, "provenance": prov}
    with staged(out) as stage:
        attack_report.figures(stage, clean, attacked, detection, opened[0].name)
        write_json(stage / "results.json", facts)
        text = attack_report.render(facts)
        atomic_write(stage / "report.md", lambda f: f.write(text.encode()))
    print(attack_report.headline(facts))
    print(f"report: {out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
