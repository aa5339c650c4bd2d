"""Resize modes of open_clip's eval transform, on PIL images, pixel for pixel.

open_clip picks the resize by name (`PreprocessCfg.resize_mode`) and the filter by name
(`interpolation`); so does this module: `RESIZERS[mode](image, size, geometry, resample, fill)` with
`RESAMPLING[interpolation]`. Each resizer makes the same Pillow calls torchvision makes on a PIL image,
in the same order and on the image in its own mode (the RGB conversion comes after, in the caller):

* "shortest": `Resize(size)` + `CenterCrop(size)`: the short side -> size, the long side truncated with
  int() (torchvision's `_compute_resized_output_size`), crop offsets `int(round(excess / 2))` ("round"),
  or `excess // 2` ("floor": transformers' image processors and fastembed; `CROP_OFFSETS`).
* "squash":   `Resize((size, size))`: both sides -> size, aspect ratio not kept (SigLIP, PE-Core, CLIPA).
* "longest":  open_clip's `ResizeKeepRatio(size, longest=1)` + `CenterCropOrPad(size, fill)`: the long
  side -> size, each side `round(side / ratio)` (Python's round: half to even), then padded with
  `fill` to size x size: left/top get `excess // 2`, right/bottom the rest (`ImageOps.expand`).

torchvision skips the resize when the image already has the output size; so do we (Pillow's resize
would still resample it). Where the image becomes RGB is data too (`RGB_CONVERSIONS`): open_clip converts
after the crop, so the resize runs on the image in its own mode; transformers' processors convert first,
compositing transparency onto white. With `geometry` (a drafted JPEG, see `fastclip.images.decode`) the output
size comes from the original photo's size and only the box of the drafted image that is the photo is
resampled, in every mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from PIL import Image, ImageOps

__all__ = ["Geometry", "RESAMPLING", "RESIZERS", "CROP_OFFSETS", "RGB_CONVERSIONS", "MAX_RESIZED_PIXELS", "resize_crop",
           "resize_squash", "resize_pad", "rgb_on_white"]

# torchvision's pil_modes_mapping for the two filters open_clip's eval transform uses.
RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}

# The exact "shortest" path resizes the whole image, as torchvision does, then crops: its cost is the
# resized size, S * S * aspect ratio when the short side is scaled up. A 1 x 60000 PNG (320 bytes)
# becomes 224 x 13.4 M pixels there: 46 s and 12.3 GB. Past this many resized pixels, only the crop
# window is resampled (`_resize_window`). 2**22 pixels (16 MB as RGB, ~0.1 s) keeps the exact path for
# aspect ratios up to ~83:1 at 224 px (37:1 at 336 px), far beyond panoramas and banners, while
# bounding what any one image can cost in resampling. "squash" and "longest" output at most S x S.
MAX_RESIZED_PIXELS = 1 << 22

BICUBIC = Image.Resampling.BICUBIC


def _round_half(excess: int) -> int:
    """torchvision's center_crop: int(round(excess / 2.0)), Python's round (half to even)."""
    return int(round(excess / 2.0))


def _floor_half(excess: int) -> int:
    """transformers' center_crop (image_transforms.center_crop) and fastembed's: (orig - crop) // 2."""
    return excess // 2


# Where a center crop starts, by the manifest's vision.crop_offset. A 640x427 photo resized to 335x224 has
# 111 columns to drop: "round" starts at 56, "floor" at 55, one pixel column apart.
CROP_OFFSETS: dict[str, Callable[[int], int]] = {"round": _round_half, "floor": _floor_half}


def rgb_on_white(image: Image.Image) -> Image.Image:
    """transformers' convert_to_rgb (image_transforms, 5.x) on a PIL image: an image with an alpha band or a
    transparency entry is composited onto opaque white, anything else converted as Pillow does."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


# When the image becomes RGB, by the manifest's vision.convert_rgb: None = after the resize and crop, by
# the caller (open_clip's order); a function = applied to the decoded image before anything else.
RGB_CONVERSIONS: dict[str, Callable[[Image.Image], Image.Image] | None] = {
    "after_resize": None, "before_resize": rgb_on_white}


@dataclass(frozen=True)
class Geometry:
    """Where the original photo lies in a drafted image: `box` in drafted pixels, `full_size` its size."""

    box: tuple[float, float, float, float]
    full_size: tuple[int, int]

    def transposed(self, method: Image.Transpose, size: tuple[int, int]) -> "Geometry":
        """The same geometry after `image.transpose(method)` of an image of `size` (before transposing)."""
        W, H = size
        T = Image.Transpose
        point = {
            T.FLIP_LEFT_RIGHT: lambda x, y: (W - x, y),
            T.FLIP_TOP_BOTTOM: lambda x, y: (x, H - y),
            T.ROTATE_180: lambda x, y: (W - x, H - y),
            T.ROTATE_90: lambda x, y: (y, W - x),  # counter-clockwise
            T.ROTATE_270: lambda x, y: (H - y, x),
            T.TRANSPOSE: lambda x, y: (y, x),
            T.TRANSVERSE: lambda x, y: (H - y, W - x),
        }[method]
        x0, y0, x1, y1 = self.box
        (ax, ay), (bx, by) = point(x0, y0), point(x1, y1)
        swaps = method in (T.ROTATE_90, T.ROTATE_270, T.TRANSPOSE, T.TRANSVERSE)
        full = self.full_size[::-1] if swaps else self.full_size
        return Geometry(box=(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)), full_size=full)


def resize_crop(image: Image.Image, size: int, geometry: "Geometry | None" = None,
                resample: Image.Resampling = BICUBIC, fill: int = 0,
                offset: Callable[[int], int] = _round_half) -> Image.Image:
    """torchvision's Resize(size, resample) then CenterCrop(size) on a PIL image; mode unchanged."""
    w, h = geometry.full_size if geometry else image.size
    # torchvision._compute_resized_output_size: int() truncation of the long side, not round().
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    # torchvision.transforms.functional.center_crop (or transformers' floor); new_w, new_h >= size: no padding.
    top, left = offset(new_h - size), offset(new_w - size)
    if geometry is None and new_w * new_h > MAX_RESIZED_PIXELS:
        return _resize_window(image, (new_w, new_h), (left, top), size, resample)
    image = _resize(image, (new_w, new_h), geometry, resample)
    if (left, top, new_w, new_h) != (0, 0, size, size):
        image = image.crop((left, top, left + size, top + size))
    return image


# Pillow resizes horizontally first, over every source row the vertical pass reads: squashing a tall
# strip holds size x height pixels in between (1 x 89 M pixels, Pillow's own limit: 20 G pixels). Past
# this many, the two passes run in the other order (width x size in between, then size x size): the same
# filters, with the uint8 rounding between the passes in the other place. Measured against the exact
# order on photo and random-noise strips (9 x 5000, 40 x 9000; RGB, RGBA, L; bicubic and bilinear): no
# pixel differed. 2**25 (134 MB as RGB) keeps Pillow's own order for strips up to 150 K rows at 224 px.
MAX_SQUASH_INTERMEDIATE = 1 << 25


def resize_squash(image: Image.Image, size: int, geometry: "Geometry | None" = None,
                  resample: Image.Resampling = BICUBIC, fill: int = 0,
                  offset: Callable[[int], int] = _round_half) -> Image.Image:
    """torchvision's Resize((size, size), resample) on a PIL image; mode unchanged."""
    if geometry is None and size * image.height > MAX_SQUASH_INTERMEDIATE and image.size != (size, size):
        mode = image.mode
        if mode in _PREMULTIPLIED:  # as Image.resize does, once around both passes
            image = image.convert(_PREMULTIPLIED[mode])
        image = image.resize((image.width, size), resample).resize((size, size), resample)
        return image.convert(mode) if mode in _PREMULTIPLIED else image
    return _resize(image, (size, size), geometry, resample)


def resize_pad(image: Image.Image, size: int, geometry: "Geometry | None" = None,
               resample: Image.Resampling = BICUBIC, fill: int = 0,
               offset: Callable[[int], int] = _round_half) -> Image.Image:
    """open_clip's ResizeKeepRatio(size, longest=1) then CenterCropOrPad(size, fill); mode unchanged."""
    w, h = geometry.full_size if geometry else image.size
    # ResizeKeepRatio.get_params with longest=1 and no random factors, the same float operations:
    # ratio = max * 1.0 + min * 0.0, each side round(side * 1.0 / ratio).
    ratio_h, ratio_w = h / size, w / size
    ratio = max(ratio_h, ratio_w) * 1.0 + min(ratio_h, ratio_w) * (1.0 - 1.0)
    new_h, new_w = (round(x * 1.0 / ratio) for x in (h, w))
    if new_w < 1 or new_h < 1:
        # The reference hands Pillow a zero side and fails; say why instead.
        raise ValueError(f"a {w}x{h} image is too elongated to fit {size}x{size} keeping its aspect ratio")
    image = _resize(image, (new_w, new_h), geometry, resample)
    if new_w < size or new_h < size:
        pad_w, pad_h = max(size - new_w, 0), max(size - new_h, 0)
        image = _pad(image, (pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2), fill)
        new_w, new_h = image.size
    if (new_w, new_h) != (size, size):
        top, left = offset(new_h - size), offset(new_w - size)
        image = image.crop((left, top, left + size, top + size))
    return image


Resizer = Callable[..., Image.Image]
RESIZERS: dict[str, Resizer] = {"shortest": resize_crop, "squash": resize_squash, "longest": resize_pad}


def _resize(image: Image.Image, out: tuple[int, int], geometry: "Geometry | None",
            resample: Image.Resampling) -> Image.Image:
    if geometry is not None:
        return image.resize(out, resample, box=geometry.box)
    if out == image.size:  # torchvision's F.resize returns the image untouched
        return image
    return image.resize(out, resample)


def _pad(image: Image.Image, border: tuple[int, int, int, int], fill: int) -> Image.Image:
    """torchvision's F.pad(img, border, fill) on a PIL image (constant mode): `_parse_fill` then
    ImageOps.expand, with the palette put back on "P" images."""
    bands = len(image.getbands())
    color: int | float | tuple = fill
    if bands > 1:
        color = tuple([fill] * bands)
    if image.mode != "F":
        color = tuple(int(x) for x in color) if isinstance(color, tuple) else int(color)
    if image.mode == "P":
        palette = image.getpalette()
        out = ImageOps.expand(image, border=border, fill=color)
        out.putpalette(palette)
        return out
    return ImageOps.expand(image, border=border, fill=color)


_PREMULTIPLIED = {"LA": "La", "RGBA": "RGBa"}


def _resize_window(image: Image.Image, resized: tuple[int, int], offset: tuple[int, int], size: int,
                   resample: Image.Resampling = BICUBIC) -> Image.Image:
    """The size x size window at `offset` of `image.resize(resized, resample)`, resampling only that window.

    Pillow's resize is separable: a horizontal pass over the source rows the vertical pass needs, then
    a vertical pass (that order whenever the short side is scaled up, the only case that reaches here:
    a short side >= size means the resized image is no larger than the decoded one). Each output pixel
    reads at most 2 * max(1, scale) + 1 source pixels either side of its centre (bicubic; bilinear
    reads half as far, so the same margin covers it). So: crop the source to the rows and columns the
    window reads (integer crop, exact), then run the two passes as two 1-D resizes with a box that maps
    exactly the window, in the same order as the full resize. Cost: the window plus the filter
    support, whatever the aspect ratio (1 x 60000: 12.3 GB -> a few MB).

    Pixels: the horizontal pass of a narrow image (box = the full width) is the full resize's own; the
    pass along the long side gets its box as float32 (Pillow's C API), which moves filter centres by
    ~1e-7 px and can flip the last bit of a fixed-point weight: at most 1 uint8 level on rare pixels
    (measured in tests/test_hostile.py). "P" and "1" images are resized with NEAREST by Pillow (and by
    the reference); there the box decides which source pixel is picked at exact ties.
    """
    w, h = image.size
    new_w, new_h = resized
    left, top = offset
    sx, sy = w / new_w, h / new_h
    bx0, bx1 = left * sx, (left + size) * sx
    by0, by1 = top * sy, (top + size) * sy
    mx, my = 2 * max(sx, 1.0) + 2, 2 * max(sy, 1.0) + 2  # bicubic support (2 output px) + rounding
    x0, x1 = max(0, math.floor(bx0 - mx)), min(w, math.ceil(bx1 + mx))
    y0, y1 = max(0, math.floor(by0 - my)), min(h, math.ceil(by1 + my))
    region = image.crop((x0, y0, x1, y1))
    box = (bx0 - x0, by0 - y0, bx1 - x0, by1 - y0)
    if image.mode in ("P", "1"):
        return region.resize((size, size), Image.Resampling.NEAREST, box=box)
    mode = image.mode
    if mode in _PREMULTIPLIED:  # as Image.resize does, once around both passes
        region = region.convert(_PREMULTIPLIED[mode])
    rows = region.height
    # One pass each: the other axis has its full extent and size, so Pillow skips it.
    region = region.resize((size, rows), resample, box=(box[0], 0, box[2], rows))
    region = region.resize((size, size), resample, box=(0, box[1], size, box[3]))
    return region.convert(mode) if mode in _PREMULTIPLIED else region


# PIL's resampling codes, as transformers' image-processor configs record them.
PIL_RESAMPLE = {"bilinear": 2, "bicubic": 3}


def from_processor_config(cfg: dict, default_size: int = 224) -> dict:
    """The manifest's vision settings from a transformers preprocessor_config.json, or ValueError.

    CLIPImageProcessor: shortest edge + center crop of the same size -> "shortest". A plain
    {"height": S, "width": S} resize with no crop (SiglipImageProcessor, which has no crop at all)
    -> "squash": center-cropping such a model, as some runtimes do, cuts off what it was trained to see.
    `resample` 2 / 3 -> bilinear / bicubic. Anything else is refused rather than approximated.
    """
    resize = cfg.get("size", default_size)
    shortest = resize.get("shortest_edge") if isinstance(resize, dict) else resize
    crop = cfg.get("crop_size", shortest)
    crop_h, crop_w = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (crop, crop)
    filters = {code: name for name, code in PIL_RESAMPLE.items()}
    interpolation = filters.get(cfg.get("resample", 3))
    if isinstance(resize, dict) and "height" in resize and not cfg.get("do_center_crop", False):
        mode, size = "squash", resize["height"] if resize["height"] == resize.get("width") else None
    elif cfg.get("do_center_crop", True) and shortest is not None and shortest == crop_h == crop_w:
        mode, size = "shortest", shortest
    else:
        mode, size = None, None
    if not cfg.get("do_resize", True) or interpolation is None or mode is None or not isinstance(size, int):
        raise ValueError(
            f"preprocessing is neither a shortest-side resize + center crop nor a plain square resize, bicubic or "
            f"bilinear (resample={cfg.get('resample')}, size={cfg.get('size')}, crop_size={cfg.get('crop_size')}, "
            f"do_center_crop={cfg.get('do_center_crop')})")
    return {"image_size": size, "resize_mode": mode, "interpolation": interpolation}
