"""fastclip.images against open_clip's own eval transform, pixel by pixel, on real photos.

open_clip (and torch) are the reference here only; fastclip.images itself never imports them.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastclip.errors import ImageError
from fastclip.images import ImagePreprocessor, load_image, normalize_lut, preprocess, resize_crop
from fastclip.manifest import ImageSpec

skimage_data = pytest.importorskip("skimage.data")

SPEC = ImageSpec(input_name="pixel_values", output_name="image_embeds", files={})  # ViT-B-32: 224, OpenAI mean/std
TOL = 1e-5  # on the normalized tensor; one uint8 step is 1/255/std ~ 0.015, so this means "same pixels"
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "hubble_deep_field", "camera"]
SIZES = [None, (1000, 300), (301, 999), (225, 224), (224, 224), (50, 40)]  # None: the photo's own size
MODES = ["RGB", "L", "LA", "P", "P+transparency", "RGBA", "CMYK", "I;16", "1"]


@pytest.fixture(scope="module")
def reference():
    from fastclip_export.torchvision_compat import import_open_clip

    import_open_clip()  # the CPU-torch torchvision workaround, before open_clip.transform
    from open_clip.transform import image_transform

    # What open_clip.create_model_and_transforms("ViT-B-32") builds for eval (preprocess_val).
    t = image_transform(224, is_train=False, mean=SPEC.mean, std=SPEC.std, resize_mode="shortest",
                        interpolation="bicubic")
    return lambda img: t(img).numpy()


@pytest.fixture(scope="module")
def photos():
    return {name: Image.fromarray(getattr(skimage_data, name)()) for name in PHOTOS}


def _with_alpha(rgb: Image.Image, mode: str) -> Image.Image:
    """RGBA / LA with a real, varying alpha, so Pillow's premultiplied resize path is exercised."""
    w, h = rgb.size
    alpha = Image.fromarray(((np.add.outer(np.arange(h), np.arange(w)) * 255) // max(w + h - 2, 1)).astype(np.uint8))
    base = rgb.convert("RGB" if mode == "RGBA" else "L")
    base.putalpha(alpha)
    return base


def make_mode(img: Image.Image, mode: str) -> Image.Image:
    if mode in ("RGBA", "LA"):
        return _with_alpha(img, mode)
    if mode == "P+transparency":
        p = img.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        p.info["transparency"] = 3
        return p
    if mode == "P":
        return img.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    if mode == "I;16":
        # A genuine 16-bit image (e.g. a 16-bit PNG), full 0..65535 range.
        gray = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        im = Image.fromarray(gray)
        assert im.mode == "I;16"
        return im
    return img.convert(mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("photo", PHOTOS)
def test_pixels_match_open_clip(reference, photos, photo, mode):
    base = photos[photo]
    for size in SIZES:
        img = base if size is None else base.resize(size, Image.Resampling.BILINEAR)
        img = make_mode(img, mode)
        ref = reference(img)
        ours = preprocess(img, SPEC)
        assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
        diff = float(np.abs(ours - ref).max())
        assert diff <= TOL, f"{photo} {img.size} {mode}: max abs diff {diff}"


def test_sixteen_bit_follows_reference_saturation(reference, photos):
    # open_clip converts I;16 to RGB with Pillow, which clips values to 0..255: a 16-bit photo comes out
    # nearly white. We match the reference (the model was evaluated that way); callers who want the full
    # range should scale to 8 bits themselves before embedding.
    img = make_mode(photos["camera"], "I;16")
    ours = preprocess(img, SPEC)
    np.testing.assert_allclose(ours, reference(img), atol=TOL)
    assert ours.mean() > 1.5  # mostly saturated


def test_premultiplied_la_mode_where_reference_fails(reference, photos):
    # Pillow cannot convert "La" (premultiplied LA) to RGB, so open_clip's transform raises on it. We
    # convert through RGBA (un-premultiplying), giving the same picture as the equivalent "LA" image up
    # to the rounding of premultiplication.
    la = _with_alpha(photos["camera"], "LA")
    pla = la.convert("La")
    with pytest.raises(ValueError):
        reference(pla)
    ours = preprocess(pla, SPEC)
    assert np.isfinite(ours).all()
    step = 1 / 255 / min(SPEC.std)
    # Where alpha is tiny, premultiplying destroys the gray value; compare where alpha >= 64.
    alpha = np.asarray(resize_crop(la, 224).getchannel("A"))
    diff = np.abs(ours - reference(la))[:, alpha >= 64]
    assert diff.max() <= 3 * step


def test_lut_is_torch_arithmetic():
    torch = pytest.importorskip("torch")
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 256).expand(3, 1, 256).float().div(255)
    mean = torch.tensor(SPEC.mean).view(3, 1, 1)
    std = torch.tensor(SPEC.std).view(3, 1, 1)
    expected = ((x - mean) / std).reshape(3, 256).numpy()
    assert np.array_equal(normalize_lut(SPEC.mean, SPEC.std), expected)


def test_preprocess_fills_out(photos):
    out = np.zeros((2, 3, 224, 224), dtype=np.float32)
    r = preprocess(photos["coffee"], SPEC, out=out[1])
    assert r is not None and np.shares_memory(r, out)
    np.testing.assert_array_equal(out[1], preprocess(photos["coffee"], SPEC))
    assert not out[0].any()


# --------------------------------------------------------------------------- input types


@pytest.fixture(scope="module")
def files(tmp_path_factory, photos):
    d = tmp_path_factory.mktemp("images")
    chelsea = photos["chelsea"]
    chelsea.save(d / "chelsea.jpg", quality=92)
    chelsea.save(d / "chelsea.png")
    photos["camera"].save(d / "camera.png")
    _with_alpha(chelsea, "RGBA").save(d / "rgba.png")
    return d


@pytest.mark.parametrize("name", ["chelsea.jpg", "chelsea.png", "camera.png", "rgba.png"])
def test_all_input_types_agree(reference, files, name):
    path = files / name
    pre = ImagePreprocessor(SPEC)
    with Image.open(path) as im:
        im.load()
        expected = reference(im)
        arr = np.asarray(im)
    raw = path.read_bytes()
    with open(path, "rb") as fh:
        from_file = pre(fh, 0)
        assert not fh.closed  # a caller's file object is the caller's to close
    pil = Image.open(path)
    inputs = {
        "str": pre(str(path), 0),
        "Path": pre(Path(path), 0),
        "bytes": pre(raw, 0),
        "bytearray": pre(bytearray(raw), 0),
        "memoryview": pre(memoryview(raw), 0),
        "BytesIO": pre(io.BytesIO(raw), 0),
        "file": from_file,
        "PIL (lazy)": pre(pil, 0),
        "numpy": pre(arr, 0),
    }
    for kind, got in inputs.items():
        assert np.abs(got - expected).max() <= TOL, kind


def test_numpy_layouts(reference, photos):
    rgb = np.asarray(photos["astronaut"])
    gray = np.asarray(photos["camera"])
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    pre = ImagePreprocessor(SPEC)
    np.testing.assert_allclose(pre(rgb, 0), reference(Image.fromarray(rgb)), atol=TOL)
    np.testing.assert_allclose(pre(gray, 0), reference(Image.fromarray(gray)), atol=TOL)
    np.testing.assert_allclose(pre(rgba, 0), pre(rgb, 0), atol=TOL)
    np.testing.assert_allclose(pre(rgb[:, ::-1], 0), reference(Image.fromarray(np.ascontiguousarray(rgb[:, ::-1]))),
                               atol=TOL)  # non-contiguous view
    with pytest.raises(ImageError, match=r"#5.*uint8"):
        pre(rgb.astype(np.float32) / 255, 5)
    with pytest.raises(ImageError, match=r"#6"):
        pre(np.zeros((4, 4, 2), np.uint8), 6)


def test_writing_into_a_batch_row_matches_single(files, photos):
    """The runner writes each image straight into its row of the batch array (out=): same pixels."""
    pre = ImagePreprocessor(SPEC)
    items = [files / "chelsea.jpg", photos["rocket"], np.asarray(photos["camera"])]
    batch = np.full((3, 3, 224, 224), np.nan, dtype=np.float32)
    for i, item in enumerate(items):
        pre(item, i, out=batch[i])
    for i, item in enumerate(items):
        np.testing.assert_array_equal(batch[i], pre(item, i))


def test_path_input_does_not_keep_file_open(files):
    import os

    fd_dir = Path("/proc/self/fd")
    if not fd_dir.exists():
        pytest.skip("needs /proc")
    before = len(os.listdir(fd_dir))
    imgs = [load_image(files / "chelsea.jpg", i) for i in range(20)]
    assert len(os.listdir(fd_dir)) <= before + 1
    assert imgs[0].size == (451, 300)


# --------------------------------------------------------------------------- EXIF


@pytest.fixture(scope="module")
def rotated_jpeg(tmp_path_factory, photos):
    path = tmp_path_factory.mktemp("exif") / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": stored landscape, shown portrait
    photos["chelsea"].save(path, quality=95, exif=exif.tobytes())
    return path


def test_exif_orientation_applied_by_default(rotated_jpeg):
    upright = load_image(rotated_jpeg, 0)
    raw = load_image(rotated_jpeg, 0, exif_transpose=False)
    assert raw.size == (451, 300)
    assert upright.size == (300, 451)
    np.testing.assert_array_equal(np.asarray(upright), np.asarray(raw.transpose(Image.Transpose.ROTATE_270)))


def test_exif_ignored_on_request_matches_reference(reference, rotated_jpeg):
    with Image.open(rotated_jpeg) as im:
        expected = reference(im)  # open_clip ignores EXIF
    got = ImagePreprocessor(SPEC, exif_transpose=False)(rotated_jpeg, 0)
    np.testing.assert_allclose(got, expected, atol=TOL)
    assert np.abs(ImagePreprocessor(SPEC)(rotated_jpeg, 0) - expected).max() > 0.1


def test_exif_on_caller_pil_image_is_not_modified(rotated_jpeg):
    with Image.open(rotated_jpeg) as im:
        im.load()
        out = load_image(im, 0)
        assert im.size == (451, 300) and out.size == (300, 451)
        assert im.getexif().get(0x0112) == 6


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match=r"#7") as ei:
        load_image(missing, 7)
    assert str(missing) in str(ei.value) and "not found" in str(ei.value)
    assert ei.value.index == 7 and ei.value.source == str(missing)


def test_corrupt_file(tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match=r"#2") as ei:
        load_image(bad, 2)
    assert str(bad) in str(ei.value)
    with pytest.raises(ImageError, match=r"#3 \(<bytes>\)"):
        load_image(bad.read_bytes(), 3)


def test_truncated_jpeg(tmp_path, files):
    raw = (files / "chelsea.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageError, match=r"#4.*truncated") as ei:
        load_image(cut, 4)
    assert str(cut) in str(ei.value)
    with pytest.raises(ImageError, match=r"#4"):
        ImagePreprocessor(SPEC)(cut, 4)
    with open(cut, "rb") as fh:
        with pytest.raises(ImageError, match=r"cut\.jpg"):
            load_image(fh, 4)  # a file object's name is shown
        assert not fh.closed  # and the caller's file stays theirs
    with pytest.raises(ImageError, match=r"<PIL.Image>|cut\.jpg"):
        load_image(Image.open(io.BytesIO(cut.read_bytes())), 4)  # lazily opened PIL image fails here too


def test_directory_is_an_error(tmp_path):
    with pytest.raises(ImageError, match=r"#0"):
        load_image(tmp_path, 0)


@pytest.mark.parametrize("item", [None, 42, 3.5, ["a.jpg"], {"path": "a.jpg"}])
def test_wrong_types_name_the_index(item):
    with pytest.raises(TypeError, match=rf"#9.*{type(item).__qualname__}"):
        load_image(item, 9)
    with pytest.raises(TypeError, match=r"#9"):
        ImagePreprocessor(SPEC)(item, 9)


def test_decompression_bomb(monkeypatch, files):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # chelsea has 135 300 pixels: > 2x the limit
    with pytest.raises(ImageError, match=r"#1.*decompression bomb.*MAX_IMAGE_PIXELS") as ei:
        load_image(files / "chelsea.png", 1)
    assert str(files / "chelsea.png") in str(ei.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns at open; we refuse
def test_decompression_bomb_warning_zone_is_refused(monkeypatch, files):
    # Between the limit and twice the limit Pillow only warns and decodes (up to 716 MB for RGB at the
    # default limit); fastclip holds the limit itself, so one image stays within its memory budget.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # chelsea: 135 300 pixels, < 2x the limit
    with pytest.raises(ImageError, match=r"#0.*decompression bomb.*135300 pixels.*MAX_IMAGE_PIXELS"):
        load_image(files / "chelsea.jpg", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # same error, warnings as errors
        with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS"):
            load_image(files / "chelsea.jpg", 0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 135_300)  # at the limit: fine
    assert load_image(files / "chelsea.jpg", 0).size == (451, 300)


# --------------------------------------------------------------------------- draft (fast) mode


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory, photos):
    # Odd sides on purpose: libjpeg rounds 1803 / 2 up to 902, so the drafted image is half a pixel larger
    # than the photo and fast mode must resample a box inside it. (An even 1804 x 1200 drafts to exactly
    # 902 x 600: the box is the whole image and a resize that ignores it passes every bound below.)
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    photos["chelsea"].resize((1803, 1201), Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def test_draft_decodes_smaller_but_not_below_min(big_jpeg):
    from fastclip.images import decode

    full = load_image(big_jpeg, 0)
    small = load_image(big_jpeg, 0, draft=True, draft_min_size=448)
    assert full.size == (1803, 1201)
    assert small.size == (902, 601)  # rounded up: 1803 / 2 = 901.5
    assert decode(big_jpeg, 0, draft_min_size=448)[1].box == (0, 0, 901.5, 600.5)  # the photo inside it
    assert load_image(big_jpeg, 0, draft=True, draft_min_size=1000).size == full.size  # no scale keeps >= 1000


def test_draft_changes_pixels_slightly(big_jpeg):
    """Measured on this photo: mean |diff| 0.00291, max 0.0300 (two uint8 steps), 1 - cosine 7.1e-5. The
    bounds are 1.5x those (2x for the cosine); resampling the whole drafted image instead of the photo's
    box gives mean 0.0161, max 0.219, over 5x."""
    exact = ImagePreprocessor(SPEC)(big_jpeg, 0)
    fast = ImagePreprocessor(SPEC, fast=True)(big_jpeg, 0)
    assert fast.shape == exact.shape == (3, 224, 224) and fast.dtype == np.float32
    diff = np.abs(fast - exact)
    assert 0 < diff.mean() <= 0.0044 and diff.max() <= 0.045, (diff.mean(), diff.max())
    cos = float((fast * exact).sum() / np.linalg.norm(fast) / np.linalg.norm(exact))
    assert 1 - cos <= 1.4e-4, cos


@pytest.fixture(scope="module")
def sharp_odd_jpeg(photos):
    """Odd-sized (1803x1201) photo with hard-edged bars: libjpeg's reduced decoding rounds 1803/2 up."""
    from PIL import ImageDraw

    img = photos["camera"].convert("RGB").resize((1803, 1201), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for x in range(0, 1800, 97):
        draw.rectangle([x, 100, x + 40, 1100], fill=(255, 255, 255) if x % 2 else (0, 0, 0))
    return img


@pytest.mark.parametrize("orientation", range(1, 9))
def test_draft_keeps_geometry_under_every_exif_orientation(sharp_odd_jpeg, orientation):
    """Fast mode resamples only the box of the drafted image that is the photo, after EXIF transposition.

    Measured: max abs diff 0.075 in every orientation; resizing the whole drafted image instead (it is a
    fraction of a pixel too large) gave 0.51, a visible shift on edges.
    """
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    sharp_odd_jpeg.save(buf, "JPEG", quality=92, exif=exif)
    exact = ImagePreprocessor(SPEC)(buf.getvalue(), 0)
    fast = ImagePreprocessor(SPEC, fast=True)(buf.getvalue(), 0)
    assert np.abs(fast - exact).max() < 0.15


def test_fast_max_drafts_down_to_the_crop(big_jpeg):
    """fast="max" keeps the shortest side >= the crop (1201 -> 301 at 1/4), fast=True >= 2x (601 at 1/2).
    Measured max |diff| to exact: 0.0300 (True), 0.0853 ("max"); bounds 1.5x."""
    from fastclip.images import decode

    assert min(decode(big_jpeg, 0, draft_min_size=224)[0].size) == 301
    assert min(decode(big_jpeg, 0, draft_min_size=448)[0].size) == 601
    exact = ImagePreprocessor(SPEC)(big_jpeg, 0)
    for fast, bound in ((True, 0.045), ("max", 0.128)):
        assert np.abs(ImagePreprocessor(SPEC, fast=fast)(big_jpeg, 0) - exact).max() <= bound, fast
    with pytest.raises(ValueError, match="fast must be"):
        ImagePreprocessor(SPEC, fast="fastest")


def test_draft_only_applies_to_jpeg(files):
    for name in ("chelsea.png", "camera.png"):
        path = files / name
        np.testing.assert_array_equal(ImagePreprocessor(SPEC, fast=True)(path, 0), ImagePreprocessor(SPEC)(path, 0))
    with Image.open(files / "chelsea.jpg") as im:  # a caller's PIL image is never re-decoded
        np.testing.assert_array_equal(ImagePreprocessor(SPEC, fast=True)(im, 0), ImagePreprocessor(SPEC)(im, 0))


# --------------------------------------------------------------------------- transformers, for the record


def test_transformers_processors_gap(reference, photos, capsys):
    """Not a parity requirement: pins how far transformers' CLIP processors are from open_clip (README).

    Both resize the same way, but transformers' center crop floors the offset ((w - 224) // 2) where
    torchvision rounds it (half to even). When the excess is odd - rocket, 640x427 -> 335x224, 111
    extra columns - the crop is one pixel apart: differences up to ~2 on the normalized scale. The
    torchvision backend also resamples tensors instead of PIL images: one uint8 step (~0.015) off.
    """
    transformers = pytest.importorskip("transformers")
    fixture = Path(__file__).parent / "fixtures" / "clip-tokenizer"
    processors = {"CLIPImageProcessor": transformers.CLIPImageProcessor.from_pretrained(fixture)}
    if hasattr(transformers, "CLIPImageProcessorPil"):
        processors["CLIPImageProcessorPil"] = transformers.CLIPImageProcessorPil.from_pretrained(fixture)
    lines, gaps = [], {}
    for name, img in photos.items():
        ref = reference(img)
        for pname, proc in processors.items():
            got = np.asarray(proc(images=img, return_tensors="np")["pixel_values"][0])
            gaps[name, pname] = gap = float(np.abs(got - ref).max())
            lines.append(f"{name:22} {pname:22} {gap:.4f}")
    with capsys.disabled():
        print("\nmax abs diff vs open_clip:\n" + "\n".join(lines))
    # The figures README states (transformers 5.23): one uint8 step, 1/255/std = 0.0150 on the blue
    # channel, for the tensor backend; 0.0 for the PIL one; 2.13 on rocket for both (the crop offset).
    version = transformers.__version__
    step = 1 / 255 / min(SPEC.std)
    for (name, pname), gap in gaps.items():
        if name == "rocket":
            assert gap == pytest.approx(2.133, abs=1e-3), (name, pname, gap, version)
        elif pname == "CLIPImageProcessorPil":
            assert gap <= 1e-6, (name, pname, gap, version)
        else:
            assert gap == pytest.approx(step, abs=1e-4), (name, pname, gap, version)
    assert "CLIPImageProcessorPil" in processors, version


# The EXIF specification's eight orientations, as the transposition that shows the stored pixels upright.
UPRIGHT = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
           7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_shown_upright(reference, photos, tmp_path, orientation):
    """Not only 6: each orientation gives the upright picture, and its pixels are open_clip's transform of
    that upright picture."""
    path = tmp_path / f"o{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    photos["chelsea"].save(path, quality=95, exif=exif.tobytes())
    raw = load_image(path, 0, exif_transpose=False)
    upright = load_image(path, 0)
    want = raw if UPRIGHT[orientation] is None else raw.transpose(UPRIGHT[orientation])
    assert upright.size == ((300, 451) if orientation >= 5 else (451, 300))
    np.testing.assert_array_equal(np.asarray(upright), np.asarray(want))
    np.testing.assert_allclose(ImagePreprocessor(SPEC)(path, 0), reference(want), atol=TOL)
