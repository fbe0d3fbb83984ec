"""Class names <-> label indices, stored next to the agent's state as ``labels.*`` arrays.

The agent learns integer labels in ``[0, max_classes)``; people teach names ("cup"). A `LabelMap`
keeps the names, the number of samples taught per index and the *retired* indices (classes that were
forgotten: they are masked out of every prediction and never handed out again, because a strategy
that owns its classifier keeps their statistics). It is saved in the same checkpoint as the agent:
`split_state` takes the ``labels.*`` keys out before `edge.agent.Agent.load_state_dict` sees the
rest, and `LabelMap.state_dict` puts them back before a save, so the agent's own state format is
unchanged.

Integers keep working: a label given as ASCII digits (``"3"``) is that index, and an index without a
name is shown as its digits. Other digits (``"٣"``, ``"３"``) are neither an index nor a name. Names
are compared and stored in Unicode NFC (an NFD ``"é"`` is the same class as an NFC one), and
`UNKNOWN_NAME` (the open-set answer, any case) cannot name a class.

An index is *taken* when a name is given to it (a teach) and *released* again (`LabelMap.release`)
when that teach learns nothing; a class that was learned is *retired* when forgotten.

Example:
    >>> labels = LabelMap(max_classes=4)
    >>> labels.index_for("cup", create=True), labels.index_for("mug", create=True)
    (0, 1)
    >>> labels.rename("cup", "bowl")
    0
    >>> labels.name_of(0)
    'bowl'
    >>> LabelMap.from_state(labels.state_dict(), max_classes=4).names
    {0: 'bowl', 1: 'mug'}
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any, Iterable, Mapping

import numpy as np

from edge.errors import InputError
from edge.openset import Answer, exclude_classes

PREFIX = "labels."
#: What an unknown answer is called where users see it.
UNKNOWN_NAME = "unknown"
#: Classes listed with their probability in each answer (``top``).
TOP_CLASSES = 5
#: A class name: 1-64 printable characters, not only digits (digits mean an index), no ``/``.
MAX_NAME_CHARS = 64
_MAX_JSON_BYTES = 1 << 20


class UnknownClassError(InputError, KeyError):
    """A class name or index that the state does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def is_index_text(label: str) -> bool:
    """Whether a label string is an index: ASCII digits only (``"٣"`` is not)."""
    return label.isascii() and label.isdigit()


def check_name(name: Any, stored: bool = False) -> str:
    """A valid class name in NFC, else `InputError` naming expected vs got. ``stored``: a name read
    from a saved state (kept as it was saved; the reserved name is accepted so an old state loads)."""
    if not isinstance(name, str):
        raise InputError(f"class name: expected a string, got {type(name).__name__}")
    if not stored:
        name = unicodedata.normalize("NFC", name)
    ok = (0 < len(name) <= MAX_NAME_CHARS and name == name.strip() and "/" not in name
          and name.isprintable() and not name.isdigit())
    if not ok:
        why = " (only digits: ASCII digits name an index, other digits nothing)" if name.isdigit() else ""
        raise InputError(f"class name: expected 1-{MAX_NAME_CHARS} printable characters without '/', "
                         f"surrounding spaces or only digits, got {name!r:.80}{why}")
    if not stored and name.casefold() == UNKNOWN_NAME:
        raise InputError(f"class name: expected a name other than {UNKNOWN_NAME!r} (the answer for an unknown "
                         f"object), got {name!r}")
    return str(name)


class LabelMap:
    """Names of label indices, samples taught per index, retired (forgotten) indices."""

    def __init__(self, max_classes: int) -> None:
        if max_classes < 1:
            raise InputError(f"max_classes: expected >= 1, got {max_classes}")
        self.max_classes = int(max_classes)
        self.names: dict[int, str] = {}
        self.counts = np.zeros(self.max_classes, dtype=np.int64)
        self.retired = np.zeros(self.max_classes, dtype=bool)

    # ---------------------------------------------------------------- lookup
    def name_of(self, index: int) -> str:
        """The name of an index, or its digits when it has none."""
        return self.names.get(int(index), str(int(index)))

    def find(self, label: str | int) -> int | None:
        """The index of a name or of a digits/int label; None when unknown."""
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            index = int(label)
        elif isinstance(label, str) and is_index_text(label):
            index = int(label)
        elif isinstance(label, str):
            wanted = unicodedata.normalize("NFC", label)
            for i, name in self.names.items():
                if name == wanted or unicodedata.normalize("NFC", name) == wanted:
                    return i
            return None
        else:
            raise InputError(f"label: expected a name or an int, got {type(label).__name__}")
        if not 0 <= index < self.max_classes:
            raise InputError(f"label: expected an index in [0, {self.max_classes - 1}] "
                             f"(max_classes={self.max_classes}), got {index}")
        return None if self.retired[index] else index

    def index_for(self, label: str | int, create: bool = False, used: Iterable[int] = ()) -> int:
        """The index of ``label``; with ``create`` a new name gets the lowest free index (not named,
        not retired, not in ``used``, e.g. classes the agent learned by number)."""
        index = self.find(label)
        if index is not None:
            return index
        if isinstance(label, str) and not is_index_text(label):
            label = check_name(label)
            if not create:
                raise UnknownClassError(f"class {label!r}: expected one of {self.known()}, got an unknown name")
            taken = set(self.names) | set(int(i) for i in used) | set(np.flatnonzero(self.retired).tolist())
            for i in range(self.max_classes):
                if i not in taken:
                    self.names[i] = label
                    return i
            raise InputError(f"class {label!r}: expected a free index (max_classes={self.max_classes}), "
                             "got every index in use")
        raise UnknownClassError(f"class {label!r}: expected a known class, got a forgotten index")

    def known(self) -> list[str]:
        """Names (sorted by index)."""
        return [self.names[i] for i in sorted(self.names)]

    # ---------------------------------------------------------------- changes
    def add_counts(self, index: int, n: int) -> None:
        """Count ``n`` more samples taught as ``index``."""
        self.counts[int(index)] += int(n)

    def rename(self, old: str | int, new: str) -> int:
        """Give a class a new name (unique); returns its index."""
        new = check_name(new)
        index = self.find(old)
        if index is None:
            raise UnknownClassError(f"class {old!r}: expected one of {self.known()}, got an unknown name")
        other = self.find(new)
        if other is not None and other != index:
            raise InputError(f"class name {new!r}: expected an unused name, got the name of class {other}")
        self.names[index] = new
        return index

    def forget(self, label: str | int, reuse: bool = False) -> int:
        """Forget a class: its name is freed; its index is retired (masked from predictions for good) or,
        with ``reuse`` (the agent holds nothing of the class any more), free for a new class. Returns it."""
        index = self.find(label)
        if index is None:
            raise UnknownClassError(f"class {label!r}: expected one of {self.known()}, got an unknown name")
        self.names.pop(index, None)
        self.retired[index] = not reuse
        self.counts[index] = 0
        return index

    def release(self, index: int) -> None:
        """Free an index that was named but never learned (a teach that collected nothing): its
        name goes and the index can be handed out again (it is not retired)."""
        index = int(index)
        if self.counts[index]:
            raise InputError(f"release {index}: expected an index without learned samples, got "
                             f"{int(self.counts[index])}")
        self.names.pop(index, None)

    def mask(self, proba: np.ndarray) -> np.ndarray:
        """Probabilities with retired classes zeroed and rows renormalised (a new array)."""
        return exclude_classes(proba, self.retired)

    # ---------------------------------------------------------------- what users see
    def answer_fields(self, answer: Answer, row: int = 0, top: int = TOP_CLASSES) -> dict[str, Any]:
        """Row ``row`` of an `edge.openset.Answer` with names: ``label`` (the class name, or
        ``"unknown"``), ``index`` (int, None when unknown), ``score`` (top probability), ``novelty``
        (None when not finite), ``unknown`` and ``top`` (the ``top`` most probable classes,
        ``{"label", "p"}``). The one mapping behind ``edge-agent predict --json``, the device loop's
        events and ``GET /prediction``.

        Example:
            >>> from edge.openset import decide
            >>> labels = LabelMap(3); _ = labels.index_for("cup", create=True)
            >>> answer = decide(np.array([[0.75, 0.25, 0.0]]), np.array([1.0]), threshold=2.0)
            >>> fields = labels.answer_fields(answer)
            >>> fields["label"], fields["index"], fields["top"]
            ('cup', 0, [{'label': 'cup', 'p': 0.75}, {'label': '1', 'p': 0.25}])
        """
        proba = np.asarray(answer.probabilities[row])
        index = int(answer.index[row])
        best = int(answer.best[row])
        # a forgotten class is never an answer, even from probabilities it was not masked out of
        # (and a row whose every class is forgotten has no answer at all)
        retired = proba.shape[-1] == self.max_classes and bool(self.retired[best])
        unknown = bool(answer.unknown[row]) or retired or not float(proba.sum()) > 0.0
        novelty = float(answer.novelty[row])
        return {"label": UNKNOWN_NAME if unknown else self.name_of(index),
                "index": None if unknown else index,
                "score": round(float(answer.score[row]), 6),
                "novelty": round(novelty, 6) if math.isfinite(novelty) else None,
                "unknown": unknown,
                "top": [{"label": self.name_of(int(i)), "p": round(float(proba[i]), 4)}
                        for i in np.argsort(-proba, kind="stable")[:top]
                        if proba[i] > 0.0 and not (proba.shape[-1] == self.max_classes and self.retired[i])]}

    def classes(self, seen: Iterable[int]) -> list[dict[str, Any]]:
        """``{"index", "name", "samples"}`` of each class in ``seen`` that is not retired (what
        ``GET /status`` and ``edge-agent status`` list)."""
        return [{"index": int(i), "name": self.name_of(int(i)), "samples": int(self.counts[int(i)])}
                for i in seen if not self.retired[int(i)]]

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        """``labels.names`` (UTF-8 JSON as uint8), ``labels.counts``, ``labels.retired``."""
        text = json.dumps({str(i): n for i, n in sorted(self.names.items())}, ensure_ascii=False)
        return {f"{PREFIX}names": np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy(),
                f"{PREFIX}counts": self.counts.copy(), f"{PREFIX}retired": self.retired.copy()}

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], max_classes: int) -> LabelMap:
        """Inverse of `state_dict` (keys with the ``labels.`` prefix); a state without them gives an
        empty map. Raises `InputError` on anything malformed."""
        labels = cls(max_classes)
        if f"{PREFIX}names" not in state:
            return labels
        raw = np.asarray(state[f"{PREFIX}names"])
        if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > _MAX_JSON_BYTES:
            raise InputError(f"labels.names: expected UTF-8 JSON bytes (uint8, 1-D, <= {_MAX_JSON_BYTES}), "
                             f"got {raw.dtype}{raw.shape}")
        try:
            names = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"labels.names: expected a JSON object, got undecodable bytes ({exc})") from exc
        if not isinstance(names, dict):
            raise InputError(f"labels.names: expected a JSON object, got {type(names).__name__}")
        for key, name in names.items():
            if not is_index_text(key) or not 0 <= int(key) < max_classes:
                raise InputError(f"labels.names: expected indices in [0, {max_classes - 1}], got {key!r:.20}")
            labels.names[int(key)] = check_name(name, stored=True)
        if len(set(labels.names.values())) != len(labels.names):
            raise InputError("labels.names: expected unique names, got a duplicate")
        for key, dtype in (("counts", np.int64), ("retired", np.bool_)):
            arr = np.asarray(state.get(f"{PREFIX}{key}", getattr(labels, key)))
            if arr.shape != (max_classes,) or arr.dtype != dtype:
                raise InputError(f"labels.{key}: expected {np.dtype(dtype)}({max_classes},), got {arr.dtype}{arr.shape}")
            setattr(labels, key, arr.copy())
        return labels


def split_state(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A checkpoint's arrays -> (the agent's, the ``labels.*`` ones)."""
    agent: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for key, value in state.items():
        (labels if key.startswith(PREFIX) else agent)[key] = value
    return agent, labels
