"""Toy image encoders and the "colour world" shared by the tests.

Real backbones are slow and their answers are not checkable by hand; these are
deterministic, take microseconds, and keep colours apart, so a red photo must
be placed where the red photos of a database were taken.
"""

from __future__ import annotations

import io
import json
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from geolocus.encoders.image.base import ImageEncoder, ImageFeatures, Preprocessing

#: The colour world: every place has its own colour. name: (lat, lon, colour)
PLACES = {
    "paris": (48.8566, 2.3522, (220, 30, 30)),
    "tokyo": (35.6762, 139.6503, (30, 30, 220)),
    "sydney": (-33.8688, 151.2093, (30, 200, 30)),
    "nairobi": (-1.2921, 36.8219, (220, 220, 30)),
}


class ColourEncoder(ImageEncoder):
    """Tokens: the mean colour of each cell of a ``grid`` x ``grid`` grid.

    The embedding is the tokens end to end (``pool="flat"``, 3·grid² dims; with
    ``centred`` pixels, colours differ in angle) or their mean (``pool="mean"``, the
    photo's mean colour, 3 dims). Counts forward calls (``calls``) and photos
    (``seen``); with ``fail_after`` it raises :class:`KeyboardInterrupt` once that many
    photos were seen, as if the user pressed Ctrl-C.
    """

    def __init__(
        self,
        weights_id: str = "colour-v1",
        *,
        grid: int = 2,
        pool: str = "flat",
        centred: bool = True,
        fail_after: int | None = None,
    ) -> None:
        super().__init__()
        self.name, self.image_size, self.token_dim = "colour-test", 16, 3
        self.dim = 3 * grid * grid if pool == "flat" else 3
        mean, std = ((0.5,) * 3, (0.5,) * 3) if centred else ((0.0,) * 3, (1.0,) * 3)
        self.preprocessing = Preprocessing(size=16, resize=16, mean=mean, std=std)
        self.weights_id, self.pooling = weights_id, f"{grid}x{grid}-{pool}"
        self.grid, self.pool, self.fail_after = grid, pool, fail_after
        self.calls = self.seen = 0

    def forward(self, pixels: torch.Tensor) -> ImageFeatures:
        if self.fail_after is not None and self.seen >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.seen += len(pixels)
        cells = F.adaptive_avg_pool2d(pixels, self.grid)  # (B, 3, grid, grid)
        tokens = cells.flatten(2).transpose(1, 2)  # (B, grid², 3)
        emb = tokens.flatten(1) if self.pool == "flat" else tokens.mean(1)
        return ImageFeatures(embedding=emb, tokens=tokens, grid=(self.grid, self.grid))


class TinyEncoder(ImageEncoder):
    """Tokens: a fixed random 1x1 convolution of each 8x8 cell's mean colour (4x4 grid,
    16-d); embedding: their mean. Learnable-looking features for the training tests."""

    def __init__(self, name: str = "tiny") -> None:
        super().__init__()
        self.name, self.dim, self.token_dim, self.image_size = name, 16, 16, 32
        self.preprocessing = Preprocessing(size=32, resize=32, mean=(0, 0, 0), std=(1, 1, 1))
        self.weights_id = "tiny-v1"
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3, 16, generator=g))

    def forward(self, pixels: torch.Tensor) -> ImageFeatures:
        cells = F.adaptive_avg_pool2d(pixels, 4).flatten(2).transpose(1, 2)  # (B, 16, 3)
        tokens = torch.tanh((cells - 0.5) @ self.proj)
        return ImageFeatures(embedding=tokens.mean(1), tokens=tokens, grid=(4, 4))


def photo(
    path: Path, colour, seed: int = 0, size=(40, 32), exif_gps=None, taken: str | None = None
) -> Path:
    """A JPEG of one colour with a little noise (and optionally an EXIF GPS block, and the
    capture time ``taken`` as EXIF writes it, ``YYYY:MM:DD HH:MM:SS``)."""
    rng = np.random.default_rng(seed)
    a = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255)
    im = Image.fromarray(a.astype(np.uint8))
    kw = {}
    exif = Image.Exif()
    if taken is not None:
        exif.get_ifd(0x8769)[0x9003] = taken
        kw["exif"] = exif
    if exif_gps is not None:
        lat, lon = exif_gps
        exif.get_ifd(0x8825).update(
            {
                1: "N" if lat >= 0 else "S",
                2: (abs(lat), 0.0, 0.0),
                3: "E" if lon >= 0 else "W",
                4: (abs(lon), 0.0, 0.0),
            }
        )
        kw["exif"] = exif
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=95, **kw)
    return path


def bomb(path: Path) -> Path:
    """A 1x1 PNG whose header declares 20000 x 20000 pixels."""
    b = io.BytesIO()
    Image.new("L", (1, 1)).save(b, "PNG")
    data = bytearray(b.getvalue())
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def colour_embedder():
    """A picklable embedder factory for worker processes and Ray actors."""
    from geolocus.models.embedder import BackboneEmbedder

    return BackboneEmbedder(ColourEncoder())


def dying_colour_embedder(marker: str):
    """As :func:`colour_embedder`, but the first process to run a batch dies in the middle of
    its shard (``os._exit``), as a Ray worker killed by the OS would; ``marker`` records it."""
    import os

    emb = colour_embedder()
    orig = emb.encoder.forward

    def forward(pixels):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return orig(pixels)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)

    emb.encoder.forward = forward
    return emb


def always_dying_colour_embedder():
    """As :func:`colour_embedder`, but every process that runs a batch dies."""
    import os

    emb = colour_embedder()
    emb.encoder.forward = lambda pixels: os._exit(1)
    return emb


class FakeLMMServer:
    """An OpenAI-compatible chat-completions server on loopback: answers each request's
    ``n`` choices from ``replies`` in order (text, or a function of the request body that
    returns it; malformed ones included; none left: no choices), with HTTP ``status``,
    and records every request's path, body and Authorization header."""

    def __init__(self, replies, status=200):
        self.replies = list(replies)
        self.status = status
        self.requests: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(
                    {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
                )
                n = body.get("n", 1)
                picked = [outer.replies.pop(0) for _ in range(n) if outer.replies]
                choices = [{"message": {"content": r(body) if callable(r) else r}} for r in picked]
                data = json.dumps({"choices": choices}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def prompts(self) -> list[str]:
        """The text of each request's user prompt, in order."""
        return [r["body"]["messages"][1]["content"][0]["text"] for r in self.requests]
