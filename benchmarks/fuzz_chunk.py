"""One slice of fuzz cases of one kind (tests/support/fuzzing.py), one JSON line per finding and a summary.

tests/test_fuzz.py runs a bounded share through it in CI, benchmarks/fuzz.py the long run in chunks; each runs
it in a subprocess so a crash in a decoder ends only that slice.

    python benchmarks/fuzz_chunk.py --kind image-truncate --start 0 --stop 500 --seed 0 [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.fuzzing import KINDS, PER_CASE_SECONDS, Hang, _alarm, case_count, run_case  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stop", type=int, required=True)
    parser.add_argument("--step", type=int, default=1, help="run every step-th case (sampling an enumeration)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, help="a fastclip model folder (manifest kinds)")
    parser.add_argument("--full-load-every", type=int, default=25,
                        help="manifest-mutate: also load and embed with every n-th valid case's manifest")
    args = parser.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")  # Pillow's truncated/bomb warnings are not findings
    counts = {"ok": 0, "error": 0, "finding": 0}
    signal.signal(signal.SIGALRM, _alarm)
    started = time.perf_counter()
    total = case_count(args.kind, args.model)
    stop = args.stop if total is None else min(args.stop, total)
    for i in range(args.start, stop, args.step):
        signal.alarm(PER_CASE_SECONDS)
        try:
            outcome = run_case(args.kind, i, args.seed, args.model, args.full_load_every)
        except Hang:
            outcome = "finding"
            print(json.dumps({"kind": args.kind, "case": i, "seed": args.seed, "finding": f"hang > {PER_CASE_SECONDS} s"}), flush=True)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            outcome = "finding"
            print(json.dumps({"kind": args.kind, "case": i, "seed": args.seed,
                              "finding": f"{type(exc).__module__}.{type(exc).__qualname__}: {str(exc)[:300]}"}), flush=True)
        finally:
            signal.alarm(0)
        counts[outcome] += 1
    print(json.dumps({"summary": args.kind, **counts, "seconds": round(time.perf_counter() - started, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
