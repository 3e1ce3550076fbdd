"""Print the derivation: ``python -m theory.derive [--latex] [--check]``."""

from __future__ import annotations

import argparse
import sys

from theory.derivation import ASSUMPTIONS, STEPS, paper_discrepancy, render, run_checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m theory.derive", description=__doc__)
    p.add_argument("--latex", action="store_true", help="print equations as LaTeX")
    p.add_argument("--check", action="store_true",
                   help="verify every step on random concrete instances; exit 1 if any fails")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print("Assumptions")
    for a in ASSUMPTIONS.values():
        print(f"  [{a.key}] {a.statement}")
    for i, step in enumerate(STEPS, 1):
        print(f"\nStep {i} ({step.name}): {step.title}\n  uses: {', '.join(step.uses)}")
        print("\n".join("    " + line for line in render(step, args.latex).splitlines()))
        if step.note:
            print(f"  note: {step.note}")
    d = paper_discrepancy(args.seed)
    print(f"\nPaper vs derived coefficient with general channel mixing (u = {d['u']}):\n"
          f"  paper (Π_k Σ_j u_kcj)² = {[round(v, 4) for v in d['paper']]}\n"
          f"  derived ‖M_:,c‖²       = {[round(v, 4) for v in d['derived']]}\n"
          f"They agree when every U_k is diagonal, and also when every U_k is a pure permutation (both 1): "
          f"diagonal is sufficient, not necessary.")
    if not args.check:
        return 0
    print("\nChecks (random concrete instances)")
    failed = 0
    for name, ok in run_checks(args.seed):
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
        failed += not ok
    print(f"{len(STEPS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
