"""One GPU session in 15 device minutes: a few device calls, back to back, planned and timed.

``python bench/gpu_session.py pack`` (here) copies what the session measures (CIFAR-10, the CIFAR-100 and MNIST
test sets, the reference Glow, the carried wheels) into ``.devdata/part-N``, each small enough to travel in one call
beside the working tree, writes the plan into part 1 (``plan.json``) and prints the calls with their device-time
budgets. On the device:

1. ``start`` (call 1, carrying part 1) installs the wheels and starts ``drive`` in its own session (setsid), which
   outlives the call; the call returns at once.
2. ``true`` (one call per further part): the other parts travel while the driver benchmarks.
3. ``collect --wait M`` (back to back until it says ``done``): waits for the driver, then writes ``$OUT``: the results
   as one tarball in ≤ 15 MiB parts (``python -m empirical.transfer join $OUT/results.tar.gz.parts.json`` here),
   ``session.json`` and ``session.log``; at most 8 files.

``drive`` runs one step at a time, the GPU to itself: the CUDA tests and the side-by-side throughput benchmark
(which need no data), then, once every part's files have arrived, staging, training for ``--minutes``, the
time-to-bits/dim curve and ``verify.compare`` on each pair with ``--checkpoint`` (the pairs in parallel: most of their
time is compression on the CPU). Each step's seconds against its budget go to ``session.json`` as it ends.

``pack`` takes ``results/`` and ``empirical/weights/`` (tracked, never read there) out of git's index so that they do
not travel with every call; ``finish`` (here, after ``give_back``) puts them back and unpacks the returned results
into ``results/gpu/``. Commit nothing in between.

A dry run on the CPU: ``pack``, ``start --preset smoke --device cpu --minutes 0.2`` and ``collect`` with ``OUT`` set
(the CUDA tests then run against the CPU: ``DGM_OOD_TEST_ACCEL=cpu``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REL_DEV = Path(".devdata")
DEV = ROOT / REL_DEV
MIB = 2**20
CALL_BYTES = 64 * MIB  # what one device call carries: the working tree and the part
MARGIN = 2 * MIB
RETURN_BYTES = 56 * MIB  # of the 64 MiB a call returns: the tarball's parts (session.json and the log besides)
DATASET, MODEL = "cifar10", "glow"
NEEDS = {"cifar10": ("train", "test"), "cifar100": ("test",), "mnist": ("test",)}  # what the pairs read
PAIRS = (("mnist", "--match"), ("cifar100",))
# Seconds. Calls: the machine's start and each call's transfer; the driver's steps run during and after them.
MACHINE_START, CALL_OVERHEAD, GIVE_BACK = 120, 25, 10
STEP_BUDGET = {"cuda_tests": 60, "throughput": 120, "data": 0, "stage": 10, "train": None, "time_to_bpd": 15,
               "compare": 180, "results": 20}
COLLECT_WAIT = 510  # one collect call's wait (--wait 8.5): the call stays under 9 minutes
TRAIN_OVERHEAD = 60  # data, model, the final evaluation of 10,000 images and the checkpoint
DEVICE_SECONDS = 900


SLIM = ("results", "empirical/weights")  # tracked (~50 MiB), never read on the device: left out of every call
SLIM_BEGIN, SLIM_END = "# gpu_session pack: out of the device calls until restore", "# gpu_session pack: end"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def _exclude_file(root: Path) -> Path:
    return root / _git(root, "rev-parse", "--git-path", "info/exclude").strip()


def slim(root: Path = ROOT) -> None:
    """Leave SLIM out of what every device call carries: out of git's index (the files stay on disk) and ignored
    in ``.git/info/exclude``, until :func:`restore`. Commit nothing meanwhile: the index lacks them."""
    restore(root)
    _git(root, "rm", "-r", "-q", "--cached", "--ignore-unmatch", *SLIM)
    exclude = _exclude_file(root)
    exclude.parent.mkdir(parents=True, exist_ok=True)
    old = exclude.read_text() if exclude.is_file() else ""
    lines = [SLIM_BEGIN, *(f"/{p}/" for p in SLIM), SLIM_END]
    exclude.write_text(old + ("" if not old or old.endswith("\n") else "\n") + "\n".join(lines) + "\n")


def restore(root: Path = ROOT) -> bool:
    """Undo :func:`slim`: SLIM back in git's index as HEAD has it, its lines out of ``.git/info/exclude``; returns
    whether there was anything to undo."""
    exclude = _exclude_file(root)
    text = exclude.read_text() if exclude.is_file() else ""
    if SLIM_BEGIN not in text:
        return False
    head, rest = text.split(SLIM_BEGIN + "\n", 1)
    exclude.write_text(head + rest.split(SLIM_END + "\n", 1)[-1])
    _git(root, "reset", "-q", "HEAD", "--", *SLIM)
    return True


def plan_path() -> Path:
    """The plan travels in part 1, with the first call."""
    return DEV / "part-1" / "plan.json"


def tree_bytes() -> int:
    """What travels with every call: tracked files and untracked files git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def session_files(data_root: Path, anchor: Path, wheels: Path) -> tuple[list[tuple[Path, Path]], list[tuple]]:
    """(first, rest): (source, path under a part) of what must come first (the wheels and the reference, which the
    benchmark needs) and of the data files the pairs read."""
    from empirical.data.registry import locate
    from empirical.io.errors import DataNotFound

    if not any(anchor.rglob("*.py")):
        raise SystemExit(f"error: no reference Glow in {anchor} (--anchor): the benchmark's ratio needs it")
    first = [(f, Path("wheels") / f.name) for f in sorted(wheels.glob("*.whl"))] if wheels.is_dir() else []
    first += [(f, Path("data/anchors") / anchor.name / f.relative_to(anchor)) for f in sorted(anchor.rglob("*"))
              if f.is_file()]
    try:
        rest = [(f, Path("data") / f.relative_to(data_root)) for name, splits in NEEDS.items() for split in splits
                for f in locate(name, split, data_root)]
    except DataNotFound as e:
        raise SystemExit(f"error: {e} (--data-root)") from None
    return first, rest


def bin_parts(first: list[tuple[Path, Path]], rest: list[tuple[Path, Path]], cap: int) -> list[list[tuple]]:
    """Parts of at most ``cap`` bytes: ``first`` in part 1, the rest first-fit, largest first."""
    parts: list[list[tuple[Path, Path]]] = [list(first)]
    size = lambda part: sum(f.stat().st_size for f, _ in part)  # noqa: E731
    for f, rel in sorted(rest, key=lambda t: -t[0].stat().st_size):
        if f.stat().st_size > cap:
            raise SystemExit(f"error: {f} ({f.stat().st_size / MIB:.1f} MiB) is larger than a part ({cap / MIB:.1f} "
                             f"MiB beside the working tree)")
        fit = next((p for p in parts if size(p) + f.stat().st_size <= cap), None)
        if fit is None:
            parts.append(fit := [])
        fit.append((f, rel))
    if size(parts[0]) > cap:
        raise SystemExit(f"error: the wheels and the reference ({size(parts[0]) / MIB:.1f} MiB) do not fit one part")
    return parts


def budget(n_parts: int, minutes: float) -> dict:
    """The planned device seconds: the machine's start, one call per part (the driver runs meanwhile), then
    ``collect`` calls of at most COLLECT_WAIT until the driver is done, and the give-back."""
    steps = {**STEP_BUDGET, "train": round(60 * minutes) + TRAIN_OVERHEAD}
    driver = sum(steps.values())
    waiting = max(0, driver - CALL_OVERHEAD * n_parts)
    collects = max(1, math.ceil(waiting / COLLECT_WAIT))
    total = MACHINE_START + CALL_OVERHEAD * (n_parts + collects) + waiting + GIVE_BACK
    return {"machine_start": MACHINE_START, "call_overhead": CALL_OVERHEAD, "steps": steps, "driver": driver,
            "collect_calls": collects, "waiting": waiting, "total": total, "device_seconds": DEVICE_SECONDS}


def pack(args: argparse.Namespace) -> None:
    from empirical.io.provenance import git_commit

    restore()
    commit = git_commit()
    if commit.endswith("-dirty") or commit == "unknown":
        raise SystemExit(f"error: commit first: the reports made on the device name the commit ({commit})")
    files = session_files(args.data_root, args.anchor, args.wheels)
    slim()
    try:
        plan = _write_parts(files, commit, args.minutes)
    except BaseException:
        restore()  # whatever stopped it, git's index is left as it was
        raise
    print_plan(plan)
    print(f"{' and '.join(SLIM)} are out of git's index until `python bench/gpu_session.py finish` (or restore): "
          "commit nothing before it")


def _write_parts(files: tuple[list, list], commit: str, minutes: float) -> dict:
    """The parts beside the (slimmed) working tree, copied into ``DEV``, and the plan, written into part 1."""
    tree = tree_bytes()
    cap = CALL_BYTES - tree - MARGIN
    parts = bin_parts(*files, cap)
    shutil.rmtree(DEV, ignore_errors=True)
    listing = []
    for i, part in enumerate(parts, 1):
        for f, rel in part:
            (DEV / f"part-{i}" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, DEV / f"part-{i}" / rel)
        listing.append({"part": f"part-{i}", "files": [[str(rel), f.stat().st_size] for f, rel in part]})
    plan = {"commit": commit, "tree_bytes": tree, "part_cap_bytes": cap,
            "parts": listing, "minutes": minutes, "budget": budget(len(parts), minutes)}
    plan_path().write_text(json.dumps(plan, indent=1))
    return plan


def print_plan(plan: dict) -> None:
    b, parts = plan["budget"], plan["parts"]
    print(f"working tree {plan['tree_bytes'] / MIB:.1f} MiB; {len(parts)} parts of at most "
          f"{plan['part_cap_bytes'] / MIB:.1f} MiB in {DEV}; commit {plan['commit']}")
    print("device calls, back to back (the machine goes back after 30 s idle), with their planned device seconds:")
    print(f"  {b['machine_start']:>4} s  the machine's start (in the first call)")
    for i, part in enumerate(parts, 1):
        size = sum(n for _, n in part["files"]) / MIB
        command = f"python3 bench/gpu_session.py start --minutes {plan['minutes']:g}" if i == 1 else "true"
        print(f"  {b['call_overhead']:>4} s  run(command={command!r}, carry=['.devdata/part-{i}'], timeout_s=120)"
              f"  # {size:.1f} MiB")
    print(f"  {b['waiting'] + b['call_overhead'] * b['collect_calls']:>4} s  {b['collect_calls']} × "
          f"run(command='python3 bench/gpu_session.py collect --wait 8.5', timeout_s=560), until one prints done; "
          f"then give_back")
    print("  the driver's steps: " + ", ".join(f"{k} {v} s" for k, v in b["steps"].items()) + f" = {b['driver']} s")
    over = "" if b["total"] <= b["device_seconds"] else "  OVER BUDGET: lower --minutes"
    print(f"  total {b['total']} s of {b['device_seconds']} s of device time{over}")


def start(args: argparse.Namespace) -> None:
    """Install the carried wheels, then start the driver in its own session and return."""
    plan = json.loads(plan_path().read_text())
    print_plan(plan)
    wheels = sorted(DEV.glob("part-*/wheels/*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(DEV / "site"), *map(str, wheels)], check=True)
    out = DEV / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "drive", "--minutes", str(args.minutes), "--preset", args.preset,
           "--device", args.device, "--eval-every", str(args.eval_every)]
    with open(out / "session.log", "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=_env(plan))
    (DEV / "driver.pid").write_text(str(proc.pid))
    print(f"driver started (pid {proc.pid}), log {out / 'session.log'}")


def _env(plan: dict) -> dict:
    path = os.pathsep.join(p for p in (str(DEV / "site"), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "DGM_OOD_COMMIT": plan["commit"]}


class Driver:
    """Runs the steps in order, each command's output into the session log, and records each step as it ends."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, DEV / "out"
        self.plan = json.loads(plan_path().read_text())
        self.record = {"commit": self.plan["commit"], "plan": self.plan["budget"], "steps": [], "done": False,
                       "started": time.time()}
        self.run_dir = REL_DEV / "runs" / f"{DATASET}-{MODEL}-{args.preset}"  # paths relative to ROOT, the cwd

    def save(self) -> None:
        tmp = self.out / "session.json.tmp"
        tmp.write_text(json.dumps(self.record, indent=1))
        tmp.replace(self.out / "session.json")

    def step(self, name: str, commands: list[list[str]]) -> bool:
        """Run ``commands`` in parallel; record the step's seconds and exit codes against its budget."""
        t0 = time.time()
        print(f"== {name}: " + " & ".join(" ".join(c) for c in commands), flush=True)
        procs = [subprocess.Popen(c, cwd=ROOT, stdout=sys.stdout, stderr=subprocess.STDOUT) for c in commands]
        codes = [p.wait() for p in procs]
        shown = [["python3", *c[1:]] if c[0] == sys.executable else c for c in commands]
        self.record["steps"].append({"step": name, "seconds": round(time.time() - t0, 1), "exit": codes,
                                     "budget": self.record["plan"]["steps"][name], "commands": shown})
        self.save()
        return not any(codes)

    def wait_for_data(self, timeout: float = 900) -> bool:
        """Every planned file present at its planned size (the parts arrive with the calls)."""
        t0 = time.time()
        wanted = [(DEV / p["part"] / rel, n) for p in self.plan["parts"] for rel, n in p["files"]]
        while not all(f.is_file() and f.stat().st_size == n for f, n in wanted):
            if time.time() - t0 > timeout:
                return False
            time.sleep(2)
        self.record["steps"].append({"step": "data", "seconds": round(time.time() - t0, 1), "exit": [0],
                                     "budget": 0})
        self.save()
        return True

    def run(self) -> None:
        py, a, out, data, me = sys.executable, self.args, REL_DEV / "out", REL_DEV / "data", "bench/gpu_session.py"
        anchor = next(DEV.glob("part-*/data/anchors/*"), None)
        anchor = anchor and anchor.relative_to(ROOT)
        self.step("cuda_tests", [[py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"]])
        self.step("throughput", [[py, "bench/throughput.py", "--preset", a.preset, "--model", MODEL, "--dataset",
                                  DATASET, "--batch", "256", "--iters", "20", "--device", a.device, "--peak-tflops",
                                  "989", *(["--anchor", str(anchor)] if anchor else []),
                                  "--json", str(out / "throughput.json")]])
        if not self.wait_for_data():
            return
        self.step("stage", [[py, me, "stage"]])
        ckpt = self.run_dir / "last.pt"
        trained = self.step("train", [[py, "-m", "empirical.train", "--dataset", DATASET, "--model", MODEL,
                                       "--preset", a.preset, "--out", str(self.run_dir), "--data-dir",
                                       str(data), "--device", a.device, "--time-limit", str(a.minutes),
                                       "--eval-every", str(a.eval_every), "--resume", "--no-progress"]])
        if not (trained or (ROOT / ckpt).is_file()):
            return
        self.step("time_to_bpd", [[py, "bench/time_to_bpd.py", str(ckpt), "--out", str(out / "time_to_bpd")]])
        self.step("compare", [[py, "-m", "verify.compare", DATASET, *pair, "--checkpoint", str(ckpt), "--data-dir",
                               str(data), "--device", a.device, "--out",
                               str(out / "compare" / "-".join([DATASET, *(p.lstrip("-") for p in pair)]))]
                              for pair in PAIRS])


def drive(args: argparse.Namespace) -> None:
    if args.device == "cpu":  # a dry run: the CUDA tests' plumbing against the CPU itself
        os.environ["DGM_OOD_TEST_ACCEL"] = "cpu"
    driver = Driver(args)
    driver.save()
    try:
        driver.run()
    finally:
        driver.record["done"] = True
        driver.record["seconds"] = round(time.time() - driver.record["started"], 1)
        driver.save()


def stage(args: argparse.Namespace) -> None:
    """Hard-link every carried part's data files into one data root, .devdata/data."""
    n = 0
    for part in sorted(DEV.glob("part-*")):
        for f in (part / "data").rglob("*"):
            target = DEV / f.relative_to(part)
            if f.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(f, target)
                n += 1
    print(f"staged {n} files into {REL_DEV / 'data'}: " + ", ".join(sorted(p.name for p in (DEV / "data").iterdir())))


def results_tarball(out: Path, target: Path) -> list[str]:
    """Everything the driver wrote but the session files and per-image arrays, into one .tar.gz; returns what was
    left out."""
    left_out = []
    with tarfile.open(target, "w:gz") as tar:
        for f in sorted(out.rglob("*")):
            if not f.is_file() or f.name.startswith("session."):
                continue
            if f.name == "per_image.npz":
                left_out.append(str(f.relative_to(out)))
                continue
            tar.add(f, arcname=str(f.relative_to(out)))
    return left_out


def collect(args: argparse.Namespace) -> None:
    """Wait up to --wait minutes for the driver, then write what it has made into $OUT (≤ 8 files)."""
    out, dest = DEV / "out", Path(os.environ.get("OUT", DEV / "collected"))
    if not (out / "session.json").is_file():
        raise SystemExit(f"error: no driver has started in {DEV} (python3 bench/gpu_session.py start first)")
    dest.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + 60 * args.wait
    record = lambda: json.loads((out / "session.json").read_text())  # noqa: E731
    while not record()["done"] and time.time() < deadline:
        time.sleep(5)
    rec = record()
    tarball = DEV / "results.tar.gz"
    left_out = results_tarball(out, tarball)
    if tarball.stat().st_size > RETURN_BYTES:
        raise SystemExit(f"error: the results are {tarball.stat().st_size / MIB:.1f} MiB, more than a call returns")
    subprocess.run([sys.executable, "-m", "empirical.transfer", "split", str(tarball)], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    for f in DEV.glob("results.tar.gz.*"):
        shutil.move(f, dest / f.name)
    for name in ("session.json", "session.log"):
        shutil.copy2(out / name, dest / name)
    print(f"{'step':<12} {'seconds':>8} {'budget':>7}  exit")
    for s in rec["steps"]:
        print(f"{s['step']:<12} {s['seconds']:>8.1f} {s['budget'] or 0:>7}  {s['exit']}")
    spent = time.time() - rec["started"]
    print(f"driver: {spent:.0f} s since it started (planned {rec['plan']['driver']} s); left out: "
          f"{', '.join(left_out) or 'nothing'}")
    print("done" if rec["done"] else "still running: collect again, back to back")


def restore_step(args: argparse.Namespace) -> None:
    print("git's index restored" if restore() else "git's index was whole")


def finish(args: argparse.Namespace) -> None:
    """Here, after give_back: git's index as before ``pack`` (restore), then what ``collect`` returned (its
    ``$OUT``) unpacked into ``--into``, every part's hash checked."""
    from empirical.io.transfer import joined_bytes

    restore_step(args)
    if args.returned is None:
        return
    manifest = args.returned / "results.tar.gz.parts.json"
    if not manifest.is_file():
        raise SystemExit(f"error: {manifest} not found: pass the folder collect's files were returned to")
    if args.into.exists() and any(args.into.iterdir()):
        raise SystemExit(f"error: {args.into} is not empty: name a new folder with --into")
    args.into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(joined_bytes(manifest)), mode="r:gz") as tar:
        tar.extractall(args.into, filter="data")
    for name in ("session.json", "session.log"):
        shutil.copy2(args.returned / name, args.into / name)
    print(f"results in {args.into}: " + ", ".join(sorted(f.name for f in args.into.iterdir())))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    pk = sub.add_parser("pack", help="here: the parts, the plan and the calls")
    pk.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    pk.add_argument("--anchor", type=Path, default=ROOT.parent / "shared" / "anchors" / "y0ast-glow-pytorch")
    pk.add_argument("--wheels", type=Path, default=ROOT / ".whl",
                    help="wheels the device's python lacks (imagecodecs), installed by start")
    for name in ("pack", "start", "drive"):
        s = pk if name == "pack" else sub.add_parser(name, help="device: install the wheels, start the driver"
                                                      if name == "start" else "device: the steps (start runs it)")
        s.add_argument("--minutes", type=float, default=3.0, help="training time (default 3: 15 device minutes "
                                                                  "in all)")
        if name != "pack":
            s.add_argument("--preset", default="gpu", choices=["smoke", "cpu", "gpu"])
            s.add_argument("--device", default="cuda")
            s.add_argument("--eval-every", type=int, default=250, help="training steps between test evaluations")
    sub.add_parser("stage", help="device: merge the carried parts into .devdata/data")
    c = sub.add_parser("collect", help="device: wait for the driver, then write $OUT")
    c.add_argument("--wait", type=float, default=8.5, help="minutes to wait for the driver (default 8.5)")
    f = sub.add_parser("finish", help="here, after give_back: restore git's index, unpack the returned results")
    f.add_argument("returned", type=Path, nargs="?", help="the folder collect's files came back to (files_at)")
    f.add_argument("--into", type=Path, default=ROOT / "results" / "gpu")
    sub.add_parser("restore", help="here: undo pack's change to git's index (finish does it too)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    {"pack": pack, "start": start, "drive": drive, "stage": stage, "collect": collect, "finish": finish,
     "restore": restore_step}[args.step](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
