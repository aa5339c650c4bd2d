"""A bounded, fixed-seed share of the fuzzing (tests/support/fuzzing.py) in CI; the long run is benchmarks/fuzz.py.

Each kind runs in a subprocess with a timeout, so a crash (segfault in a decoder) or a hang fails the
test with the kind named instead of taking the suite down. ~20 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZING = Path(__file__).resolve().parent.parent / "benchmarks" / "fuzz_chunk.py"

# (kind, stop, step): ~900 of the 10,795 truncation offsets, a few hundred of each other kind.
SHARE = [
    ("image-truncate", 10**6, 12),
    ("image-mutate", 600, 1),
    ("manifest-mutate", 300, 1),
    ("manifest-truncate", 10**6, 5),
    ("tokenizer-truncate", 120, 1),
    ("tokenizer-mutate", 240, 1),
    ("texts", 16, 1),  # 3-60 K character texts against open_clip's and transformers' tokenizers
]


@pytest.mark.parametrize("kind, stop, step", SHARE, ids=[k for k, _, _ in SHARE])
def test_fuzz_share_ends_in_results_or_fastclip_errors(kind, stop, step, tiny_openclip_export):
    cmd = [sys.executable, str(FUZZING), "--kind", kind, "--stop", str(stop), "--step", str(step), "--seed", "0",
           "--model", str(tiny_openclip_export), "--full-load-every", "40"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, env={**os.environ})
    assert result.returncode == 0, f"{kind}: exit {result.returncode} (a crash?)\n{result.stderr[-3000:]}"
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    findings = [line for line in lines if "summary" not in line]
    summary = lines[-1]
    assert summary["summary"] == kind and not findings, findings[:5]
    if kind == "texts":  # exactness cases: every one must give the reference's ids
        assert summary["ok"] == stop, summary
        return
    assert summary["ok"] + summary["error"] >= 100  # the share really ran
    assert summary["error"] > 0  # and the hostile cases really were hostile
