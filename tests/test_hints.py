"""fastclip.hints: every `pip install` we print or document names a distribution we publish, from where the
user is; the `fastclip export` that adds a missing precision."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from fastclip.defaults import DISTRIBUTION

ROOT = Path(__file__).resolve().parents[1]
OURS = {DISTRIBUTION, DISTRIBUTION + "-cpu"}


def scanned_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for folder in ("fastclip", "export", "cpu"):
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".toml", ".md", ".txt"))
    # not what a build left (cpu/build/lib holds a copy of fastclip/ as it was then)
    return [p for p in files if not {"build", "__pycache__"} & set(p.relative_to(ROOT).parts)
            and not any(part.endswith(".egg-info") for part in p.parts)]


def wrong_names(line: str) -> list[str]:
    """Distribution names starting with "fastclip" that a line tells pip to install and we do not publish,
    and any `fastclip[extra]` requirement anywhere on the line."""
    bad = re.findall(r"(?<![\w./-])fastclip\[[^\]]*\]", line)
    for match in re.finditer(r"pip3? install\b([^\n`]*)", line):
        # The command ends where prose starts: a shell comment, a parenthesis, a sentence or clause.
        words = re.split(r" #| \(|\)|, |; |\. | && | \| ", match.group(1))[0]
        for token in re.findall(r"[^\s'\"()]+", words):
            name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", token)
            if token.startswith(("-", ".", "/", "{")) or name is None:
                continue
            normalized = re.sub(r"[-_.]+", "-", name.group(0)).lower()
            if normalized.startswith("fastclip") and normalized not in OURS:
                bad.append(token)
    return list(dict.fromkeys(bad))


# (line, what the scan must find on it): the scan is checked on these before it is trusted with the files
KNOWN = [
    ("pip install 'fastclip[serve]'", ["fastclip[serve]"]),
    ('raise X("needs pip install -U fastclip")', ["fastclip"]),
    ("pip install fastclip-cpu  # old name", ["fastclip-cpu"]),
    ("turn it into ONNX (needs fastclip[export])", ["fastclip[export]"]),
    ('pip install ".[serve]"  # from the checkout: fastclip itself', []),
    ('pip install -e "/src/fastclip[serve]" && fastclip serve', []),
    ('pip install "fastclip-onnx[ray]" or "./cpu[ray]"', []),
    ("repair: pip install --force-reinstall onnxruntime-gpu (the build fastclip uses), or fastclip's", []),
    ("pip install onnxruntime-gpu. Beside it, fastclip's CPU build", []),
    ('f"{exc}: pip install fastclip[export], then"', ["fastclip[export]"]),
]


def test_no_hint_names_a_distribution_we_do_not_publish():
    assert [wrong_names(line) for line, _ in KNOWN] == [bad for _, bad in KNOWN]
    found = []
    for path in scanned_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {name}" for name in wrong_names(line)]
    assert not found, "PyPI's `fastclip` is another project; name fastclip-onnx or a path:\n" + "\n".join(found)


def test_distribution_names_match_pyproject_and_cpu():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == DISTRIBUTION
    setup = (ROOT / "cpu" / "setup.py").read_text(encoding="utf-8")
    assert 'name=PROJECT["name"] + "-cpu"' in setup  # the CPU build is DISTRIBUTION-cpu, read from pyproject


# ------------------------------------------------------------------ the hint follows the install

PROBE = """
import json
from fastclip.hints import cpu_install_hint, install_hint, upgrade_hint
print(json.dumps([install_hint("serve"), cpu_install_hint(), upgrade_hint()]))
"""


def dist_info(site: Path, name: str, direct_url: dict | None) -> None:
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))


def hints(tmp_path: Path, path: list[Path], cwd: Path) -> list[str]:
    """The hints a fastclip found on `path` gives, in a Python without site-packages (-S): only the
    distributions on `path` exist for importlib.metadata, as in a fresh environment."""
    probe = tmp_path / "probe.py"  # a script, so sys.path[0] is its folder, not the working folder
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = os.pathsep.join(map(str, path))
    out = subprocess.run([sys.executable, "-S", str(probe)], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_editable_install_of_this_checkout(tmp_path):
    site = tmp_path / "site"
    dist_info(site, DISTRIBUTION, {"url": ROOT.as_uri(), "dir_info": {"editable": True}})
    assert hints(tmp_path, [site, ROOT], cwd=ROOT) == [
        'pip install -e ".[serve]"', 'pip install "./cpu"', "update the checkout in . (git pull)"]
    assert hints(tmp_path, [site, ROOT], cwd=tmp_path) == [
        f'pip install -e "{ROOT}[serve]"', f'pip install "{ROOT}/cpu"', f"update the checkout in {ROOT} (git pull)"]


def test_cpu_build_installed_from_a_folder(tmp_path):
    """`pip install ./cpu` (not editable): the package is copied into site-packages and direct_url.json
    names the cpu/ folder it came from."""
    site, checkout = tmp_path / "site", tmp_path / "src" / "fastclip-checkout"
    checkout.mkdir(parents=True)
    shutil.copytree(ROOT / "fastclip", site / "fastclip", ignore=shutil.ignore_patterns("__pycache__"))
    dist_info(site, DISTRIBUTION + "-cpu", {"url": (checkout / "cpu").as_uri(), "dir_info": {}})
    got = hints(tmp_path, [site], cwd=tmp_path / "src")
    assert got == ['pip install "./fastclip-checkout/cpu[serve]"', 'pip install "./fastclip-checkout/cpu"',
                   'update the checkout in ./fastclip-checkout (git pull), then pip install "./fastclip-checkout/cpu"']


def test_installed_by_name_from_an_index(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(ROOT / "fastclip", site / "fastclip", ignore=shutil.ignore_patterns("__pycache__"))
    dist_info(site, DISTRIBUTION, None)
    install, cpu, upgrade = hints(tmp_path, [site], cwd=tmp_path)
    assert install == f'pip install "{DISTRIBUTION}[serve]"' and upgrade == f'pip install -U "{DISTRIBUTION}"'
    assert "./cpu" in cpu and DISTRIBUTION + "-cpu" in cpu


def test_run_from_the_checkout_beside_another_install(tmp_path):
    """An editable install of another checkout (metadata only, like a shared virtualenv's) does not describe
    the fastclip imported from this one."""
    site, other = tmp_path / "site", tmp_path / "other-checkout"
    dist_info(site, DISTRIBUTION, {"url": other.as_uri(), "dir_info": {"editable": True}})
    assert hints(tmp_path, [ROOT, site], cwd=ROOT)[0] == 'pip install ".[serve]"'
    assert hints(tmp_path, [ROOT], cwd=tmp_path)[0] == f'pip install "{ROOT}[serve]"'


def test_the_egg_info_an_editable_build_leaves_in_the_checkout_is_not_an_install(tmp_path):
    """`pip install -e .` (CI's install) writes fastclip_onnx.egg-info into the checkout; on sys.path beside
    fastclip/ it must not read as a copy installed by name from an index."""
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "fastclip", checkout / "fastclip", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(ROOT / "pyproject.toml", checkout / "pyproject.toml")
    egg = checkout / f"{DISTRIBUTION.replace('-', '_')}.egg-info"
    egg.mkdir()
    (egg / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: 0.1.0\n")
    assert hints(tmp_path, [checkout], cwd=checkout)[0] == 'pip install ".[serve]"'


# ------------------------------------------------------------------ the hints in the commands' errors


def test_missing_extra_errors_name_the_checkout(tmp_path):
    """The parquet and serve errors, run from a folder inside the checkout and from elsewhere."""
    code = ("import sys; sys.modules['pyarrow'] = sys.modules['uvicorn'] = None; from fastclip.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    for cwd, shown in ((ROOT / "tests", str(ROOT)), (tmp_path, str(ROOT))):
        out = subprocess.run([sys.executable, "-c", code, "embed", "--text", "a", "--out", str(tmp_path / "v.parquet")],
                             cwd=cwd, capture_output=True, text=True, timeout=60)
        # -e where this checkout is installed editable (CI's `pip install -e`), not in a bare checkout
        assert out.returncode == 2 and re.search(rf'pip install (-e )?"{re.escape(shown)}\[parquet\]"', out.stderr), out.stderr
    serve = subprocess.run([sys.executable, "-c", code, "serve", "--model", "m"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert serve.returncode == 2 and re.search(r'pip install (-e )?"\.\[serve\]"', serve.stderr), serve.stderr


def test_export_hint_names_the_exact_command(tmp_path):
    from fastclip.hints import export_hint

    def folder(name, source):
        f = tmp_path / name
        f.mkdir()
        if source is not None:
            (f / "fastclip.json").write_text(json.dumps({"format": "fastclip", "source": source}))
        return f

    oc = folder("oc", {"kind": "open_clip", "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"})
    assert export_hint(oc, ["int8", "fp32"]) == (
        f"fastclip export open_clip:ViT-B-32 {oc} --pretrained laion2b_s34b_b79k --precision fp32,int8 --overwrite")
    hub = folder("hub", {"kind": "hf", "model": "openai/clip-vit-base-patch32", "pretrained": None})
    assert export_hint(hub, ["fp32", "fp16"]) == (
        f"fastclip export openai/clip-vit-base-patch32 {hub} --precision fp32,fp16 --overwrite")
    local = folder("local", {"kind": "hf", "model": "my-finetune", "pretrained": None})
    assert export_hint(local, ["fp32", "int8"]).startswith(f"fastclip export MODEL {local} --precision fp32,int8")
    assert "'my-finetune'" in export_hint(local, ["fp32", "int8"])
    fastembed = folder("fastembed", None)
    assert export_hint(fastembed, ["fp32", "int8"]).startswith("fastclip export MODEL NEW_FOLDER --precision fp32,int8")


def test_export_hint_command_parses(tmp_path):
    """The command the hint gives is one `fastclip export` accepts (positionals before the options)."""
    import shlex

    from fastclip.cli import build_parser
    from fastclip.hints import export_hint

    f = tmp_path / "m"
    f.mkdir()
    (f / "fastclip.json").write_text(json.dumps({"source": {"kind": "open_clip", "model": "ViT-B-32", "pretrained": "x"}}))
    args = build_parser().parse_args(shlex.split(export_hint(f, ["fp32", "int8"]))[1:])
    assert (args.model, args.out_dir, args.pretrained, args.precision, args.overwrite) == (
        "open_clip:ViT-B-32", str(f), "x", "fp32,int8", True)
