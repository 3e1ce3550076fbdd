"""One GPU session's work in a few device calls: ``python bench/gpu_session.py pack`` here, then on the device
``stage``, ``start`` and ``collect`` (each call of the device tool runs at most 10 minutes and carries at most
64 MiB; a returned file is at most 16 MiB).

- ``pack`` (here): copies the datasets and the reference Glow into ``.devdata/part-N/`` (≤ 60 MiB each, an
  ignored folder) and prints the device calls that carry them, one part per call, back to back.
- ``stage`` (device): links the carried parts into ``.devdata/data/`` (one data root).
- ``start`` (device): the CUDA tests and the side-by-side throughput benchmark into ``$OUT``, then training
  started in its own session (``setsid``, so it outlives the call) into ``.devdata/runs/``; returns at once.
- ``collect`` (device): waits up to ``--wait`` minutes for training; when it has finished, the time-to-bits/dim
  curve, ``verify.compare`` on each pair with ``--checkpoint``, and the checkpoint split into ≤ 15 MiB parts
  (``empirical.transfer``), all into ``$OUT``. While training still runs it reports the last checkpoint's step.

Every step runs the project's own commands, and prints each command before it runs it. A dry run on CPU with
``--preset smoke`` goes through the same steps (the CUDA tests are then skipped by pytest itself).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / ".devdata"
PART_BYTES = 60 * 2**20
PAIRS = {"cifar10": [["mnist", "--match"], ["cifar100"], ["constant"], ["noise"]], "fashionmnist": [["mnist"]],
         "mnist": [["fashionmnist"]]}
FOLDERS = {"cifar10": "cifar-10", "cifar100": "cifar-100", "fashionmnist": "fashion-mnist", "mnist": "mnist"}


def _run(cmd: list[str], log: Path | None = None, check: bool = True) -> int:
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "w") if log else open(os.devnull, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f if log else None, stderr=subprocess.STDOUT if log else None,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    if check and proc.returncode:
        raise SystemExit(f"error: {cmd[2] if len(cmd) > 2 else cmd[0]} exited {proc.returncode}" +
                         (f"; see {log}" if log else ""))
    return proc.returncode


def pack(args: argparse.Namespace) -> None:
    """Bin the files of the needed datasets and the anchor into parts of at most PART_BYTES, by size."""
    sources = [(args.data_root / FOLDERS[d], Path("data") / FOLDERS[d]) for d in args.datasets]
    sources.append((args.anchor, Path("data") / "anchors" / args.anchor.name))
    files = [(f, dest / f.relative_to(src)) for src, dest in sources for f in sorted(src.rglob("*")) if f.is_file()]
    parts: list[list[tuple[Path, Path]]] = []  # first fit, largest files first
    for f, rel in sorted(files, key=lambda t: -t[0].stat().st_size):
        fits = [p for p in parts if sum(g.stat().st_size for g, _ in p) + f.stat().st_size <= PART_BYTES]
        if not fits:
            parts.append([])
            fits = [parts[-1]]
        fits[0].append((f, rel))
    shutil.rmtree(DEV, ignore_errors=True)
    for i, part in enumerate(parts, 1):
        for f, rel in part:
            target = DEV / f"part-{i}" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    print(f"{len(parts)} parts in {DEV}; carry them one per device call, back to back (the machine is given "
          f"back after 30 s idle, and with it everything carried and the background training):")
    last = "python bench/gpu_session.py stage && python bench/gpu_session.py start"
    for i in range(1, len(parts) + 1):
        print(f"  run(command={last if i == len(parts) else 'true'!r}, carry=['.devdata/part-{i}'])")
    print("  run(command='python bench/gpu_session.py collect')   # again, back to back, until it has collected")


def stage(args: argparse.Namespace) -> None:
    """Hard-link every carried part's files into one data root, .devdata/data."""
    n = 0
    for part in sorted(DEV.glob("part-*")):
        for f in part.rglob("*"):
            if f.is_file():
                target = DEV / f.relative_to(part)
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    os.link(f, target)
                    n += 1
    print(f"staged {n} files into {DEV / 'data'}: " + ", ".join(sorted(p.name for p in (DEV / "data").iterdir())))


def _run_dir(args: argparse.Namespace) -> Path:
    return DEV / "runs" / f"{args.dataset}-{args.model}-{args.preset}"


def start(args: argparse.Namespace) -> None:
    out = Path(os.environ.get("OUT", DEV / "out"))
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    _run([py, "-m", "pytest", "-q", "-m", "cuda", "tests"], out / "cuda-tests.txt", check=False)
    anchor = DEV / "data" / "anchors" / "y0ast-glow-pytorch"
    with_anchor = ["--anchor", str(anchor)] if anchor.exists() else []
    _run([py, "bench/throughput.py", "--preset", args.preset, "--model", "glow", "--dataset", args.dataset,
          "--batch", str(args.batch), "--iters", str(args.iters), *with_anchor, "--json", str(out / "throughput.json")],
         out / "throughput.txt")
    run = _run_dir(args)
    run.mkdir(parents=True, exist_ok=True)
    cmd = [py, "-m", "empirical.train", "--dataset", args.dataset, "--model", args.model, "--preset", args.preset,
           "--out", str(run), "--data-dir", str(DEV / "data"), "--resume", "--no-progress",
           "--time-limit", str(args.minutes), *(["--compile"] if args.compile else [])]
    print("$ " + " ".join(cmd) + f"  (in the background, log {run / 'train.log'})", flush=True)
    with open(run / "train.log", "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    (run / "train.pid").write_text(str(proc.pid))
    print(f"training started (pid {proc.pid}); collect with: python bench/gpu_session.py collect --dataset "
          f"{args.dataset} --model {args.model} --preset {args.preset}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def collect(args: argparse.Namespace) -> None:
    out = Path(os.environ.get("OUT", DEV / "out"))
    out.mkdir(parents=True, exist_ok=True)
    run, py = _run_dir(args), sys.executable
    pid = int((run / "train.pid").read_text())
    deadline = time.time() + 60 * args.wait
    while _alive(pid) and time.time() < deadline:
        time.sleep(5)
    shutil.copy2(run / "train.log", out / "train.log")
    ckpt = run / "last.pt"
    if _alive(pid):
        step = json.loads(subprocess.run([py, "-c", "import json,sys; from empirical.checkpoint import "
                                          "load_checkpoint as L; print(json.dumps(L(sys.argv[1])['step']))",
                                          str(ckpt)], cwd=ROOT, capture_output=True, text=True,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout or "null")
        print(f"training still running (pid {pid}), last checkpoint at step {step}; collect again later")
        return
    _run([py, "bench/time_to_bpd.py", str(ckpt), "--out", str(out / "time_to_bpd")])
    for pair in PAIRS.get(args.dataset, []):
        name = "-".join([args.dataset, *[p.lstrip("-") for p in pair]])
        _run([py, "-m", "verify.compare", args.dataset, *pair, "--checkpoint", str(ckpt), "--data-dir",
              str(DEV / "data"), "--out", str(out / "compare" / name)], out / f"compare-{name}.txt")
    for npz in (out / "compare").rglob("per_image.npz"):
        if npz.stat().st_size > 15 * 2**20:
            npz.unlink()  # too large to return; results.json holds every summary number
    shutil.copy2(ckpt, out / "last.pt")
    _run([py, "-m", "empirical.transfer", "split", str(out / "last.pt")])
    (out / "last.pt").unlink()
    print(f"collected into {out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    pk = sub.add_parser("pack", help="here: the data and the reference Glow into .devdata/part-N")
    pk.add_argument("--datasets", nargs="+", default=["cifar10", "cifar100", "mnist", "fashionmnist"],
                    choices=list(FOLDERS))
    pk.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    pk.add_argument("--anchor", type=Path, default=ROOT.parent / "shared" / "anchors" / "y0ast-glow-pytorch")
    sub.add_parser("stage", help="device: merge the carried parts into .devdata/data")
    for name in ("start", "collect"):
        s = sub.add_parser(name, help="device: tests, benchmark, training" if name == "start" else
                           "device: wait, then evaluate, compare and pack the checkpoint into $OUT")
        s.add_argument("--dataset", default="cifar10", choices=list(PAIRS))
        s.add_argument("--model", default="glow", choices=["glow", "cvglow"])
        s.add_argument("--preset", default="gpu", choices=["smoke", "cpu", "gpu"])
        if name == "start":
            s.add_argument("--minutes", type=float, default=15.0,
                           help="training time limit (default 15: a session has 30 device minutes in all)")
            s.add_argument("--batch", type=int, default=256, help="benchmark batch (default: the gpu preset's)")
            s.add_argument("--iters", type=int, default=20)
            s.add_argument("--compile", action="store_true", help="train with torch.compile")
        else:
            s.add_argument("--wait", type=float, default=9.0, help="minutes to wait for training (default 9)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    {"pack": pack, "stage": stage, "start": start, "collect": collect}[args.step](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
