"""The refiner interface: candidates in, a ranked list of positions out.

Refiners follow scikit-learn's estimator convention: ``fit(neighbours, truth)``
(a no-op for rules that learn nothing) and ``predict(neighbours)``, plus
``rank(neighbours)`` for the whole ranked candidate list that top-k answers use;
settings in the constructor, learned state in ``name_`` attributes, saved and
restored by the base class.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from geolocus.data.neighbours import Neighbours
from geolocus.errors import InputError, NotFittedError
from geolocus.files import atomic_write
from geolocus.refine import REFINERS


@dataclass
class Ranking:
    """Ranked candidate positions for ``N`` queries, best first.

    ``candidates`` is ``(N, C, 2)`` (lat, lon); ``scores`` is ``(N, C)``,
    non-increasing along each row. Where a refiner is probabilistic the scores
    of a row sum to 1 and read as confidences.
    """

    candidates: np.ndarray
    scores: np.ndarray

    def top1(self) -> np.ndarray:
        return self.candidates[:, 0, :]


class Refiner:
    """Base class of stage-2 refiners, an estimator in scikit-learn's sense.

    Constructor arguments are settings, stored as given and never changed by
    ``fit``; what ``fit`` learns lives in attributes ending in ``_``. So the
    learned state is exactly those attributes: :meth:`get_state` /
    :meth:`from_state` (and :meth:`save` / :meth:`load`, JSON, no pickle) carry
    any refiner without knowing which one it is.
    """

    #: Registry name (``geolocus refine --method NAME``).
    name: ClassVar[str] = ""
    #: Whether ``fit`` must be called before ``predict``.
    requires_fit: ClassVar[bool] = False
    #: Whether ``fit`` learns anything (the default ``fit`` learns nothing).
    learns: ClassVar[bool] = False
    #: Whether it can weigh the text read in the query photos (``Neighbours.evidence``).
    can_read_text: ClassVar[bool] = False
    #: The training objectives ``fit`` can be told to use (its ``objective`` setting, the
    #: first the default); empty where there is no choice.
    objectives: ClassVar[tuple[str, ...]] = ()

    # -- settings and learned state --------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, by name (as scikit-learn's ``get_params``)."""
        names = [
            p.name
            for p in inspect.signature(type(self).__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        return {n: getattr(self, n) for n in names}

    def clone(self) -> Refiner:
        """A new, unfitted refiner with these settings (scikit-learn's ``clone``): what
        cross-validation fits on each fold."""
        return type(self)(**self.get_params())

    def fitted_attributes(self) -> dict[str, Any]:
        """What ``fit`` learned: the attributes whose names end in ``_``."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def is_fitted(self) -> bool:
        return bool(self.fitted_attributes())

    def check_fitted(self) -> None:
        """Raise :class:`NotFittedError` where ``predict`` needs a ``fit`` that has not run."""
        if self.requires_fit and not self.is_fitted():
            raise NotFittedError(
                f"refiner {self.name!r} is not fitted: call fit(neighbours, truth) "
                "or load a saved one"
            )

    def get_state(self) -> dict[str, Any]:
        """Settings and learned state as JSON-ready data (what :meth:`save` writes)."""
        self.check_fitted()
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "refiner": self.name,
            "params": {k: _encode(v) for k, v in self.get_params().items()},
            "fitted": {k: _encode(v) for k, v in self.fitted_attributes().items()},
        }

    @classmethod
    def from_state(cls, state: Any) -> Refiner:
        """The refiner :meth:`get_state` described (called on :class:`Refiner`: of whatever
        kind it names; on a subclass: of that kind only)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise InputError("not a saved geolocus refiner (format tag missing or wrong)")
        if state.get("version") != STATE_VERSION:
            raise InputError(
                f"saved refiner has version {state.get('version')!r}, "
                f"this geolocus reads version {STATE_VERSION}"
            )
        name = state.get("refiner")
        kind = REFINERS.get(str(name))
        if not (isinstance(kind, type) and issubclass(kind, cls)):
            raise InputError(f"saved refiner is {name!r}, not {cls.name!r}")
        try:
            r = kind(**{k: _decode(v) for k, v in state["params"].items()})
            for k, v in state["fitted"].items():
                if not k.endswith("_") or k.startswith("_"):
                    raise ValueError(f"{k!r} is not a learned attribute")
                setattr(r, k, _decode(v))
            r._check_state()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"saved {name!r} refiner is malformed: {e}") from None
        return r

    def _check_state(self) -> None:
        """Raise ``ValueError`` if restored learned attributes do not fit together."""

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`get_state` as JSON, atomically."""
        state = self.get_state()
        with atomic_write(path) as fh:
            json.dump(state, fh, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Refiner:
        """Read a refiner written by :meth:`save` (a clear error if it is not one)."""
        try:
            with open(path, encoding="utf-8") as fh:
                state = json.load(fh)
        except FileNotFoundError:
            raise InputError(f"refiner file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read refiner file {path}: {e}") from None
        return cls.from_state(state)

    # -- estimating ------------------------------------------------------------------------

    def fit(self, neighbours: Neighbours, truth: np.ndarray) -> Refiner:
        """Learn from queries with known positions ``truth`` (N, 2). Default: nothing to learn."""
        return self

    def rank(self, neighbours: Neighbours) -> Ranking:
        raise NotImplementedError

    def predict(self, neighbours: Neighbours) -> np.ndarray:
        """The best candidate of each query, ``(N, 2)``."""
        return self.rank(neighbours).top1()

    @property
    def reads_text(self) -> bool:
        """Whether ranking uses the text evidence of the query photos (``Neighbours.evidence``)."""
        return False


#: Saved-refiner format tag and version (:meth:`Refiner.save` / :meth:`Refiner.load`).
STATE_FORMAT = "geolocus-refiner"
STATE_VERSION = 2


def _encode(v: Any) -> Any:
    """JSON form of a setting or learned value: arrays, tuples and dataclasses tagged."""
    if isinstance(v, np.ndarray):
        return {"ndarray": v.tolist(), "dtype": str(v.dtype)}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple):
        return {"tuple": [_encode(x) for x in v]}
    if isinstance(v, list):
        return [_encode(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {"dataclass": type(v).__name__, "fields": _encode(dataclasses.asdict(v))}
    if isinstance(v, dict):
        return {"dict": {str(k): _encode(x) for k, x in v.items()}}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"cannot save a {type(v).__name__} in a refiner's state")


def _decode(v: Any) -> Any:
    if isinstance(v, list):
        return [_decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "ndarray" in v:
        dtype = np.dtype(v["dtype"])
        if dtype.kind not in "biuf":
            raise ValueError(f"a saved array must be numeric, not {dtype}")
        return np.asarray(v["ndarray"], dtype=dtype)
    if "tuple" in v:
        return tuple(_decode(x) for x in v["tuple"])
    if "dict" in v:
        return {k: _decode(x) for k, x in v["dict"].items()}
    if "dataclass" in v:
        kind = _STATE_TYPES.get(v["dataclass"])
        if kind is None:
            raise ValueError(f"unknown saved type {v['dataclass']!r}")
        return kind(**_decode_fields(v["fields"]))
    raise ValueError(f"unknown saved value {sorted(v)}")


def _decode_fields(v: Any) -> dict[str, Any]:
    d = _decode(v)
    if not isinstance(d, dict):
        raise ValueError("a saved dataclass needs named fields")
    return d


#: Dataclasses a refiner's settings or state may hold, by name (restored by name, never by
#: importing what a file says).
_STATE_TYPES: dict[str, type] = {}


def state_type(cls: type) -> type:
    """Allow instances of the dataclass ``cls`` in a saved refiner state (a decorator)."""
    _STATE_TYPES[cls.__name__] = cls
    return cls


def order_rows(candidates: np.ndarray, scores: np.ndarray) -> Ranking:
    """Sort each query's candidates by descending score (stable: ties keep retrieval order)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return Ranking(
        candidates=np.take_along_axis(candidates, order[..., None], axis=1),
        scores=np.take_along_axis(scores, order, axis=1),
    )
