"""Worldwide models that answer without a database (``geolocus predict PHOTO``).

- ``geoclip``: CLIP ViT-L/14 → GeoCLIP's published image head → its 100K-location GPS
  gallery (:class:`~geolocus.models.embedder.ModelEmbedder` over
  :meth:`~geolocus.models.geoclip.GeoCLIP.pretrained_clip`): GeoCLIP's own prediction.
- ``streetclip``: StreetCLIP zero-shot, hierarchical as its authors use it: the
  photo against one prompt per country, then, within each of the likeliest countries,
  against its largest cities ("A Street View photo in {city}, {region}, {country}."),
  from the offline GeoNames data that names places. A city's probability is its
  country's times its own within the country; the answer is at its coordinates. Prompts
  are encoded once and cached on disk, keyed by the text tower's weights.

Both are embedders with gallery candidates, so the :class:`Geolocator` treats them as
it treats a GeoCLIP database's model: the candidates become distinct, named places.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from geolocus.errors import InputError, ModelUnavailableError
from geolocus.files import atomic_path, cache_dir
from geolocus.models.embedder import (
    GEOCLIP,
    ArrayOrTensor,
    BaseEmbedder,
    as_numpy,
    create_embedder,
    digest_of,
)
from geolocus.models.gallery import fingerprint
from geolocus.places import Gazetteer
from geolocus.places.text import join_parts

if TYPE_CHECKING:
    import torch
    from numpy.typing import NDArray

    from geolocus.encoders.image.base import ImageEncoder

STREETCLIP = "streetclip"
#: The prompts StreetCLIP's authors use for countries and for cities.
COUNTRY_PROMPT = "A Street View photo in {country}."
CITY_PROMPT = "A Street View photo in {place}."

#: ``tokenize(sentences)`` -> ``{"input_ids", "attention_mask"}`` tensors (a CLIP tokenizer).
Tokenizer = Callable[[list[str]], Any]


def world_embedder(
    model: str = GEOCLIP, *, pretrained: bool = True, **options: Any
) -> BaseEmbedder:
    """The embedder of a worldwide model by name (``geoclip`` or ``streetclip``)."""
    if model == GEOCLIP:
        return create_embedder(GEOCLIP, pretrained=pretrained, **options)
    if model == STREETCLIP:
        return StreetCLIPEmbedder.create(pretrained=pretrained, **options)
    raise InputError(f"unknown worldwide model {model!r}; choose one of: geoclip, streetclip")


def word_tokenizer(vocab_size: int, bos: int, eos: int, length: int = 16) -> Tokenizer:
    """A stand-in for CLIP's tokenizer with random weights (whose vocabulary ships with the
    real ones): each word a fixed id from its CRC-32, between the start and end tokens."""
    import torch

    specials = {bos, eos}

    def word_id(w: str) -> int:
        i = zlib.crc32(w.encode()) % vocab_size
        while i in specials:
            i = (i + 1) % vocab_size
        return i

    def tokenize(sentences: list[str]) -> dict[str, torch.Tensor]:
        ids = torch.zeros((len(sentences), length), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(sentences):
            row = [bos, *[word_id(w) for w in s.lower().split()][: length - 2], eos]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    return tokenize


class StreetCLIPEmbedder(BaseEmbedder):
    """StreetCLIP zero-shot as an embedder: the retrieval vector is the photo's unit CLIP
    embedding; :meth:`gps_candidates` the hierarchical country → city answer."""

    kind = "zero-shot"
    has_gps = True

    def __init__(
        self,
        encoder: ImageEncoder,
        text_model: torch.nn.Module,
        tokenizer: Tokenizer,
        logit_scale: float,
        gazetteer: Gazetteer,
        *,
        countries: int = 3,
        cities: int = 50,
        cache: bool = True,
    ) -> None:
        self.encoder, self.text_model, self.tokenizer = encoder, text_model, tokenizer
        self.logit_scale = float(logit_scale)
        self.name, self.dim = STREETCLIP, int(encoder.dim)
        self.n_countries, self.n_cities, self.cache = countries, cities, cache
        self.text_fingerprint = fingerprint(text_model)
        self.version = digest_of(
            {"backbone": encoder.fingerprint(), "text": self.text_fingerprint, "cities": cities}
        )
        self._gaz = gazetteer
        self._cities = _largest_per_country(gazetteer, cities)
        self.countries = sorted(self._cities)
        self._country_names = [gazetteer.place(self._cities[c][0]).country for c in self.countries]
        self._memo: dict[str, np.ndarray] = {}

    @classmethod
    def create(
        cls,
        *,
        pretrained: bool = True,
        text_options: dict[str, Any] | None = None,
        tokenizer: Tokenizer | None = None,
        **options: Any,
    ) -> StreetCLIPEmbedder:
        """StreetCLIP's two towers (``pretrained=False``: random, ``options`` and
        ``text_options`` shrink them; a word tokenizer stands in for CLIP's)."""
        from geolocus.encoders.image import IMAGE_ENCODERS, create_encoder
        from geolocus.encoders.image.hub import clip_text

        keep = {k: options.pop(k) for k in ("countries", "cities", "cache") if k in options}
        encoder = create_encoder(STREETCLIP, pretrained=pretrained, **options)
        from geolocus.encoders.image.catalog import EncoderSpec

        spec = IMAGE_ENCODERS.get(STREETCLIP)
        if not isinstance(spec, EncoderSpec):  # pragma: no cover - the catalog registers it
            raise ModelUnavailableError(f"{STREETCLIP} is not a hub backbone here")
        text, hf_tok, scale = clip_text(spec, pretrained=pretrained, **(text_options or {}))
        tokenize: Tokenizer
        if tokenizer is not None:
            tokenize = tokenizer
        elif hf_tok is not None:

            def tokenize(sentences: list[str]) -> Any:
                return hf_tok(sentences, padding=True, truncation=True, return_tensors="pt")

        else:
            cfg: Any = text.config
            tokenize = word_tokenizer(
                int(cfg.vocab_size), int(cfg.bos_token_id), int(cfg.eos_token_id)
            )
        return cls(encoder, text, tokenize, scale, Gazetteer.load(), **keep)

    # -- the retrieval vector ----------------------------------------------------------------

    def embed_features(
        self, embedding: ArrayOrTensor, tokens: ArrayOrTensor | None = None
    ) -> NDArray[np.float32]:
        e = np.asarray(as_numpy(embedding), dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise InputError(f"{self.name} embeddings must be (B, {self.dim}), got {e.shape}")
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    # -- prompts -----------------------------------------------------------------------------

    def encode_prompts(self, prompts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Unit text embeddings ``(P, dim)`` of prompts, encoded once (memory, then disk)."""
        import torch

        key = hashlib.sha256(
            json.dumps([self.text_fingerprint, list(prompts)]).encode()
        ).hexdigest()[:24]
        if key in self._memo:
            return self._memo[key]
        path = cache_dir("prompts") / f"streetclip-{key}.npy" if self.cache else None
        if path is not None and path.is_file():
            try:
                out = np.load(path)
                if out.shape == (len(prompts), self.dim):
                    self._memo[key] = out
                    return out
            except (OSError, ValueError):
                pass  # unreadable: encode again
        parts = []
        with torch.no_grad():
            for i in range(0, len(prompts), batch_size):
                batch = self.tokenizer(list(prompts[i : i + batch_size]))
                e = self.text_model(**dict(batch)).text_embeds.float()
                parts.append(torch.nn.functional.normalize(e, dim=-1).numpy())
        out = np.concatenate(parts).astype(np.float32)
        if path is not None:
            try:
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.save(f, out)
            except OSError:
                pass  # a read-only cache: encode again next time
        self._memo[key] = out
        return out

    def country_prompts(self) -> list[str]:
        return [COUNTRY_PROMPT.format(country=n) for n in self._country_names]

    def city_prompts(self, country: str) -> list[str]:
        out = []
        for i in self._cities[country]:
            p = self._gaz.place(i)
            out.append(CITY_PROMPT.format(place=join_parts(p.name, p.region, p.country)))
        return out

    # -- the hierarchical answer -------------------------------------------------------------

    def _softmax(self, img: np.ndarray, text: np.ndarray) -> np.ndarray:
        logits = self.logit_scale * (img @ text.T)
        logits -= logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        return np.asarray(p / p.sum(axis=-1, keepdims=True))

    def country_probabilities(self, embedding: ArrayOrTensor) -> np.ndarray:
        """``(B, C)`` each photo's probability of each of :attr:`countries`."""
        return self._softmax(
            self.embed_features(embedding), self.encode_prompts(self.country_prompts())
        )

    def gps_candidates(
        self, embedding: ArrayOrTensor, tokens: ArrayOrTensor | None = None, k: int = 10
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The ``k`` likeliest cities ``(B, k, 2)`` and their probabilities ``(B, k)``:
        P(country) · P(city | country) over the cities of the likeliest countries."""
        img = self.embed_features(embedding)
        pc = self.country_probabilities(embedding)
        m = self.n_cities
        n_c = min(self.n_countries, len(self.countries))
        coords = np.zeros((len(img), n_c * m, 2))
        probs = np.zeros((len(img), n_c * m))
        for b in range(len(img)):
            for j, c in enumerate(np.argsort(-pc[b], kind="stable")[:n_c]):
                code = self.countries[c]
                rows = self._cities[code]
                p = pc[b, c] * self._softmax(img[b], self.encode_prompts(self.city_prompts(code)))
                # a country with fewer than m cities repeats its first at probability 0
                pad = m - len(rows)
                sl = slice(j * m, (j + 1) * m)
                idx = np.concatenate([rows, np.full(pad, rows[0])]).astype(int)
                coords[b, sl] = np.stack([self._gaz.lat[idx], self._gaz.lon[idx]], axis=1)
                probs[b, sl] = np.concatenate([p, np.zeros(pad)])
        k = min(k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(coords, order[..., None], axis=1), np.take_along_axis(
            probs, order, axis=1
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "countries": self.n_countries, "cities": self.n_cities}


def _largest_per_country(gaz: Gazetteer, n: int) -> dict[str, np.ndarray]:
    """The indices of each country's ``n`` most populous places, largest first."""
    if n < 1:
        raise InputError("cities per country must be at least 1")
    codes = gaz.country_code
    order = np.lexsort((-gaz.population, codes))  # by country, then by population, largest first
    out: dict[str, np.ndarray] = {}
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for s, e in zip(starts, ends, strict=True):
        code = str(sorted_codes[s])
        if code and code != "AQ":  # no one takes street photos in GeoNames' Antarctica
            out[code] = order[s : min(e, s + n)]
    if not out:
        raise ModelUnavailableError("the offline GeoNames data lists no places")
    return out
