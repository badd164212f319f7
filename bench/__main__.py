"""`python -m bench [area ...]`: run every benchmark area (or the ones named) and record results."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time

from bench import common

_NOT_AREAS = {"common", "__main__"}


def available_areas() -> list[str]:
    """Every module in bench/ that exposes run()."""
    areas = []
    for module in pkgutil.iter_modules([str(common.BENCH_DIR)]):
        if module.name in _NOT_AREAS or module.name.startswith("_"):
            continue
        if callable(getattr(importlib.import_module(f"bench.{module.name}"), "run", None)):
            areas.append(module.name)
    return sorted(areas)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("areas", nargs="*", help="areas to run (default: all)")
    parser.add_argument("--only", action="append", metavar="PART",
                        help="run only this part of an area (one area; repeatable), merging its figures "
                             "into the area's existing results")
    args = parser.parse_args(argv)
    known = available_areas()
    unknown = [area for area in args.areas if area not in known]
    if unknown:
        parser.error(f"unknown area(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.only and len(args.areas) != 1:
        parser.error("--only needs exactly one area")
    failed = []
    for area in args.areas or known:
        print(f"== bench {area}", flush=True)
        started = time.monotonic()
        try:
            module = importlib.import_module(f"bench.{area}")
            result = module.run(only=args.only) if args.only else module.run()
        except Exception as error:  # one broken area must not hide the others' results
            print(f"   {area} failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            failed.append(area)
            continue
        command = f"python -m bench {area}" + "".join(f" --only {part}" for part in args.only or ())
        path = common.write_result(area, result, command, merge=bool(args.only))
        print(f"   wrote {path} in {time.monotonic() - started:.0f}s", flush=True)
        for name, value in result.get("ratios", {}).items():
            print(f"   {name} = {value:.3f}", flush=True)
    print(f"== wrote {common.regenerate_results_md()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
