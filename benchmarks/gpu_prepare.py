"""Prepare, on a machine with network, the one file `gpu_check.py` needs on a GPU machine without any:
onnxruntime's CUDA execution provider, cut down to one GPU architecture, in `.whl/`.

Why: the GPU machine has onnxruntime (CPU build) 1.30.0, torch 2.11 with CUDA 13 libraries from the
nvidia-* wheels, and no network. The onnxruntime-gpu wheel (1.30.0: 247 MB, 1.31.1: 256 MB) is far over
what one call can carry (64 MiB in all). Almost all of it is one file, libonnxruntime_providers_cuda.so
(272 MB): its fat binary holds the kernels for six architectures (sm_75/80/86/89/90/120). Keeping the
sm_90 ones (H100 / H200; 75 MB) and zeroing the rest leaves a file that xz packs to ~50 MB.

The CPU build of onnxruntime loads that library as a plugin execution provider
(`onnxruntime.register_execution_provider_library`; the library exports `CreateEpFactories`), so the
wheel's other 60 MB (its own onnxruntime core) is not needed. onnxruntime-gpu 1.30 / 1.31 link CUDA 13
(libcudart.so.13, libcublas.so.13; 1.23 linked CUDA 12), which is what that machine has, and the
version must be the installed onnxruntime's own (the provider bridge is an internal interface).

    python benchmarks/gpu_prepare.py                    # onnxruntime-gpu 1.30.0, sm_90 -> .whl/
    python benchmarks/gpu_prepare.py --version 1.31.1 --arch 90

Run from the repository root; `.whl/` must be ignored by git (`echo /.whl/ >> .git/info/exclude`) and
carried by the device call (`carry: [".whl"]`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import re
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

CUDA_LIB = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
FATBIN_MAGIC = 0xBA55ED50  # a fat binary's header; each entry after it names its kind and architecture
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def section(path: Path, name: str) -> tuple[int, int]:
    """(file offset, size) of an ELF section, read with readelf."""
    out = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=True).stdout
    m = re.search(rf"\s{re.escape(name)}\s+\S+\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)", out)
    if not m:
        raise SystemExit(f"{path}: no {name} section")
    return int(m.group(1), 16), int(m.group(2), 16)


def fatbin_entries(data: bytearray, start: int, end: int):
    """Yield (block offset, header size, [(entry offset, entry size, arch)]) for each fat binary."""
    pos = start
    while pos < end - 16:
        magic, _version, header, size = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # blocks are 8-byte aligned
            continue
        entries, p, stop = [], pos + header, pos + header + size
        while p < stop:
            _kind, _flags, entry_header, payload = struct.unpack_from("<HHIQ", data, p)
            arch = struct.unpack_from("<I", data, p + 28)[0]
            entries.append((p, entry_header + payload, arch))
            p += entry_header + payload
        yield pos, header, entries
        pos = stop


def keep_one_arch(data: bytearray, start: int, end: int, arch: int) -> dict:
    """In every fat binary holding an `arch` entry, keep only those entries (moved to the front, the
    block's size shrunk) and zero the rest; the section and every offset outside it stay as they were.
    Blocks without that architecture are left whole."""
    kept = dropped = untouched = 0
    for pos, header, entries in list(fatbin_entries(data, start, end)):
        mine = [e for e in entries if e[2] == arch]
        if not mine:
            untouched += 1
            continue
        payload = b"".join(bytes(data[o:o + n]) for o, n, _ in mine)
        body = pos + header
        total = sum(n for _, n, _ in entries)
        data[body:body + total] = payload + bytes(total - len(payload))
        struct.pack_into("<Q", data, pos + 8, len(payload))
        kept += len(mine)
        dropped += len(entries) - len(mine)
    return {"kept_entries": kept, "dropped_entries": dropped, "blocks_without_arch": untouched}


def arch_bytes(data: bytearray, start: int, end: int) -> dict[int, int]:
    sizes: dict[int, int] = {}
    for _, _, entries in fatbin_entries(data, start, end):
        for _, n, a in entries:
            sizes[a] = sizes.get(a, 0) + n
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default="1.30.0", help="onnxruntime-gpu version: the GPU machine's onnxruntime")
    ap.add_argument("--arch", type=int, default=90, help="SM architecture to keep (90: H100 / H200)")
    ap.add_argument("--python", default="3.12", help="the GPU machine's Python (only picks the wheel)")
    ap.add_argument("--out", default=".whl")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ort-gpu-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               a.python, "--implementation", "cp", *[x for p in PLATFORMS for x in ("--platform", p)],
               "-d", tmp, f"onnxruntime-gpu=={a.version}"]
        subprocess.run(cmd, check=True)
        wheel = next(Path(tmp).glob("onnxruntime_gpu-*.whl"))
        wheel_name, wheel_bytes = wheel.name, wheel.stat().st_size
        with zipfile.ZipFile(wheel) as z:
            data = bytearray(z.read(CUDA_LIB))
        original_sha = hashlib.sha256(data).hexdigest()
        start, size = section_of_bytes(data, Path(tmp) / "lib.so")
        before = arch_bytes(data, start, start + size)
        stats = keep_one_arch(data, start, start + size, a.arch)
        if not stats["kept_entries"]:
            raise SystemExit(f"no sm_{a.arch} kernels in {wheel_name}: architectures {sorted(before)}")
        # preset 6: ~50 MB in ~1.5 min here; 9e saves a few MB at many times the time.
        packed = lzma.compress(bytes(data), preset=6)
    name = f"onnxruntime_providers_cuda-{a.version}-sm{a.arch}.so.xz"
    (out / name).write_bytes(packed)
    meta = {"file": name, "onnxruntime_version": a.version, "arch": a.arch, "wheel": wheel_name,
            "wheel_bytes": wheel_bytes, "library_bytes": len(data), "original_sha256": original_sha,
            "sha256": hashlib.sha256(data).hexdigest(), "xz_bytes": len(packed),
            "fatbin_bytes_by_arch": {f"sm_{k}": v for k, v in sorted(before.items())}, **stats}
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    print(json.dumps(meta, indent=1))
    print(f"wrote {out / name} ({len(packed) / 2**20:.1f} MiB) in {time.perf_counter() - started:.0f} s")
    return 0


def section_of_bytes(data: bytearray, scratch: Path) -> tuple[int, int]:
    scratch.write_bytes(data)
    try:
        return section(scratch, ".nv_fatbin")
    finally:
        scratch.unlink()


if __name__ == "__main__":
    sys.exit(main())
