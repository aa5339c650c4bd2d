"""Mutation proof: deliberate bugs that the test suite must catch.

Each mutant is one (file, old string, new string) edit. It is applied to a temporary copy of the source
tree (never to this checkout), and the tests that guard against it run there with that copy first on
PYTHONPATH. A mutant is caught when at least one of those tests fails or errors; the unmutated copy runs
the same tests first and must pass, so a failure means the bug, not a broken test. When a module moves
(e.g. fastclip/sinks.py into a package), re-point its row of MUTANTS: the old string must occur exactly
once in the file, or the script stops and says so.

    python benchmarks/mutants.py                     # every mutant; prints the table
    python benchmarks/mutants.py --only int8-default,measure-self --out benchmarks/results/mutants.txt

Not collected by pytest (the file name does not start with test_). Runs the tests of each mutant in a
fresh pytest process: ~1-3 minutes per mutant on 2 cores (the tiny exports are rebuilt in each copy).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the tree's root


MUTANTS = [
    Mutant(
        "gelu-quickgelu-graph",
        "the exported graph's last block uses QuickGELU where the model has GELU (the export's guard must refuse it)",
        "export/open_clip_towers.py",
        "    x = rows(x) + block.ls_1(_attention(block.attn, h, mask, rows(h)))\n"
        "    return x + block.ls_2(block.mlp(block.ln_2(x)))\n",
        "    x = rows(x) + block.ls_1(_attention(block.attn, h, mask, rows(h)))\n"
        "    u = block.mlp.c_fc(block.ln_2(x))\n"
        "    return x + block.ls_2(block.mlp.c_proj(u * torch.sigmoid(1.702 * u)))\n",
        ("tests/test_export.py::test_tiny_open_clip_export",
         "tests/test_embedding.py::test_open_clip_export_matches_open_clip"),
    ),
    Mutant(
        "gelu-quickgelu-model",
        "the loaded model's vision MLPs switched to QuickGELU before export (graph and export-time reference "
        "agree, so only parity with open_clip can see it: min cosine stays ~0.999995)",
        "export/open_clip_source.py",
        "    model.eval()\n\n    built = open_clip.get_model_preprocess_cfg(model)",
        "    model.eval()\n"
        "    for _block in model.visual.transformer.resblocks:\n"
        "        _block.mlp.gelu = open_clip.transformer.QuickGELU()\n\n"
        "    built = open_clip.get_model_preprocess_cfg(model)",
        ("tests/test_export.py::test_tiny_open_clip_export",
         "tests/test_embedding.py::test_open_clip_export_matches_open_clip"),
    ),
    Mutant(
        "bicubic-bilinear",
        "fastclip's own resize (the plain whole-image path) uses bilinear whatever filter the model asks for",
        "fastclip/families/resize.py",
        "    return image.resize(out, resample)\n",
        "    return image.resize(out, Image.Resampling.BILINEAR)\n",
        ("tests/test_images.py::test_pixels_match_open_clip",),
    ),
    Mutant(
        "bicubic-bilinear-window",
        "the bounded (crop-window) resize of extreme aspect ratios uses bilinear for its first pass",
        "fastclip/families/resize.py",
        "    region = region.resize((size, rows), resample,",
        "    region = region.resize((size, rows), Image.Resampling.BILINEAR,",
        ("tests/test_hostile.py::test_bounded_path_equals_open_clip_on_photo_strips",),
    ),
    Mutant(
        "image-not-normalized",
        "the image tower skips L2 normalization",
        "fastclip/runner.py",
        "            vectors = run(self._tower(), self.spec, {self.spec.input_name: pixels}, normalize)\n",
        "            vectors = run(self._tower(), self.spec, {self.spec.input_name: pixels}, False)\n",
        ("tests/test_embedding.py::test_both_towers_normalized_by_default",),
    ),
    Mutant(
        "measure-self",
        "verify.measure compares the exported graph with itself instead of with torch",
        "export/verify.py",
        "        want = want.astype(np.float64)\n",
        "        want = got.copy()\n",
        ("tests/test_export.py::test_measure_catches_a_real_mismatch",
         "tests/test_export.py::test_failed_verification_leaves_nothing"),
    ),
    Mutant(
        "int8-default",
        "int8 picked by default when the folder holds it",
        "fastclip/session.py",
        '    if "fp32" in tower.files:\n        return "fp32"\n',
        '    if "int8" in tower.files:\n        return "int8"\n    if "fp32" in tower.files:\n        return "fp32"\n',
        ("tests/test_session.py::test_int8_is_never_picked_unless_asked_even_when_the_folder_holds_it",
         "tests/test_embedding.py::test_precision_int8_is_never_picked_silently"),
    ),
    Mutant(
        "journal-off-by-one",
        "resume restarts one input after the last checkpoint (one input silently missing)",
        "fastclip/sinks/journal.py",
        '                        keep, done, rows = offset, mark["next"], mark["rows"]\n',
        '                        keep, done, rows = offset, mark["next"] + 1, mark["rows"]\n',
        ("tests/test_sinks.py::test_interrupted_run_keeps_old_output_and_resumes_to_identical_file",
         "tests/test_cli.py::test_texts_resume_after_kill_is_identical"),
    ),
    # ---- issue 26: code added since the first audit; each row names the tests that must catch it
    Mutant(
        "gelu-tanh-model",
        "the loaded model's vision MLPs switched to the tanh approximation of GELU before export (graph and "
        "export-time reference agree; only parity with open_clip can see it)",
        "export/open_clip_source.py",
        "    model.eval()\n\n    built = open_clip.get_model_preprocess_cfg(model)",
        "    model.eval()\n"
        "    for _block in model.visual.transformer.resblocks:\n"
        "        _block.mlp.gelu = torch.nn.GELU(approximate=\"tanh\")\n\n"
        "    built = open_clip.get_model_preprocess_cfg(model)",
        ("tests/test_embedding.py::test_open_clip_export_matches_open_clip",
         "tests/test_export.py::test_tiny_open_clip_export",
         "tests/test_families.py::test_sigmoid_model_manifest_and_vectors"),
    ),
    Mutant(
        "layernorm-eps-graph",
        "the exported text graph's final LayerNorm (ln_final) runs with eps 1e-6 instead of the model's 1e-5",
        "export/open_clip_towers.py",
        "        x = self.ln_final(x)  # per-token LayerNorm",
        "        x = nn.functional.layer_norm(x, self.ln_final.normalized_shape, self.ln_final.weight, "
        "self.ln_final.bias, 1e-6)  # per-token LayerNorm",
        ("tests/test_embedding.py::test_open_clip_export_matches_open_clip",
         "tests/test_export.py::test_tiny_open_clip_export"),
    ),
    Mutant(
        "tag-resize-mode",
        "the export records every open_clip model as shortest-side resize + crop, whatever its tag sets",
        "export/open_clip_config.py",
        'resize_mode=pre.get("resize_mode", "shortest"), interpolation=',
        'resize_mode="shortest", interpolation=',
        ("tests/test_families.py::test_export_reads_every_tags_preprocessing",
         "tests/test_families.py::test_sigmoid_model_manifest_and_vectors"),
    ),
    Mutant(
        "tag-interpolation",
        "the export records bicubic for every open_clip model, whatever filter its tag sets",
        "export/open_clip_config.py",
        'interpolation=pre.get("interpolation", "bicubic"),',
        'interpolation="bicubic",',
        ("tests/test_families.py::test_export_reads_every_tags_preprocessing",
         "tests/test_families.py::test_sigmoid_model_manifest_and_vectors"),
    ),
    Mutant(
        "tag-preprocess-ignored",
        "the tag's own preprocessing (e.g. MobileCLIP2 dfndr2b's mean 0 / std 1) is not merged over the config's",
        "export/open_clip_config.py",
        "        pre = merge_preprocess_dict(pre, get_pretrained_cfg(arch, tag))\n",
        "        pass\n",
        ("tests/test_families.py::test_export_reads_every_tags_preprocessing",),
    ),
    Mutant(
        "runtime-filter",
        "the runtime resamples with bicubic whatever filter the manifest names",
        "fastclip/images.py",
        "        self._resample = RESAMPLING[spec.interpolation]\n",
        '        self._resample = RESAMPLING["bicubic"]\n',
        ("tests/test_families.py::test_files_through_the_preprocessor_equal_reference",
         "tests/test_families.py::test_sigmoid_model_manifest_and_vectors"),
    ),
    Mutant(
        "padding-side",
        "the tokenizer pads on the right whatever the manifest's padding_side (SigLIP 2's Gemma pads left)",
        "fastclip/text.py",
        "            direction=spec.padding_side,\n",
        '            direction="right",\n',
        ("tests/test_families_text.py::test_hf_siglip_text_matches_transformers",
         "tests/test_families_text.py::test_left_padding_buckets_stay_exact"),
    ),
    Mutant(
        "pad-id-zero",
        "the tokenizer pads with id 0 whatever the manifest's pad_token_id (XLM-R and NLLB pad with 1)",
        "fastclip/text.py",
        "            pad_id=spec.pad_token_id,\n",
        "            pad_id=0,\n",
        ("tests/test_families_text.py::test_family_matches_open_clip",),
    ),
    Mutant(
        "context-one-short",
        "truncation keeps one token less than the context length",
        "fastclip/text.py",
        "tok.enable_truncation(max_length=spec.context_length,",
        "tok.enable_truncation(max_length=spec.context_length - 1,",
        ("tests/test_text.py::test_truncation_keeps_end_token_last",
         "tests/test_text.py::test_long_texts_give_the_references_ids"),
    ),
    Mutant(
        "eos-pooled-at-last",
        "an EOS-pooling text tower (xlm-v, mt5-worldwide) pools the last position instead",
        "export/open_clip_towers.py",
        "            pooled = (input_ids == self.eos_id).int().argmax(dim=-1)\n",
        "            pooled = torch.full_like(batch, length - 1)\n",
        ("tests/test_families_text.py::test_family_matches_open_clip",),
    ),
    Mutant(
        "last-pooled-at-eos",
        "a last-token-pooling text tower (SigLIP) pools the first EOS instead",
        "export/open_clip_towers.py",
        "        else:  # last\n            pooled = torch.full_like(batch, length - 1)\n",
        "        else:  # last\n            pooled = (input_ids == self.eos_id).int().argmax(dim=-1)\n",
        ("tests/test_families_text.py::test_family_matches_open_clip",),
    ),
    Mutant(
        "nllb-language-ignored",
        "language= is accepted and reported but the tokenizer keeps the default source-language token",
        "fastclip/text.py",
        "        if self.language != spec.language:\n",
        "        if False:\n",
        ("tests/test_families_text.py::test_nllb_language_option",),
    ),
    Mutant(
        "sigmoid-bias-dropped",
        "sigmoid scoring leaves out the model's logit_bias",
        "fastclip/families/score.py",
        "    logits = logit_scale * np.asarray(cos, np.float64) + logit_bias\n",
        "    logits = logit_scale * np.asarray(cos, np.float64)\n",
        ("tests/test_families.py::test_classify_sigmoid_equals_torch",),
    ),
    Mutant(
        "precision-at-k-off-by-one",
        "P@K counts the relevant items ranked above K only (rank < K)",
        "fastclip/retrieval/metrics.py",
        "np.bincount(query, r <= k, n) / k",
        "np.bincount(query, r < k, n) / k",
        ("tests/test_retrieval.py::test_ranking_metrics_by_hand",
         "tests/test_retrieval.py::test_ranking_metrics_equal_scikit_learn_and_the_reference"),
    ),
    Mutant(
        "map-off-by-one",
        "AP counts the relevant items before each hit, not including it (0-based position)",
        "fastclip/retrieval/metrics.py",
        "(position + 1) / r, n)",
        "position / r, n)",
        ("tests/test_retrieval.py::test_ranking_metrics_by_hand",
         "tests/test_retrieval.py::test_ranking_metrics_equal_scikit_learn_and_the_reference"),
    ),
    Mutant(
        "fast-squash-box",
        "squash resamples the whole drafted JPEG in fast mode, not the box that is the photo",
        "fastclip/families/resize.py",
        "    return _resize(image, (size, size), geometry, resample)\n",
        "    return _resize(image, (size, size), None, resample)\n",
        ("tests/test_families.py::test_fast_mode_resamples_the_photo_box_in_every_mode",),
    ),
    Mutant(
        "fast-box-dropped",
        "every resize mode resamples the whole drafted JPEG in fast mode (the box ignored, the size kept)",
        "fastclip/families/resize.py",
        "        return image.resize(out, resample, box=geometry.box)\n",
        "        return image.resize(out, resample)\n",
        ("tests/test_images.py::test_draft_changes_pixels_slightly",
         "tests/test_families.py::test_fast_mode_resamples_the_photo_box_in_every_mode"),
    ),
    Mutant(
        "similarity-fp16",
        "cosine similarities computed in float16 (classify's probabilities move by 2.9e-4; a test that scores "
        "fastclip's vectors with fastclip's own similarity cannot see it)",
        "fastclip/clip.py",
        "        return a2 @ b2.T\n",
        "        return (a2.astype(np.float16) @ b2.astype(np.float16).T).astype(np.float32)\n",
        ("tests/test_embedding.py::test_classify_equals_torch_with_the_models_logit_scale",),
    ),
    Mutant(
        "parts-resume-skips-a-part",
        "a resumed Ray run does not read its first part, so that part's inputs are embedded again",
        "fastclip/sinks/parts.py",
        "        for number, path in _parts(self.folder):\n            meta, indices, failed",
        "        for number, path in _parts(self.folder)[1:]:\n            meta, indices, failed",
        ("tests/test_sinks.py::test_parts_in_any_order_read_back_in_input_order_and_resume",),
    ),
    Mutant(
        "serve-rows-to-first-job",
        "the batcher hands every merged request the first rows of the batch, not its own slice",
        "fastclip/serve/batcher.py",
        "                job.results[first:first + n] = results[position:position + n]\n",
        "                job.results[first:first + n] = results[0:n]\n",
        ("tests/test_serve.py::test_concurrent_requests_are_merged_and_each_gets_its_own_rows",),
    ),
    Mutant(
        "serve-data-uri-as-text",
        "an input with no modality that is a data:image/... URI is embedded by the text tower",
        "fastclip/serve/inputs.py",
        "        if media.startswith(\"image/\"):\n            return \"image\"\n",
        "        if media.startswith(\"image/\"):\n            return \"text\"\n",
        ("tests/test_serve.py::test_openai_clients_image_data_uri_is_an_image",
         "tests/test_serve.py::test_one_request_mixes_texts_and_images_in_input_order"),
    ),
    Mutant(
        "layout-static-batch-ignored",
        "a graph traced with a fixed batch (Immich's 1) is fed whole batches",
        "fastclip/runner.py",
        "    n, fixed = len(next(iter(feeds.values()))), spec.batch or 0\n",
        "    n, fixed = len(next(iter(feeds.values()))), 0\n",
        ("tests/test_layouts.py::test_immich_static_batch_runs_at_any_batch_size",),
    ),
    Mutant(
        "layout-crop-offset-rounded",
        "a transformers-layout CLIP's crop starts where open_clip's does (rounded), not where its processor's does",
        "fastclip/families/resize.py",
        "{\"round\": _round_half, \"floor\": _floor_half}",
        "{\"round\": _round_half, \"floor\": _round_half}",
        ("tests/test_layouts.py::test_transformers_processors_pixel_exact",),
    ),
]

def source_files() -> list[str]:
    """The checkout's files as git sees them (tracked, and new ones not ignored): no virtual environment,
    no benchmarks/out/ of hundreds of MB."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode("utf-8", "surrogateescape")
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def copy_tree(dst: Path) -> Path:
    tree = dst / "tree"
    for name in source_files():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    link = tree / "fastclip_export"
    if not link.exists():  # an installed checkout may lack the development symlink
        link.symlink_to("export")
    return tree


def apply(tree: Path, mutant: Mutant) -> None:
    path = tree / mutant.file
    text = path.read_text(encoding="utf-8")
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"mutant {mutant.name}: the old string occurs {count} times in {mutant.file}; re-point it")
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")


def run_tests(tree: Path, tests: tuple[str, ...], timeout: int) -> tuple[int, list[str], str]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'tests'}", "HF_HUB_OFFLINE": "1"}
    # The copy, not an installed fastclip, must be what the tests import.
    where = subprocess.run([sys.executable, "-c", "import fastclip, fastclip_export; print(fastclip.__file__); "
                            "print(fastclip_export.__file__)"], cwd=tree, env=env, capture_output=True, text=True)
    if where.returncode != 0 or not all(line.startswith(str(tree)) for line in where.stdout.split()):
        raise SystemExit(f"the copy at {tree} is not what python imports:\n{where.stdout}{where.stderr}")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    try:
        r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, [], "timed out"
    ids = sorted({m.group(2) for m in re.finditer(r"^(FAILED|ERROR) (\S+)", r.stdout, re.MULTILINE)})
    # A parametrized test counts once, with how many of its cases failed.
    cases: dict[str, int] = {}
    for node in ids:
        base = node.split("[", 1)[0]
        cases[base] = cases.get(base, 0) + 1
    failed = [base if node_count == 1 and base in ids else f"{base} ({node_count} cases)"
              for base, node_count in cases.items()]
    return r.returncode, failed, r.stdout[-2000:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="mutant names, space- or comma-separated (default: all)")
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    parser.add_argument("--check", action="store_true", help="only check that every mutant still applies")
    args = parser.parse_args()
    if args.only:
        args.only = [name for arg in args.only for name in arg.split(",") if name]
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.only and len(chosen) != len(args.only):
        raise SystemExit(f"unknown mutant; known: {', '.join(m.name for m in MUTANTS)}")
    if args.check:
        for m in chosen:
            count = (ROOT / m.file).read_text(encoding="utf-8").count(m.old)
            print(f"{m.name:<26} {m.file:<30} {'ok' if count == 1 else f'old string found {count} times: RE-POINT'}")
        return 0

    rows, missed = [], 0
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fastclip-mutants-") as tmp:
        base = copy_tree(Path(tmp) / "unmutated")
        every = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        rc, failed, tail = run_tests(base, every, args.timeout)
        if rc != 0:
            raise SystemExit(f"the tests fail without any mutant (exit {rc}: {failed}):\n{tail}")
        print(f"unmutated copy: {len(every)} tests pass ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
        shutil.rmtree(base.parent)
        for mutant in chosen:
            tree = copy_tree(Path(tmp) / mutant.name)
            apply(tree, mutant)
            t = time.time()
            rc, failed, tail = run_tests(tree, mutant.tests, args.timeout)
            caught = rc != 0 and bool(failed)
            missed += not caught
            rows.append((mutant, ", ".join(failed) if caught else f"NOT CAUGHT (exit {rc})", time.time() - t))
            print(f"{mutant.name}: {'caught by ' + rows[-1][1] if caught else rows[-1][1]} ({rows[-1][2]:.0f} s)",
                  file=sys.stderr, flush=True)
            shutil.rmtree(tree.parent)

    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    lines = [f"# benchmarks/mutants.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{platform.node()} ({os.cpu_count()} cores, load {load}), {time.time() - started:.0f} s",
             "# each mutant applied to a temporary copy of the tree; all the tests below pass on an unmutated copy",
             "",
             f"{'mutant':<26} {'file':<30} caught by (the tests of its row that fail)"]
    for mutant, caught, _ in rows:
        lines.append(f"{mutant.name:<26} {mutant.file:<30} {caught}")
    lines += ["", "mutants:"] + [f"  {m.name}: {m.what}" for m, _, _ in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table, encoding="utf-8")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
