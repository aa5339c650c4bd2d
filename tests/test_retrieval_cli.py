"""Retrieval on real photos and captions with the tiny model: clip_benchmark parity, `fastclip eval retrieval`,
`fastclip search` (text -> image, image -> image, image -> text, the model check, the HTML page)."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from support.clip_benchmark_ref import evaluate, normalized
from conftest import FIXTURES
from support.photos import photo_array
from PIL import Image
from test_cli import fastclip

from fastclip import ImageEmbedding, TextEmbedding
from fastclip.hashing import tower_fingerprint
from fastclip.retrieval import recall_at_k, retrieval_metrics, search
from fastclip.retrieval.datasets import load_captions

CAPTIONS = FIXTURES / "retrieval" / "captions.csv"


@pytest.fixture(scope="module")
def caption_set(tmp_path_factory) -> Path:
    """The captions fixture beside its photos (from scikit-image): JPEGs for colour, PNGs for grayscale."""
    folder = tmp_path_factory.mktemp("captions")
    shutil.copyfile(CAPTIONS, folder / "captions.csv")
    with open(CAPTIONS, newline="") as f:
        names = dict.fromkeys(row["image"] for row in csv.DictReader(f))
    for name in names:
        a = photo_array(Path(name).stem)
        if a.dtype == bool:
            a = (a * 255).astype(np.uint8)
        image = Image.fromarray(a[..., :3] if a.ndim == 3 else a)
        image.save(folder / name, quality=90) if name.endswith(".jpg") else image.save(folder / name)
    return folder


def embed_set(model_folder, data):
    images = np.stack(list(ImageEmbedding(model_folder).embed(data.images)))
    texts = np.stack(list(TextEmbedding(model_folder).embed(data.captions)))
    return images, texts


def test_real_photos_equal_to_clip_benchmark(tiny_openclip_export, caption_set):
    data = load_captions(caption_set / "captions.csv")
    assert len(data.images) == 14 and len(data.captions) == 39
    images, texts = embed_set(tiny_openclip_export, data)
    ref = evaluate(images, texts, data.text_image_index)
    ours = recall_at_k(normalized(images), normalized(texts), data.text_image_index)
    assert {k: ours[k] for k in ref} == ref
    # fastclip's vectors are already unit length: the same numbers without clip_benchmark's normalize
    assert {k: recall_at_k(images, texts, data.text_image_index)[k] for k in ref} == ref


@pytest.fixture(scope="module")
def karpathy(caption_set) -> Path:
    data = load_captions(caption_set / "captions.csv")
    entries = [{"filename": Path(p).name, "split": "test", "sentences": []} for p in data.images]
    for caption, i in zip(data.captions, data.text_image_index):
        entries[i]["sentences"].append({"raw": caption})
    entries.append({"filename": "missing.jpg", "split": "train", "sentences": [{"raw": "not evaluated"}]})
    path = caption_set / "json" / "dataset_flickr30k.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"images": entries}))
    return path


def test_eval_csv_and_karpathy_report_clip_benchmark_numbers(tiny_openclip_export, caption_set, karpathy, tmp_path):
    data = load_captions(caption_set / "captions.csv")
    expected = retrieval_metrics(*embed_set(tiny_openclip_export, data), data.text_image_index)
    result = fastclip("eval", "retrieval", caption_set / "captions.csv", "--model", tiny_openclip_export,
                      "--report", tmp_path / "csv.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "csv.json").read_text())
    assert report["metrics"] == expected and report["images"] == 14 and report["captions"] == 39
    assert report["failed_images"] == 0
    lines = result.stdout.splitlines()
    assert any("text -> image" in line and "image -> text" in line and "gap" in line for line in lines)
    row = next(line for line in lines if line.startswith("fp32, fast off"))
    r1_t2i = 100 * expected["image_retrieval_recall@1"]
    r1_i2t = 100 * expected["text_retrieval_recall@1"]
    cells = row.replace("|", " ").split()[3:]
    assert float(cells[0]) == pytest.approx(r1_t2i, abs=0.05) and float(cells[6]) == pytest.approx(r1_i2t, abs=0.05)
    assert float(cells[-3]) == pytest.approx(r1_i2t - r1_t2i, abs=0.1)  # the gap at R@1
    # the second table: mAP, P@1, P@5, P@10, nDCG@1, nDCG@5, nDCG@10 per direction
    head = next(i for i, line in enumerate(lines) if "mAP" in line and "nDCG@10" in line)
    assert lines[head - 1].count("text -> image") == 1 and lines[head - 1].index("text -> image") < lines[head - 1].index("image -> text")
    cells = [float(c) for c in lines[head + 2].replace("|", " ").split()[3:]]
    assert lines[head + 2].startswith("fp32, fast off") and len(cells) == 14
    for n, (prefix, offset) in enumerate((("image_retrieval", 0), ("text_retrieval", 7))):
        values = [expected[f"{prefix}_mAP"]] + [expected[f"{prefix}_{m}@{k}"] for m in ("precision", "ndcg")
                                                for k in (1, 5, 10)]
        assert cells[offset : offset + 7] == pytest.approx([100 * v for v in values], abs=0.051)
    assert expected["text_retrieval_mAP"] != expected["text_retrieval_mrr"]  # several captions per image

    result = fastclip("eval", "retrieval", karpathy, "--images", caption_set, "--split", "test",
                      "--model", tiny_openclip_export, "--report", tmp_path / "karpathy.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "karpathy.json").read_text())["metrics"] == expected


def test_eval_compares_configurations_and_reports_unreadable_images(tiny_openclip_export, caption_set, tmp_path):
    folder = tmp_path / "set"
    shutil.copytree(caption_set, folder)
    (folder / "coffee.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))  # 3 captions lose their image
    result = fastclip("eval", "retrieval", folder / "captions.csv", "--model", tiny_openclip_export)
    assert result.returncode == 1 and "coffee.jpg" in result.stderr and "--skip-errors" in result.stderr
    assert "Traceback" not in result.stderr

    result = fastclip("eval", "retrieval", folder / "captions.csv", "--model", tiny_openclip_export,
                      "--fast", "off,max", "--skip-errors", "--report", tmp_path / "r.json")
    assert result.returncode == 1, result.stderr  # something failed, the numbers are still there
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["failed_images"] == 1 and report["excluded_captions"] == 3
    assert report["images"] == 13 and report["captions"] == 36
    assert report["failed"][0]["image"].endswith("coffee.jpg")
    assert [c["fast"] for c in report["configurations"]] == ["off", "max"]
    assert result.stderr.count("embedding 39 captions") == 1  # texts once per precision, not per --fast
    # the first configuration is what the public API gives on the readable pairs
    data = load_captions(folder / "captions.csv").without_images({2})
    assert [Path(p).name for p in data.images].count("coffee.jpg") == 0
    first = retrieval_metrics(*embed_set(tiny_openclip_export, data), data.text_image_index)
    assert report["configurations"][0]["metrics"] == first
    second = report["configurations"][1]
    assert second["delta"] == {k: v - first[k] for k, v in second["metrics"].items()}
    assert "vs first" in result.stdout and "1 unreadable images left out with their 3 captions" in result.stdout
    assert result.stdout.count("  vs first") == 2  # a delta row in both tables


def test_eval_usage_errors(tiny_openclip_export, caption_set):
    result = fastclip("eval", "retrieval", caption_set / "captions.csv", "--model", tiny_openclip_export,
                      "--precision", "fp64")
    assert result.returncode == 2 and "--precision takes" in result.stderr
    bad = caption_set / "bad.csv"
    bad.write_text("picture,text\na.jpg,b\n")
    result = fastclip("eval", "retrieval", bad, "--model", tiny_openclip_export)
    assert result.returncode == 1 and "no 'image' or 'caption' column" in result.stderr


# ------------------------------------------------------------------------------------------- search

def write_embeddings(out: Path, model_folder: Path, kind: str, items: list[str], vectors: np.ndarray) -> Path:
    """An embeddings file as `fastclip embed` writes it (fastclip.sinks), recording the model and its fingerprint."""
    from fastclip.model import load_manifest
    from fastclip.sinks import EmbeddingsWriter, make_header

    spec = getattr(load_manifest(model_folder), "vision" if kind == "image" else "text")
    header = make_header(kind=kind, dim=vectors.shape[1], model=str(model_folder),
                         fingerprint=tower_fingerprint(model_folder, spec), precision="fp32",
                         options={"exif_transpose": True, "fast": False} if kind == "image" else {})
    with EmbeddingsWriter(out, header) as writer:
        writer.write(items, vectors)
        writer.finish()
    return out


@pytest.fixture(scope="module")
def embedded(tiny_openclip_export, caption_set, tmp_path_factory):
    data = load_captions(caption_set / "captions.csv")
    images, texts = embed_set(tiny_openclip_export, data)
    folder = tmp_path_factory.mktemp("embedded")
    return {
        "data": data, "images": images, "texts": texts,
        "image_file": write_embeddings(folder / "images.npy", tiny_openclip_export, "image", data.images, images),
        "text_file": write_embeddings(folder / "texts.jsonl", tiny_openclip_export, "text", data.captions, texts),
    }


def parse_results(stdout: str) -> list[tuple[int, float, str]]:
    rows = []
    for line in stdout.splitlines()[1:]:
        rank, score, item = line.split(maxsplit=2)
        rows.append((int(rank), float(score), item))
    return rows


def test_search_text_to_image_uses_the_files_model(tiny_openclip_export, embedded):
    query = "A close-up of a ginger cat"
    result = fastclip("search", embedded["image_file"], "--text", query, "-k", "4")
    assert result.returncode == 0, result.stderr
    vector = next(TextEmbedding(tiny_openclip_export).embed([query]))
    indices, scores = search(vector, embedded["images"], 4)
    rows = parse_results(result.stdout)
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert [r[2] for r in rows] == [embedded["data"].images[i] for i in indices]
    np.testing.assert_allclose([r[1] for r in rows], scores, atol=1e-4)
    assert result.stdout.splitlines()[0].startswith("text -> image: 14 images")


def test_search_image_to_text_and_image_to_image_html(tiny_openclip_export, embedded, caption_set, tmp_path):
    query = caption_set / "chelsea.jpg"
    result = fastclip("search", embedded["text_file"], "--image", query, "-k", "3")
    assert result.returncode == 0, result.stderr
    vector = next(ImageEmbedding(tiny_openclip_export).embed([query]))
    indices, _ = search(vector, embedded["texts"], 3)
    assert [r[2] for r in parse_results(result.stdout)] == [embedded["data"].captions[i] for i in indices]

    page = tmp_path / "results.html"
    result = fastclip("search", embedded["image_file"], "--image", query, "-k", "5", "--html", page)
    assert result.returncode == 0, result.stderr
    rows = parse_results(result.stdout)
    assert rows[0][2].endswith("chelsea.jpg") and rows[0][1] == pytest.approx(1.0, abs=1e-4)  # itself first

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.text, self.figures = [], [], 0

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            self.figures += tag == "figure"
            if tag == "img":
                self.images.append(a["src"])

        def handle_data(self, data):
            self.text.append(data)

    parsed = Page()
    parsed.feed(page.read_text())
    assert parsed.figures == 5 and len(parsed.images) == 6  # the query and the 5 results
    for src in parsed.images:
        assert src.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.format == "JPEG" and max(im.size) <= 256
    text = " ".join(parsed.text)
    for rank, score, item in rows:
        assert f"#{rank}" in text and f"{score:.4f}" in text and item in text
    assert "http" not in page.read_text().replace("http-equiv", "")  # nothing fetched from elsewhere


def test_search_refuses_another_models_vectors(tiny_openclip_export, tiny_hf_export, embedded):
    result = fastclip("search", embedded["image_file"], "--text", "a cat", "--model", tiny_hf_export)
    assert result.returncode == 1
    assert str(tiny_openclip_export) in result.stderr and str(tiny_hf_export) in result.stderr
    assert "fingerprint" in result.stderr and "Traceback" not in result.stderr


def test_output_made_in_one_folder_works_from_another(tiny_openclip_export, caption_set, tmp_path):
    """Relative PATHs and --model at embed time; search (with an HTML page) from an unrelated folder finds the
    model and every image. A model folder that moved is named as the file's record, not as a hub miss."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(caption_set, work / "pics")
    shutil.copytree(tiny_openclip_export, work / "models" / "m")
    elsewhere.mkdir()
    made = fastclip("embed", "pics", "--model", "models/m", "--out", "v.npy", cwd=work)
    assert made.returncode == 0, made.stderr
    page = elsewhere / "page.html"
    found = fastclip("search", work / "v.npy", "--text", "a cat", "-k", "3", "--html", page, cwd=elsewhere)
    assert found.returncode == 0, found.stderr
    assert all(Path(r[2]).is_absolute() and Path(r[2]).exists() for r in parse_results(found.stdout))
    assert "image not readable" not in page.read_text() and page.read_text().count("data:image/jpeg") == 3
    shutil.move(work / "models", tmp_path / "moved")
    lost = fastclip("search", work / "v.npy", "--text", "a cat", cwd=elsewhere)
    assert lost.returncode == 1 and "Traceback" not in lost.stderr
    assert f"records the model folder '{work / 'models' / 'm'}'" in lost.stderr and "hub could not" not in lost.stderr


@pytest.mark.parametrize("args", [("eval", "retrieval"), ("search",)])
def test_help(args):
    result = fastclip(*args, "--help")
    assert result.returncode == 0 and "usage: fastclip" in result.stdout


def test_search_prints_names_that_are_not_utf8_or_hold_newlines():
    from fastclip.cli.search import _printable

    name = b"photos/caf\xe9.jpg".decode("utf-8", "surrogateescape")  # as fastclip.sinks carries it
    assert _printable(name) == "photos/caf\\xe9.jpg"
    assert _printable("two\nlines") == "two\\nlines" and _printable("plain é") == "plain é"


def test_search_page_escapes_file_names_and_queries(tmp_path):
    """Names and queries are data, never markup: a file name or query holding HTML stays text on the page."""
    from fastclip.cli.search import write_html

    hostile = ['a"><script>alert(1).jpg', "b' onerror='alert(2).jpg", "c&amp;<img src=x>.jpg"]
    results = []
    for i, name in enumerate(hostile):
        Image.fromarray(photo_array("coffee")).save(tmp_path / name)
        results.append((str(tmp_path / name), 0.9 - i / 10))
    query = '</span><script>alert("q")</script> & <b>bold</b>'

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.text, self.alts = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.alts += [v for k, v in attrs if k == "alt"]

        def handle_data(self, data):
            self.text.append(data)

    for query_kind, q, kind, items in (("text", query, "image", results),
                                       ("text", query, "text", [(query, 1.0), (hostile[0], 0.5)])):
        page = tmp_path / f"{kind}.html"
        write_html(page, query_kind, q, kind, items, "<source>.npy", {"rows": 3, "model": "<m>", "precision": "fp32"})
        parsed = Page()
        parsed.feed(page.read_text(encoding="utf-8"))
        assert "script" not in parsed.tags and "b" not in parsed.tags, parsed.tags
        text = "".join(parsed.text)
        assert query in text and "<source>.npy" in text and "(model <m>" in text
        for item, _ in items:
            assert item in text  # shown literally, exactly as named
        if kind == "image":
            assert parsed.tags.count("img") == len(items) and parsed.alts == [item for item, _ in items]


def test_search_of_a_missing_file_is_a_usage_error(tmp_path):
    result = fastclip("search", tmp_path / "nothing.npy", "--text", "a cat")
    assert result.returncode == 2 and result.stderr.startswith("usage: fastclip search "), result.stderr
    assert result.stderr.splitlines()[-1] == f"fastclip search: error: {tmp_path / 'nothing.npy'}: no such file or folder"


def test_search_quiet_and_into_a_closed_pipe(tiny_openclip_export, embedded, tmp_path):
    from test_cli import run_into_closed_pipe

    page = tmp_path / "p.html"
    quiet = fastclip("search", embedded["image_file"], "--text", "a cat", "--html", page, "-q")
    assert quiet.returncode == 0 and quiet.stderr == "" and page.exists(), quiet.stderr  # no "page -> ..."
    gone = run_into_closed_pipe("search", embedded["image_file"], "--text", "a cat", "-k", "14", "-q")
    assert gone.returncode == 141 and gone.stderr == "", gone.stderr


def test_search_scores_of_either_sign_keep_the_items_in_one_column(tiny_openclip_export, tmp_path):
    """Rows made to score exactly 1, 0 and -1 against the query: the items start in the same column."""
    query = "a photo of a cat"
    q = next(TextEmbedding(tiny_openclip_export).embed([query]))
    other = np.random.default_rng(0).standard_normal(q.shape).astype(np.float32)
    other -= (other @ q) * q  # orthogonal to the query: cosine 0
    other /= np.linalg.norm(other)
    file = write_embeddings(tmp_path / "t.jsonl", tiny_openclip_export, "text", ["same", "unrelated", "opposite"],
                            np.stack([q, other, -q]))
    result = fastclip("search", file, "--text", query, "-k", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()[1:]
    assert [float(line.split()[1]) for line in lines] == pytest.approx([1, 0, -1], abs=1e-4)
    columns = {line.index(item) for line, item in zip(lines, ["same", "unrelated", "opposite"])}
    assert len(columns) == 1, lines


def test_search_page_shows_transparency_on_white(tiny_openclip_export, tmp_path):
    """An RGBA PNG whose left half is transparent (black under alpha 0, as most files store it) and right
    half opaque red: its thumbnail is white on the left, as a browser shows the PNG on a white page."""
    pixels = np.zeros((96, 96, 4), np.uint8)
    pixels[:, 48:] = (255, 0, 0, 255)
    png = tmp_path / "cutout.png"
    Image.fromarray(pixels, "RGBA").save(png)
    vector = next(ImageEmbedding(tiny_openclip_export).embed([png]))
    file = write_embeddings(tmp_path / "i.npy", tiny_openclip_export, "image", [str(png)], vector[None])
    page = tmp_path / "page.html"
    result = fastclip("search", file, "--image", png, "-k", "1", "--html", page)
    assert result.returncode == 0, result.stderr
    uris = [src for src in page.read_text().split('src="')[1:]]
    assert len(uris) == 2  # the query and its one result, the same file
    for uri in uris:
        data = base64.b64decode(uri.split('"', 1)[0].split(",", 1)[1])
        thumb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
        # 8 px from the edge between the halves: JPEG's 8x8 blocks smear colour only within a block or two
        left, right = thumb[:, :40], thumb[:, 56:]
        assert left.min() >= 240, left.min()  # white (JPEG rounding: a few levels)
        assert right[..., 0].min() >= 230 and right[..., 1:].max() <= 30, (right[..., 0].min(), right[..., 1:].max())
