"""Image decoding and CLIP preprocessing without torch: the exact pixels of open_clip's eval transform.

open_clip's eval transform (``open_clip.transform.image_transform(size, is_train=False)``, resize mode
"shortest") is, on a PIL image::

    Resize(size, bicubic)  ->  CenterCrop(size)  ->  convert("RGB")  ->  ToTensor  ->  Normalize(mean, std)

Other tags resize another way ("squash", "longest") or with another filter ("bilinear"); the manifest
names both and `fastclip.families.resize` holds one resizer per name, each exact in the same way.

torchvision implements Resize and CenterCrop on PIL images with Pillow's own ``resize`` and ``crop``, so
the way to be exact is to make the same Pillow calls with the same arguments, in the same order:

* the output size is computed as torchvision does (shortest side -> ``size``, longest side truncated with
  ``int()``, not rounded), and an image already at that size is not resampled at all;
* ``resize`` runs on the image in its *original* mode. Pillow resizes "P" and "1" images with NEAREST
  whatever is asked, and premultiplies alpha for "LA"/"RGBA", so converting to RGB first would change
  the pixels; the reference converts only after the crop, and so do we;
* the crop offsets are ``int(round((side - size) / 2))`` (Python's round: half to even);
* ToTensor + Normalize are float32 ``(x / 255 - mean) / std``. A uint8 pixel has only 256 values, so we
  evaluate that expression once per channel into a lookup table with the same float32 operations, and
  preprocessing a pixel is a table lookup: bit-identical to torch and faster than arithmetic on the array.
"""

from __future__ import annotations

import io
import os
import stat
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError, ImageTypeError, first_line
from .families.resize import CROP_OFFSETS, MAX_RESIZED_PIXELS, RESAMPLING, RESIZERS, RGB_CONVERSIONS, Geometry, resize_crop
from .manifest import ImageSpec

__all__ = [
    "load_image", "decode", "Geometry", "preprocess", "resize_crop", "normalize_lut", "ImagePreprocessor", "image_error",
    "MAX_RESIZED_PIXELS",
]

_ORIENTATION = 0x0112  # EXIF tag
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO (multi-picture JPEG from cameras) decodes through the JPEG plugin


def _describe(item: Any) -> str:
    """The `source` shown in errors: a path where there is one, else what kind of input it was."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(item, Image.Image):
        return getattr(item, "filename", None) or "<PIL.Image>"
    if isinstance(item, np.ndarray):
        return "<numpy array>"
    name = getattr(item, "name", None)  # open(...) file objects know their path
    return name if isinstance(name, str) else "<file object>"


def _open(item: Any, index: int) -> tuple[Image.Image, bool, Any]:
    """Return (image, owned, file we opened or None). `owned` is False for a caller's PIL image, which
    we must not modify."""
    if isinstance(item, Image.Image):
        return item, False, None
    if isinstance(item, np.ndarray):
        return _from_array(item, index), True, None
    if isinstance(item, (str, os.PathLike)):
        f = _open_regular_file(item, index)
        try:
            return Image.open(f), True, f
        except BaseException:
            f.close()
            raise
    if isinstance(item, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(item)), True, None
    if hasattr(item, "read"):
        return Image.open(item), True, None
    raise ImageTypeError(
        index,
        f"<{type(item).__module__}.{type(item).__qualname__}>",
        "expected a path, bytes, a binary file object, a PIL.Image or a numpy array; "
        f"got {type(item).__module__}.{type(item).__qualname__}",
    )


_FILE_KINDS = {stat.S_ISFIFO: "FIFO", stat.S_ISCHR: "character device", stat.S_ISBLK: "block device",
               stat.S_ISSOCK: "socket"}


def _open_regular_file(path: Any, index: int):
    """A binary file object for a path that is a regular file, never blocking on anything else.

    open() on a FIFO blocks until a writer appears (forever, for a stray named pipe in a photo folder),
    and /dev/zero or /dev/urandom never end. O_NONBLOCK makes the open itself return at once whatever
    the path is; fstat on the descriptor we hold (not a stat of the path before opening, which a swap
    could defeat) then says what it is. On a regular file O_NONBLOCK changes nothing.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(path)
            kind = next((name for test, name in _FILE_KINDS.items() if test(mode)), "special file")
            raise ImageError(index, os.fspath(path), f"not a regular file ({kind}); only image files are read")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _from_array(arr: np.ndarray, index: int) -> Image.Image:
    ok_shape = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))
    if arr.dtype != np.uint8 or not ok_shape or 0 in arr.shape:
        # A float array in [0, 1] is the usual mistake; guessing its scale would silently change vectors.
        raise ImageError(
            index,
            "<numpy array>",
            f"expected a uint8 array of shape HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA); "
            f"got {arr.dtype} {arr.shape}",
        )
    return Image.fromarray(arr)  # mode L / RGB / RGBA from the shape


def image_error(index: int, source: str, exc: BaseException) -> ImageError:
    """The one translation of any failure while reading one input into that input's ImageError.

    Pillow's plugins raise whatever their parser trips on (OSError, ValueError, SyntaxError, EOFError,
    struct.error, IndexError, ZeroDivisionError... found by fuzzing), and a large allocation can raise
    MemoryError: none of those may escape errors="skip" and end a stream, so anything unexpected is
    the input's error too, with its exception type named.
    """
    if isinstance(exc, ImageError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return ImageError(index, source, "file not found")
    if isinstance(exc, IsADirectoryError):
        return ImageError(index, source, "is a directory, not an image file")
    if isinstance(exc, UnidentifiedImageError):
        return ImageError(index, source, "not a recognised image format (or the file is corrupt)")
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        # The warning arrives here only when warnings are turned into errors; treat it the same way.
        return ImageError(index, source, _bomb_reason(str(exc)))
    if isinstance(exc, MemoryError):
        return ImageError(index, source, "out of memory while decoding (MemoryError)")
    reason = first_line(exc, "")
    if isinstance(exc, (OSError, ValueError, SyntaxError, EOFError)):
        # Pillow reports truncated/corrupt data as OSError, and some plugins as ValueError/SyntaxError.
        reason = reason or type(exc).__name__
        if "truncated" in reason and not ImageFile.LOAD_TRUNCATED_IMAGES:
            reason += " (set PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True to accept truncated files)"
        return ImageError(index, source, f"cannot decode: {reason}")
    return ImageError(index, source, f"cannot decode ({type(exc).__name__}{': ' + reason if reason else ''})")


def _bomb_reason(detail: str) -> str:
    return (
        f"refused as a possible decompression bomb ({detail}). If the image is trusted, raise the "
        f"limit: PIL.Image.MAX_IMAGE_PIXELS = <pixels> (or None to disable the check)"
    )


def _check_pixels(img: Image.Image) -> None:
    """Refuse images over Pillow's MAX_IMAGE_PIXELS before decoding, where Pillow itself only warns.

    Pillow raises above twice its limit and only warns between 1x and 2x (89.5 M to 179 M pixels by
    default): a 179 M pixel RGB image decodes to 716 MB. Holding the limit itself keeps one decoded
    image at <= 358 MB (4 bytes per pixel, Pillow's RGB layout), inside the ~500 MB budget per input.
    The user moves both checks with the same setting.
    """
    limit = Image.MAX_IMAGE_PIXELS
    w, h = img.size
    if limit and w * h > limit:
        raise Image.DecompressionBombError(
            f"{w}x{h} = {w * h} pixels exceeds PIL.Image.MAX_IMAGE_PIXELS = {limit}"
        )


def load_image(
    item: Any,
    index: int,
    *,
    exif_transpose: bool = True,
    draft: bool = False,
    draft_min_size: int | None = None,
) -> Image.Image:
    """Decode one image fully (so errors surface here) and return it in its own mode.

    The mode is kept (no RGB conversion) because the reference converts after resizing; see module doc.
    `exif_transpose` turns the photo upright as a person sees it; False matches pipelines that ignore EXIF
    (open_clip's, transformers') bit for bit. `draft` lets libjpeg decode at 1/2, 1/4 or 1/8 scale while
    the shortest side stays >= `draft_min_size`: much faster on large JPEGs, vectors change slightly.
    Non-JPEG inputs are unaffected by `draft`. (A drafted image is slightly larger than 1/k of the
    original: see `decode` for the geometry that keeps it aligned.)
    """
    return decode(item, index, exif_transpose=exif_transpose, draft_min_size=draft_min_size if draft else None)[0]


def decode(
    item: Any, index: int, *, exif_transpose: bool = True, draft_min_size: int | None = None
) -> tuple[Image.Image, "Geometry | None"]:
    """(image, geometry): geometry is None unless the JPEG was decoded at reduced size (draft).

    libjpeg's reduced decoding rounds the size up (a 1733-wide photo at 1/2 is 867 wide), so the drafted
    image covers a little more than the photo. Resizing it as a whole would shift and stretch the result
    by up to a source pixel, which moved vectors by cosine ~5e-4 on sharp edges; resizing only the box
    that corresponds to the original photo, at the original photo's output size, keeps them aligned.
    """
    source = _describe(item)
    geometry = None
    try:
        img, owned, fh = _open(item, index)
        try:
            if owned:
                _check_pixels(img)
            if draft_min_size and owned and img.format in _JPEG_FORMATS:
                full_size = img.size
                # Pillow picks the largest DCT scale 1/k (k in 8, 4, 2) with width // min_size >= k and
                # height // min_size >= k, so both sides stay >= min_size, hence the shortest one does.
                drafted = img.draft(img.mode, (draft_min_size, draft_min_size))
                if drafted is not None:
                    geometry = Geometry(box=drafted[1], full_size=full_size)
            img.load()
        finally:
            if owned:
                # The pixels are in memory (or decoding failed); release the file handle now rather
                # than at garbage collection. Not img.close(): that would also close a caller's file.
                _close_file(img)
            if fh is not None:
                fh.close()
        if exif_transpose:
            img, geometry = _apply_exif_orientation(img, owned, geometry)
    except Exception as exc:  # noqa: BLE001 - see image_error: any failure of this one input is its error
        raise image_error(index, source, exc) from None
    return img, geometry


def _close_file(img: Image.Image) -> None:
    # What `with Image.open(...)` does on exit: close a file Pillow opened itself (multi-frame formats
    # keep it open after load()), leave a caller's file object alone, keep the decoded pixels.
    if isinstance(img, ImageFile.ImageFile):
        img.__exit__(None, None, None)


_EXIF_METHODS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _apply_exif_orientation(
    img: Image.Image, owned: bool, geometry: Geometry | None
) -> tuple[Image.Image, Geometry | None]:
    try:
        orientation = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # malformed EXIF must not make a decodable photo unusable
        return img, geometry
    method = _EXIF_METHODS.get(orientation)
    if method is None:
        return img, geometry  # no copy: exif_transpose would copy even when there is nothing to do
    if geometry is not None:
        geometry = geometry.transposed(method, img.size)
    if owned:
        ImageOps.exif_transpose(img, in_place=True)
        return img, geometry
    return ImageOps.exif_transpose(img), geometry


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError:
        # Pillow has no direct conversion for a few modes (e.g. premultiplied "La", on which open_clip's
        # transform raises). Un-premultiply first ("La" -> "LA"), or try through RGBA, then drop alpha.
        via = "LA" if image.mode == "La" else "RGBA"
        return image.convert(via).convert("RGB")


@lru_cache(maxsize=16)
def normalize_lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: ToTensor + Normalize of every uint8 value, with torch's float32 operations."""
    x = np.arange(256, dtype=np.float32) / np.float32(255)  # ToTensor: float32 division by 255
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    lut = (x[None, :] - m) / s  # Normalize: sub_(mean).div_(std), float32
    lut.setflags(write=False)
    return lut


def _normalize(rgb: np.ndarray, lut: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    h, w, _ = rgb.shape
    if out is None:
        out = np.empty((3, h, w), dtype=np.float32)
    for c in range(3):
        np.take(lut[c], rgb[:, :, c], out=out[c])
    return out


def preprocess(image: Image.Image, spec: ImageSpec, *, out: np.ndarray | None = None) -> np.ndarray:
    """The reference transform `spec` names (open_clip's eval transform for its resize mode and filter; with
    crop_offset "floor" and convert_rgb "before_resize", transformers' image processor): (3, S, S) float32,
    equal to the reference's tensor.

    `out` (a C-contiguous float32 (3, S, S) array, e.g. a row of a batch) is filled in place and
    returned, saving the copy of stacking the batch afterwards.
    """
    convert = RGB_CONVERSIONS[spec.convert_rgb]
    if convert is not None:
        image = convert(image)
    resized = RESIZERS[spec.resize_mode](image, spec.image_size, None, RESAMPLING[spec.interpolation], spec.fill,
                                         CROP_OFFSETS[spec.crop_offset])
    return _normalize(np.asarray(_to_rgb(resized)), normalize_lut(tuple(spec.mean), tuple(spec.std)), out)


class ImagePreprocessor:
    """(item, index) -> (3, S, S) float32: decode, orient, resize, crop, normalize.

    `fast=True` turns on reduced JPEG decoding (libjpeg's DCT scaling) keeping the shortest side
    >= 2 * image_size before the bicubic resize, so the antialiasing filter still sees at least 2x more
    pixels than it outputs, and resamples exactly the region of the photo (see `decode`). Pixels move by
    a few uint8 steps, vectors by a cosine of about 3e-5 at worst on the benchmark photos, in exchange
    for ~2.4x faster preprocessing of large JPEGs. `fast="max"` drafts down to the crop size itself:
    ~3.6x faster, vectors within a cosine of about 1e-4.

    Every resize mode resamples the same box of the drafted photo at the original photo's output
    size, so the shift does not depend on the mode. Measured on 48 photos of 1-4 MP with a random-weight
    ViT-B-16-SigLIP2 image tower (benchmarks/bench_families.py --fast-modes), min cosine to exact for
    True / "max": 0.999992-0.999995 / 0.999943-0.999956 in all six resize mode x filter combinations;
    convnext_base_w (shortest, bicubic, 256 px): 0.999959 / 0.999782, a CNN feels the drafted pixels more.
    """

    DRAFT_FACTORS = {False: None, True: 2, "max": 1}  # shortest side kept >= factor * image_size

    def __init__(self, spec: ImageSpec, *, exif_transpose: bool = True, fast: bool | str = False):
        if fast not in self.DRAFT_FACTORS:
            raise ValueError(f"fast must be False, True or 'max', got {fast!r}")
        self.spec = spec
        self.size = spec.image_size
        self.exif_transpose = exif_transpose
        self.fast = fast
        factor = self.DRAFT_FACTORS[fast]
        self._draft_min_size = factor * self.size if factor else None
        self._lut = normalize_lut(tuple(spec.mean), tuple(spec.std))
        self._resample = RESAMPLING[spec.interpolation]
        self._resize = RESIZERS[spec.resize_mode]
        self._offset = CROP_OFFSETS[spec.crop_offset]
        self._convert = RGB_CONVERSIONS[spec.convert_rgb]

    def __call__(self, item: Any, index: int, *, out: np.ndarray | None = None) -> np.ndarray:
        try:
            img, geometry = decode(
                item, index, exif_transpose=self.exif_transpose, draft_min_size=self._draft_min_size
            )
            try:
                if self._convert is not None:  # the reference converts first (transformers' processors)
                    img = self._convert(img)
                rgb = _to_rgb(self._resize(img, self.size, geometry, self._resample, self.spec.fill, self._offset))
            except (OSError, ValueError) as exc:  # a mode Pillow cannot resample or convert, a 1 x 10**5 strip
                raise ImageError(index, _describe(item), f"cannot preprocess ({img.mode} {img.size[0]}x{img.size[1]}): {exc}") from None
            return _normalize(np.asarray(rgb), self._lut, out)
        except Exception as exc:  # noqa: BLE001 - MemoryError and the like: this input's error, not the stream's
            raise image_error(index, _describe(item), exc) from None
