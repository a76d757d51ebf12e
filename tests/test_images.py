"""geolocus.data.images: every kind of photo a user may hand us, generated in tmp_path."""

from __future__ import annotations

import io
import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import geolocus.data.images as images
from geolocus.data.images import BACKGROUND, list_images, load_image, load_photo, read_exif_gps
from geolocus.errors import ImageError, InputError


def _jpeg(tmp_path: Path, name: str, im: Image.Image, **kw) -> Path:
    p = tmp_path / name
    im.save(p, "JPEG", quality=95, **kw)
    return p


def _halves(w: int = 40, h: int = 20) -> Image.Image:
    """Left half red, right half blue: shows where a rotation moved things."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(a)


def test_plain_jpeg_from_path_bytes_and_stream(tmp_path: Path) -> None:
    p = _jpeg(tmp_path, "a.jpg", _halves())
    for src in (p, str(p), p.read_bytes(), io.BytesIO(p.read_bytes())):
        im = load_image(src)
        assert im.mode == "RGB" and im.size == (40, 20)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


@pytest.mark.parametrize(
    ("orientation", "size", "top_left"),
    [(1, (40, 20), "red"), (3, (40, 20), "blue"), (6, (20, 40), "red"), (8, (20, 40), "blue")],
)
def test_exif_orientation_applied(tmp_path: Path, orientation, size, top_left) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = _jpeg(tmp_path, f"o{orientation}.jpg", _halves(), exif=exif)
    im = load_image(p)
    assert im.size == size
    r, _, b = im.getpixel((1, 1))
    assert (r > b) == (top_left == "red")


def _modes() -> dict[str, Image.Image]:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 1
    return {
        "L": Image.new("L", (8, 8), 77),
        "LA": Image.new("LA", (8, 8), (10, 0)),
        "RGBA": rgba,
        "P-transparent": pal,
        "1": Image.new("1", (8, 8), 1),
        "CMYK": Image.new("CMYK", (8, 8), (0, 255, 255, 0)),
        "I;16": Image.fromarray(np.full((8, 8), 65535, np.uint16)),
        "I": Image.fromarray(np.full((8, 8), 30000, np.int32)),
        "F": Image.fromarray(np.full((8, 8), 0.5, np.float32)),
    }


@pytest.mark.parametrize("mode", list(_modes()))
def test_every_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    src = _modes()[mode]
    fmt, ext = ("TIFF", "tif") if mode in ("I", "F", "CMYK") else ("PNG", "png")
    p = tmp_path / f"m.{ext}"
    src.save(p, fmt)
    im = load_image(p)
    assert im.mode == "RGB" and im.size == (8, 8)
    px = im.getpixel((3, 3))
    expected = {
        "L": (77, 77, 77),
        "LA": BACKGROUND,  # transparent: background shows
        "RGBA": BACKGROUND,
        "P-transparent": BACKGROUND,
        "1": (255, 255, 255),
        "CMYK": (255, 0, 0),
        "I;16": (255, 255, 255),
        "I": (117, 117, 117),  # 30000 / 257
        "F": (128, 128, 128),  # 0.5 of [0, 1]
    }[mode]
    assert px == expected


def test_sixteen_bit_png(tmp_path: Path) -> None:
    a = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    im = np.asarray(load_image(p))
    assert im[0, 0, 0] == 0 and im[-1, -1, 0] == 255
    assert np.all(np.diff(im[..., 0].ravel().astype(int)) >= 0)


def test_heic_read_when_pillow_heif_installed(tmp_path: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    p = tmp_path / "x.heic"
    Image.new("RGB", (32, 24), (200, 20, 20)).save(p, "HEIF")
    im = load_image(p)
    assert im.size == (32, 24) and im.getpixel((5, 5))[0] > 150


def test_heic_without_pillow_heif_says_how(tmp_path: Path, monkeypatch) -> None:
    head = b"\x00\x00\x00\x1cftypheic" + b"\x00" * 64
    monkeypatch.setattr(images, "_heif_registered", False)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    with pytest.raises(ImageError, match="pillow-heif"):
        load_image(head)


def test_bomb_refused_by_pixel_limit(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    Image.new("L", (3000, 3000), 0).save(p, optimize=True)  # compresses to a few KB
    assert p.stat().st_size < 100_000
    with pytest.raises(ImageError, match=r"big\.png.*too many pixels"):
        load_image(p, max_pixels=1_000_000)
    assert load_image(p).size == (3000, 3000)


def test_bomb_beyond_pillow_limit_is_an_image_error(tmp_path: Path) -> None:
    # a 1x1 PNG whose header is patched to declare 20000 x 20000 (400 Mpx)
    b = io.BytesIO()
    Image.new("L", (1, 1)).save(b, "PNG")
    data = bytearray(b.getvalue())
    ihdr = 8 + 4  # signature, chunk length
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", 20000, 20000)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 4 + 13]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    p = tmp_path / "bomb.png"
    p.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(p)


def test_oversized_file_refused(tmp_path: Path) -> None:
    p = _jpeg(tmp_path, "a.jpg", _halves())
    with pytest.raises(ImageError, match=r"a\.jpg.*too large"):
        load_image(p, max_bytes=100)
    with pytest.raises(ImageError, match="too large"):
        load_image(io.BytesIO(p.read_bytes()), max_bytes=100)


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8))
    full = _jpeg(tmp_path, "full.jpg", noise).read_bytes()
    p = tmp_path / "cut.jpg"
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg.*truncated"):
        load_image(p)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"hello, I am text\n" * 20, "not an image"), (b"", "empty"), (b"\x89PNG\r\n\x1a\n", "")],
)
def test_not_images(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "fake.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageError, match=rf"fake\.jpg.*{match}"):
        load_image(p)


def test_refused_format_eps(tmp_path: Path) -> None:
    p = tmp_path / "x.eps"
    Image.new("RGB", (8, 8)).save(p, "EPS")
    with pytest.raises(ImageError, match="not an image"):
        load_image(p)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope\.jpg: no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_errors_are_one_line(tmp_path: Path) -> None:
    p = tmp_path / "t.jpg"
    p.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    with pytest.raises(ImageError) as e:
        load_image(p)
    assert "\n" not in str(e.value) and "t.jpg" in str(e.value)


def test_min_size_decodes_large_jpeg_at_reduced_scale(tmp_path: Path) -> None:
    p = _jpeg(tmp_path, "big.jpg", Image.new("RGB", (1600, 1200), (0, 128, 0)))
    im = load_image(p, min_size=256)
    assert min(im.size) >= 256 and im.size[0] < 1600
    assert load_image(p).size == (1600, 1200)


def _gps_jpeg(tmp_path: Path, name: str, gps: dict) -> Path:
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8825)
    ifd.update(gps)
    return _jpeg(tmp_path, name, Image.new("RGB", (16, 16)), exif=exif)


def test_exif_gps(tmp_path: Path) -> None:
    p = _gps_jpeg(
        tmp_path, "s.jpg", {1: "S", 2: (33.0, 51.0, 54.0), 3: "E", 4: (151.0, 12.0, 36.0)}
    )
    lat, lon = read_exif_gps(p)
    assert lat == pytest.approx(-33.865) and lon == pytest.approx(151.21)
    p = _gps_jpeg(tmp_path, "w.jpg", {1: "N", 2: (40.0, 26.5, 0.0), 3: "W", 4: (79.0, 58.0, 56.0)})
    lat, lon = read_exif_gps(p)
    assert lat == pytest.approx(40.441667, abs=1e-5) and lon == pytest.approx(-79.982222, abs=1e-5)


@pytest.mark.parametrize(
    "gps",
    [
        {},
        {1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)},  # latitude > 90
        {1: "N", 2: (45.0, 0.0, 0.0), 3: "E", 4: (181.0, 0.0, 0.0)},  # longitude > 180
        {1: "N", 2: (45.0, 75.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)},  # 75 minutes
        {1: "X", 2: (45.0, 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)},  # bad reference
        {2: (45.0, 0.0, 0.0), 4: (10.0, 0.0, 0.0)},  # no reference
        {1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)},  # no fix
        {1: "N", 2: (45.0, 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0), 9: "V"},  # void
    ],
)
def test_exif_gps_nonsense_is_none(tmp_path: Path, gps: dict) -> None:
    assert read_exif_gps(_gps_jpeg(tmp_path, "g.jpg", gps)) is None


def test_exif_gps_unreadable_file(tmp_path: Path) -> None:
    p = tmp_path / "g.jpg"
    p.write_text("not a photo")
    with pytest.raises(ImageError):
        read_exif_gps(p)


def test_load_photo_is_load_image_and_read_exif_gps_in_one_read(tmp_path: Path) -> None:
    gps = {1: "S", 2: (33.0, 51.0, 54.0), 3: "E", 4: (151.0, 12.0, 36.0)}
    p = _gps_jpeg(tmp_path, "s.jpg", gps)
    for src in (p, p.read_bytes()):
        im, got = load_photo(src, min_size=8)
        assert got == read_exif_gps(p)
        assert np.array_equal(np.asarray(im), np.asarray(load_image(p, min_size=8)))
    assert load_photo(_jpeg(tmp_path, "plain.jpg", _halves()))[1] is None
    with pytest.raises(ImageError):
        load_photo(b"not a photo")


def test_list_images(tmp_path: Path) -> None:
    for rel in ["b.JPG", "a.png", "sub/c.webp", "sub/.hidden.jpg", ".cache/d.jpg", "notes.txt"]:
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["a.png", "b.JPG", "sub/c.webp"]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["a.png", "b.JPG"]
    with pytest.raises(InputError):
        list_images(tmp_path / "missing")


def test_list_images_skips_and_reports_link_loops_and_special_files(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "sub" / "deeper").mkdir(parents=True)
    for rel in ["a.jpg", "sub/b.jpg", "sub/deeper/c.jpg"]:
        (d / rel).write_bytes(b"x")
    (d / "loop.jpg").symlink_to("loop.jpg")  # a link to itself
    (d / "sub" / "up").symlink_to("..")  # a folder loop: would list d again, forever
    (d / "sub" / "deeper" / "top").symlink_to(d)  # the same, absolute
    (d / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a broken link
    os.mkfifo(d / "pipe.jpg")  # reading a FIFO would block
    skipped: list[tuple[str, str]] = []
    got = list_images(d, on_skip=lambda p, why: skipped.append((Path(p).name, why)))
    assert [p.relative_to(d).as_posix() for p in got] == ["a.jpg", "sub/b.jpg", "sub/deeper/c.jpg"]
    why = dict(skipped)
    assert set(why) == {"loop.jpg", "up", "top", "gone.jpg", "pipe.jpg"}
    assert "symbolic links" in why["loop.jpg"] and "not followed" in why["up"]
    assert why["pipe.jpg"] == "not a regular file"
    # a link to a folder outside is followed (once)
    (d / "elsewhere").symlink_to(tmp_path / "other")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "e.png").write_bytes(b"x")
    got = list_images(d, on_skip=lambda p, why: None)
    assert "elsewhere/e.png" in [p.relative_to(d).as_posix() for p in got]
    # a folder is listed by its own path, not by a link met first (a_link sorts before sub)
    (d / "a_link").symlink_to("sub")
    skipped.clear()
    got = list_images(d, on_skip=lambda p, why: skipped.append((Path(p).name, why)))
    assert "sub/b.jpg" in [p.relative_to(d).as_posix() for p in got]
    assert not any(p.relative_to(d).as_posix().startswith("a_link") for p in got)
    assert ("a_link", why["up"]) in skipped


def test_list_images_reports_an_unlistable_subfolder_and_lists_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # as root, chmod 000 does not stop reading: make os.scandir fail for one folder instead
    for rel in ["a.jpg", "locked/b.jpg", "open/c.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    real = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["a.jpg", "open/c.jpg"]
    err = capsys.readouterr().err  # the default report: a warning line on stderr
    locked = tmp_path / "locked"
    assert err == f"geolocus: warning: {locked}: skipped (cannot list: Permission denied)\n"
    with pytest.raises(InputError, match="cannot list"):  # the folder named itself: an error
        list_images(tmp_path / "locked")


def test_list_images_deep_tree_needs_no_recursion() -> None:
    # not under tmp_path: pytest (shutil.rmtree) removes old tmp folders recursively and would
    # fail on this one in a later session; it is undone here, without recursion, in any case
    top = d = Path(tempfile.mkdtemp(prefix="geolocus-deep-"))
    try:
        for _ in range(1100):  # deeper than Python's recursion limit, shallower than PATH_MAX
            d = d / "d"
            os.mkdir(d)
        (d / "x.jpg").write_bytes(b"x")
        assert len(list_images(top)) == 1
    finally:
        (d / "x.jpg").unlink(missing_ok=True)
        while d != top.parent:
            d.rmdir()
            d = d.parent


def test_a_fifo_named_like_a_photo_is_an_error_not_a_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path / "pipe.jpg")
