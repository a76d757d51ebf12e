"""Reading photos safely: the one image loader of geolocus.

Photos come from users and from the web, so every read is bounded (file size,
pixel count), restricted to common photo formats (Pillow's EPS plugin, for one,
runs Ghostscript), decoded completely (a truncated file is an error, never
silently padded) and normalised to 8-bit RGB with the camera's EXIF
orientation applied. Every failure is an :class:`~geolocus.errors.ImageError`
whose one-line message names the file.

A photo's own EXIF GPS position is never a model input; :func:`read_exif_gps`
exists so that ``predict`` can report it beside the answer and ``index build
--exif`` can label a gallery with it.
"""

from __future__ import annotations

import errno
import io
import math
import os
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from geolocus.errors import ImageError, InputError

#: Largest accepted image, in pixels (a 108 MP phone photo passes; bombs do not).
DEFAULT_MAX_PIXELS = 150_000_000
#: Largest accepted file, in bytes.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: Background that transparent pixels are composited on: mid-grey, neutral for the encoders.
BACKGROUND = (128, 128, 128)
#: File extensions :func:`list_images` picks up (lower case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
    | {".heic", ".heif", ".hif", ".avif"}
)
# Decoders Pillow may use. Everything else (EPS -> Ghostscript, PSD, XPM, ...) is refused.
_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF", "HEIF")
# ISO-BMFF brands of HEIF/AVIF files, read from the 'ftyp' box.
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}

Source = str | os.PathLike[str] | bytes | bytearray | IO[bytes]

_heif_lock = threading.Lock()
_open_lock = threading.Lock()
_heif_registered = False


def _describe(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return "<image bytes>"
    return str(getattr(source, "name", "<image stream>"))


def _read_bytes(source: Source, max_bytes: int) -> tuple[bytes, str]:
    """The whole encoded file, refusing anything larger than ``max_bytes``."""
    name = _describe(source)
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            raise ImageError(f"{name}: is a folder, not an image")
        try:
            st = p.stat()
            if not S_ISREG(st.st_mode):  # a FIFO would block open() forever
                raise ImageError(f"{name}: not a regular file")
            size = st.st_size
            if size > max_bytes:
                raise ImageError(f"{name}: file too large ({size:,} bytes > {max_bytes:,})")
            with open(p, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except FileNotFoundError:
            raise ImageError(f"{name}: no such file") from None
        except PermissionError:
            raise ImageError(f"{name}: permission denied") from None
        except IsADirectoryError:
            raise ImageError(f"{name}: is a folder, not an image") from None
        except OSError as e:
            raise ImageError(f"{name}: cannot read ({e.strerror or e})") from None
    else:
        try:
            data = source.read(max_bytes + 1)
        except (OSError, ValueError) as e:
            raise ImageError(f"{name}: cannot read ({e})") from None
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError(f"{name}: not a binary file object")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: file too large (> {max_bytes:,} bytes)")
    if not data:
        raise ImageError(f"{name}: empty file")
    return bytes(data), name


def _bmff_brand(head: bytes) -> bytes | None:
    """Major brand of an ISO base-media file ('heic', 'avif', ...), or None."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return head[8:12]
    return None


def _ensure_heif(name: str, brand: bytes) -> None:
    """Register pillow-heif's opener the first time a HEIF/AVIF file is met.

    Pillow >= 11.3 reads AVIF itself where built with libavif; HEIC always needs
    pillow-heif. Registering an extra decoder does not weaken any limit.
    """
    global _heif_registered
    Image.init()
    if brand in _AVIF_BRANDS and "AVIF" in Image.OPEN:
        return
    with _heif_lock:
        if _heif_registered:
            return
        try:
            import pillow_heif
        except ImportError:
            kind = "AVIF" if brand in _AVIF_BRANDS else "HEIC/HEIF"
            raise ImageError(
                f"{name}: {kind} photos need pillow-heif (pip install 'geolocus[heif]')"
            ) from None
        pillow_heif.register_heif_opener()
        _heif_registered = True


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a high-bit-depth array to 0..255 (16-bit by its range, floats by their span)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind in "ui" and arr.min(initial=0) >= 0 and arr.max(initial=0) <= 65535:
        return (arr.astype(np.float32) / 257.0).round().astype(np.uint8)
    a = arr.astype(np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
    if lo >= 0.0 and hi <= 1.0 and arr.dtype.kind == "f":
        lo, hi = 0.0, 1.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return ((a - lo) * scale).round().clip(0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on :data:`BACKGROUND`."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("LA", "PA", "La", "RGBa", "RGBA"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;"):
        gray = Image.fromarray(_to_uint8(np.asarray(im)), mode="L")
        return gray.convert("RGB")
    if mode == "1":
        return im.convert("L").convert("RGB")
    try:
        return im.convert("RGB")  # L, CMYK, YCbCr, RGBX, HSV, ...
    except (ValueError, OSError):
        if mode == "LAB":
            from PIL import ImageCms

            rgb = ImageCms.applyTransform(
                im,
                ImageCms.buildTransformFromOpenProfiles(
                    ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
                ),
            )
            if rgb is not None:  # None only when transforming in place
                return rgb
        raise


def _allowed_formats() -> tuple[str, ...]:
    """The formats of :data:`_FORMATS` this Pillow has decoders for (HEIF once registered)."""
    Image.init()
    return tuple(f for f in _FORMATS if f in Image.OPEN)


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Identify the image and check its declared size before any pixel is decoded."""
    brand = _bmff_brand(data[:16])
    if brand is not None and (brand in _HEIF_BRANDS or brand in _AVIF_BRANDS):
        _ensure_heif(name, brand)
    try:
        # catch_warnings swaps process-wide filters: the lock keeps loader threads from
        # interleaving (opening reads only the header, so it is quick)
        with _open_lock, warnings.catch_warnings():
            # our own max_pixels check below replaces Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_allowed_formats())
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: too many pixels (decompression bomb?)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image, or not a supported photo format") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{name}: corrupt image ({e})") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: empty image ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"{name}: too many pixels ({w}x{h} > {max_pixels:,}; decompression bomb?)")
    return im


def load_image(
    source: Source,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    min_size: int | None = None,
) -> Image.Image:
    """Read a photo (path, bytes or binary file object) as an upright 8-bit RGB image.

    ``min_size``: where the decoder can (JPEG), decode at a reduced scale whose
    shorter side is still at least ``min_size`` pixels — several times faster
    for large photos that an encoder will shrink anyway.
    Raises :class:`ImageError` (one line, naming the file) for anything unusable.
    """
    data, name = _read_bytes(source, max_bytes)
    return _decode(_open(data, name, max_pixels), name, min_size)


def load_photo(
    source: Source,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    min_size: int | None = None,
) -> tuple[Image.Image, tuple[float, float] | None]:
    """:func:`load_image` and :func:`read_exif_gps` of one photo, read and parsed once."""
    data, name = _read_bytes(source, max_bytes)
    im = _open(data, name, max_pixels)
    gps = _exif_gps(im)
    return _decode(im, name, min_size), gps


def _decode(im: Image.Image, name: str, min_size: int | None) -> Image.Image:
    """Decode an opened photo (reduced where ``min_size`` allows), upright, 8-bit RGB."""
    try:
        if min_size is not None and im.format in ("JPEG", "MPO"):
            w, h = im.size
            # keep the shorter side >= min_size even after a 90 degree EXIF rotation
            side = max(1, int(min_size))
            scale = side / min(w, h)
            if scale < 1:
                im.draft(None, (math.ceil(w * scale), math.ceil(h * scale)))
        im.load()
        im = ImageOps.exif_transpose(im) or im
        return to_rgb(im)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: too many pixels (decompression bomb?)") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg:
            raise ImageError(f"{name}: truncated image file") from None
        raise ImageError(f"{name}: corrupt image ({msg})") from None


def _ratio(v: object) -> float:
    """An EXIF rational (IFDRational, (num, den) pair or number) as a float."""
    if isinstance(v, tuple) and len(v) == 2:
        num, den = v
        return float(num) / float(den) if float(den) != 0 else math.nan
    return float(v)  # type: ignore[arg-type]


def _ref(v: object) -> str:
    if isinstance(v, bytes):
        v = v.decode("ascii", "ignore")
    return str(v).strip("\x00 ").upper()[:1]


def _dms(v: object) -> float:
    """Degrees, minutes, seconds to decimal degrees; NaN for nonsense."""
    try:
        parts = [_ratio(x) for x in v] if isinstance(v, (tuple, list)) else [_ratio(v)]
    except (TypeError, ValueError, ZeroDivisionError):
        return math.nan
    parts = [*parts, 0.0, 0.0][:3]
    d, m, s = parts
    if not all(math.isfinite(x) and x >= 0 for x in parts) or m >= 60 or s >= 60:
        return math.nan
    return d + m / 60.0 + s / 3600.0


def read_exif_gps(
    source: Source, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[float, float] | None:
    """The photo's own EXIF GPS position ``(lat, lon)`` in decimal degrees, or None.

    None when there is no GPS block or it is nonsense: a missing or unknown
    N/S/E/W reference, minutes or seconds >= 60, latitude beyond 90 or
    longitude beyond 180, a receiver status of 'V' (void), or exactly (0, 0),
    the value cameras write when they have no fix. Unreadable files raise
    :class:`ImageError` like :func:`load_image`.
    """
    data, name = _read_bytes(source, max_bytes)
    return _exif_gps(_open(data, name, max_pixels=2**62))  # pixels are never decoded here


def read_exif_time(source: Source, *, max_bytes: int = DEFAULT_MAX_BYTES) -> float | None:
    """When the photo was taken, from EXIF (DateTimeOriginal, else DateTime), as seconds
    of a naive clock (the camera's local time: only differences between photos of one
    camera mean anything), or None. Unreadable files raise :class:`ImageError`."""
    import datetime

    data, name = _read_bytes(source, max_bytes)
    im = _open(data, name, max_pixels=2**62)
    try:
        exif = im.getexif()
        raw = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
    except Exception:  # a malformed EXIF block is "no time", not an unreadable photo
        return None
    if not isinstance(raw, str):
        return None
    try:
        t = datetime.datetime.strptime(raw.strip().rstrip("\x00"), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None  # "0000:00:00 00:00:00" and other placeholders
    return (t - datetime.datetime(1970, 1, 1)).total_seconds()


def read_image_size(
    source: Source,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[int, int]:
    """``(width, height)`` from the header alone, with :func:`load_image`'s checks.

    Lets a caller weigh a batch of photos (e.g. the web service's pixel budget
    per request) before decoding any of them; a 17 KB PNG may declare 144 MP.
    """
    data, name = _read_bytes(source, max_bytes)
    with _open(data, name, max_pixels) as im:
        return im.size


def _exif_gps(im: Image.Image) -> tuple[float, float] | None:
    """The EXIF GPS position of an opened photo (see :func:`read_exif_gps`)."""
    try:
        gps = im.getexif().get_ifd(0x8825)
    except Exception:  # a malformed EXIF block is "no GPS", not an unreadable photo
        return None
    if not gps:
        return None
    lat_ref, lon_ref = _ref(gps.get(1, "")), _ref(gps.get(3, ""))
    if lat_ref not in ("N", "S") or lon_ref not in ("E", "W"):
        return None
    if _ref(gps.get(9, "A")) == "V":
        return None
    lat, lon = _dms(gps.get(2)), _dms(gps.get(4))
    if not (math.isfinite(lat) and math.isfinite(lon)) or lat > 90 or lon > 180:
        return None
    if lat == 0 and lon == 0:
        return None
    lat = -lat if lat_ref == "S" else lat
    lon = -lon if lon_ref == "W" else lon
    return (lat, lon)


def _warn_skipped(path: str, reason: str) -> None:
    print(f"geolocus: warning: {path}: skipped ({reason})", file=sys.stderr)


def list_images(
    folder: str | os.PathLike[str],
    recursive: bool = True,
    on_skip: Callable[[str, str], None] | None = None,
) -> list[Path]:
    """Image files under ``folder`` by extension, sorted; hidden files and folders skipped.

    Links to folders are followed once, after the folders themselves: a link to a folder
    already listed (a loop such as ``sub/up -> ..``, or a second way into one) is never
    followed, and a folder is listed under its own path rather than a link's. Sub-folders
    that cannot be listed, link loops, broken links and special files (FIFOs, sockets)
    with a photo extension are passed to ``on_skip(path, reason)`` (default: a warning on
    stderr) and the rest is listed; a user's folder with one bad corner is still usable.
    """
    root = Path(folder)
    skip = on_skip or _warn_skipped
    try:
        st = root.stat()
    except FileNotFoundError:
        raise InputError(f"{root}: no such folder") from None
    except OSError as e:
        raise InputError(f"{root}: cannot read ({e.strerror or e})") from None
    if not S_ISDIR(st.st_mode):
        raise InputError(f"{root}: not a folder")
    seen = {(st.st_dev, st.st_ino)}
    found: list[Path] = []
    stack: list[Path] = [root]  # folders to list
    links: list[tuple[str, tuple[int, int]]] = []  # links to folders, followed last
    while stack or links:
        if stack:
            d = stack.pop()
        else:
            path, key = links.pop(0)
            if key in seen:
                skip(path, "a link to a folder already listed (a loop?); not followed")
                continue
            seen.add(key)
            d = Path(path)
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if d == root:
                raise InputError(f"{root}: cannot list ({e.strerror or e})") from None
            skip(str(d), f"cannot list: {e.strerror or e}")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            is_photo = Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS
            try:
                st = os.stat(entry.path)  # follows links: a loop raises ELOOP here
            except OSError as err:
                if is_photo or err.errno == errno.ELOOP:  # a broken link to a non-photo: ignored
                    skip(entry.path, err.strerror or str(err))
                continue
            if S_ISDIR(st.st_mode):
                if not recursive:
                    continue
                key = (st.st_dev, st.st_ino)
                if entry.is_symlink():
                    links.append((entry.path, key))
                elif key not in seen:  # (seen already only through a bind mount)
                    seen.add(key)
                    stack.append(Path(entry.path))
            elif is_photo and S_ISREG(st.st_mode):
                found.append(Path(entry.path))
            elif is_photo:
                skip(entry.path, "not a regular file")
    return sorted(found)
