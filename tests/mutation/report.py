"""Score of the last ``mutmut run`` per module (``make mutants`` prints it; TESTING.md records it).

Reads mutmut's result files (``mutants/**/*.py.meta``) and ``tests/mutation/equivalent/*.txt``, the mutants
judged equivalent (no test can tell them from the original) with one reason each. The score of a module is

    killed / (mutants - equivalent)

where *killed* counts mutants a test failed on or timed out on, and everything else that is not equivalent
(survived, no test reached it, not checked yet) counts against it. Survivors not listed as equivalent are
printed by name, so each one is either killed by a new test or explained.

    python tests/mutation/report.py [--mutants mutants] [--survivors]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
KILLED = {1: "killed", 3: "killed", 24: "timeout", -24: "timeout", 36: "timeout", 152: "timeout", 255: "timeout",
          37: "killed"}
OTHER = {0: "survived", 5: "no tests", 33: "no tests", None: "not checked", 34: "skipped"}


def load_equivalent(folder: Path) -> dict[str, str]:
    """``name  # reason`` lines of every ``*.txt`` in ``folder`` -> {name: reason}; blank and ``#`` lines skipped."""
    out = {}
    lines = [ln for path in sorted(folder.glob("*.txt")) for ln in path.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition("#")
        if not reason.strip():
            raise SystemExit(f"{folder}: '{name.strip()}' has no reason; write 'NAME  # why no test can kill it'")
        out[name.strip()] = reason.strip()
    return out


def results(mutants: Path) -> dict[str, dict[str, str]]:
    """{module file: {mutant name: status}} from mutmut's meta files."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = str(meta.relative_to(mutants))[: -len(".meta")]
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[module][name] = KILLED.get(code) or OTHER.get(code, "suspicious")
    return out


def _natural(name: str) -> tuple[str, int]:
    head, _, number = name.rpartition("_")
    return head, int(number) if number.isdigit() else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=Path, default=Path("mutants"), help="mutmut's work folder (default: mutants)")
    ap.add_argument("--equivalent", type=Path, default=HERE / "equivalent",
                    help="folder of NAME  # reason files (default: tests/mutation/equivalent)")
    ap.add_argument("--survivors", action="store_true", help="list every surviving mutant not marked equivalent")
    args = ap.parse_args(argv)
    if not args.mutants.is_dir():
        print(f"no {args.mutants}/ folder: run `make mutants` (or `mutmut run`) first", file=sys.stderr)
        return 2
    equivalent = load_equivalent(args.equivalent) if args.equivalent.is_dir() else {}
    by_module = results(args.mutants)
    stale = set(equivalent) - {n for m in by_module.values() for n in m}
    rows, open_names = [], []
    status_of = {n: s for m in by_module.values() for n, s in m.items()}
    total = Counter()
    for module, statuses in sorted(by_module.items()):
        c = Counter("equivalent" if n in equivalent and s not in ("killed", "timeout") else s
                    for n, s in statuses.items())
        open_names += [n for n, s in statuses.items()
                       if s not in ("killed", "timeout", "not checked") and n not in equivalent]
        total.update(c)
        rows.append((module, c))
    rows.append(("TOTAL", total))
    print(f"{'module':34} {'mutants':>7} {'killed':>7} {'(timeout)':>9} {'equiv':>6} {'surv':>5} {'no test':>7} "
          f"{'unrun':>6} {'score':>7}")
    for module, c in rows:
        n = sum(c.values())
        killed = c["killed"] + c["timeout"]
        scored = n - c["equivalent"]
        score = f"{100 * killed / scored:.1f}%" if scored else "-"
        print(f"{module:34} {n:7d} {killed:7d} {c['timeout']:9d} {c['equivalent']:6d} {c['survived'] + c['suspicious']:5d} "
              f"{c['no tests']:7d} {c['not checked'] + c['skipped']:6d} {score:>7}")
    if stale:
        print(f"\n{len(stale)} names in {args.equivalent}/ match no mutant any more (code changed): "
              + ", ".join(sorted(stale)[:5]) + (" ..." if len(stale) > 5 else ""))
    if args.survivors and open_names:
        print("\nnot killed and not marked equivalent (`mutmut show NAME` shows the change):")
        for name in sorted(open_names, key=_natural):
            print(f"  {name}  ({status_of[name]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
