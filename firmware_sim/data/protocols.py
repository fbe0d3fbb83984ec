"""Streams over any :class:`~firmware_sim.data.sources.LabelledImages`: the experiments of the seed notebooks.

Each protocol is a deterministic function of its arguments (``seed`` included) that returns a
:class:`Stream`: training batches in stream order, each with its images, labels, indices into the
training source and a ``replayed`` mask, plus the fixed test set evaluated after every batch.

- :func:`class_incremental`: ``k`` new classes per experience (``k=1``: one label at a time), with an
  optional fixed number of new samples and of replayed old samples per experience (rehearsal);
- :func:`split_transfer`: pretraining data over some classes, a stream over the others (relabelled);
- :func:`few_shot`: ``n`` examples per class;
- :func:`domain_incremental`: one experience per ``session`` (new conditions, same classes);
- :func:`nic_like`: many small batches of ``m`` consecutive frames of one class (NICv2-391-like).

:func:`make_protocol` builds any of them by name for the command line.

Training images are never copied up front: ``Batch.images()`` reads ``source.x[indices]`` when asked.
Test images come only from the ``test`` source, so no test image is ever trained on.

Example:
    >>> from firmware_sim.data.sources import LabelledImages
    >>> rng = np.random.default_rng(0)
    >>> def images(n): return rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    >>> train = LabelledImages(images(60), np.repeat(np.arange(6), 10))
    >>> test = LabelledImages(images(12), np.repeat(np.arange(6), 2))
    >>> s = class_incremental(train, test, classes_per_experience=2, seed=1)
    >>> len(s.train_batches), s.classes_per_batch, len(s.test)
    (3, [[0, 1], [2, 3], [4, 5]], 12)
"""

from __future__ import annotations

import ast
import inspect
import logging
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, NamedTuple, Sequence

import numpy as np

from firmware_sim.data.sources import LabelledImages
from firmware_sim.data.stream import Batch, Stream

logger = logging.getLogger(__name__)

__all__ = [
    "PROTOCOLS",
    "SplitTransfer",
    "class_incremental",
    "domain_incremental",
    "few_shot",
    "make_protocol",
    "nic_like",
    "open_set_classes",
    "parse_int_list",
    "parse_protocol_params",
    "parse_protocol_value",
    "protocol_help",
    "protocol_parameters",
    "split_transfer",
]

ClassOrder = Literal["random"] | Sequence[int] | None


# --------------------------------------------------------------------------- data types


class SplitTransfer(NamedTuple):
    """Result of :func:`split_transfer`."""

    pretrain: LabelledImages
    pretrain_test: LabelledImages
    stream: Stream
    label_map: dict[int, int]
    pretrain_label_map: dict[int, int]


# --------------------------------------------------------------------------- internals


@dataclass(frozen=True)
class _View:
    """A source seen through a label array (``-1`` = excluded) and the candidate indices (``pool``)."""

    x: np.ndarray
    y: np.ndarray
    pool: np.ndarray
    session: np.ndarray | None
    class_names: list[str]

    @staticmethod
    def of(data: LabelledImages) -> "_View":
        if not isinstance(data, LabelledImages):
            raise TypeError(f"expected LabelledImages, got {type(data).__name__}")
        return _View(data.x, data.y, np.arange(len(data), dtype=np.int64), data.session, list(data.class_names or []))

    def classes(self) -> list[int]:
        return np.unique(self.y[self.pool]).tolist()


_Planned = tuple[str, np.ndarray, np.ndarray]  # (batch name, indices, replayed mask)


def _check_pair(train: _View, test: _View) -> None:
    if train.x.shape[1:] != test.x.shape[1:]:
        raise ValueError(f"test images: expected shape {train.x.shape[1:]} like the training images, "
                         f"got {test.x.shape[1:]}")
    if train.pool.size == 0:
        raise ValueError("train: expected at least one training sample, got none")


def _positive_int(name: str, value: Any, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def _resolve_order(what: str, available: list[int], order: Any, rng: np.random.Generator) -> list[int]:
    if order is None:
        return list(available)
    if isinstance(order, str):
        if order.strip() == "random":
            return [available[i] for i in rng.permutation(len(available))]
        try:
            order = parse_int_list(order)
        except ValueError:
            raise ValueError(f"{what}: expected None, 'random', a list of integers or a range such as 5-9, "
                             f"got {order!r}") from None
    try:
        out = [int(c) for c in order]
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected None, 'random' or a list of integers, got {order!r}") from None
    missing = sorted(set(out) - set(available))
    if missing:
        raise ValueError(f"{what}: {missing} not in the training data (available: {available})")
    if len(set(out)) != len(out):
        dup = sorted({c for c in out if out.count(c) > 1})
        raise ValueError(f"{what}: expected each value once, got duplicates {dup}")
    if not out:
        raise ValueError(f"{what}: expected at least one value, got an empty list")
    return out


def _by_class(view: _View) -> dict[int, np.ndarray]:
    """Pool indices of each class, in source order."""
    labels = view.y[view.pool]
    order = np.argsort(labels, kind="stable")
    sorted_idx, sorted_lab = view.pool[order], labels[order]
    cuts = np.flatnonzero(np.diff(sorted_lab)) + 1
    return {int(g[0]): i for g, i in zip(np.split(sorted_lab, cuts), np.split(sorted_idx, cuts)) if g.size}


def _subsample_stratified(per_class: dict[int, np.ndarray], group: list[int], n: int, rng: np.random.Generator,
                          what: str) -> np.ndarray:
    """``n`` samples spread as evenly as possible over ``group`` (the first ``n % k`` classes get one more)."""
    k = len(group)
    parts = []
    for j, c in enumerate(group):
        want = n // k + (1 if j < n % k else 0)
        have = per_class[c].size
        if want > have:
            raise ValueError(f"{what}: needs {want} samples of class {c}, which has only {have} training samples")
        parts.append(np.sort(rng.choice(per_class[c], size=want, replace=False)) if want < have else per_class[c])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _finish(idx: np.ndarray, replayed: np.ndarray, shuffle: bool,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    idx = idx.astype(np.int64, copy=False)
    if shuffle and idx.size > 1:
        perm = rng.permutation(idx.size)
        return idx[perm], replayed[perm]
    return idx, replayed


def _test_subset(test: _View, classes: Sequence[int]) -> np.ndarray:
    labels = test.y[test.pool]
    return test.pool[np.isin(labels, np.asarray(list(classes), dtype=np.int64))]


def _assemble(name: str, train: _View, test: _View, planned: list[_Planned], test_classes: Sequence[int],
              description: str, params: dict[str, Any], n_classes: int, class_names: list[str],
              label_map: dict[int, int] | None = None) -> Stream:
    batches = [Batch(idx, train.y[idx].astype(np.int64), (), train.x.__getitem__, name=n, replayed=rep.astype(bool))
               for n, idx, rep in planned]
    test_idx = _test_subset(test, test_classes)
    missing = sorted(set(test_classes) - set(np.unique(test.y[test_idx]).tolist()))
    if missing:
        logger.warning("%s: no test images for classes %s; they are never evaluated", name, missing)
    test_batch = Batch(test_idx, test.y[test_idx].astype(np.int64), (), test.x.__getitem__, name="test")
    logger.info("%s: %d batches, %d training samples, %d test samples", name, len(batches),
                sum(len(b) for b in batches), test_idx.size)
    return Stream(name, batches, test_batch, n_classes, description, class_names, params=params,
                  label_map=label_map)


# --------------------------------------------------------------------------- protocols


def _class_incremental(train: _View, test: _View, classes_per_experience: int = 1, class_order: ClassOrder = None,
                       seed: int = 0, new_per_experience: int | None = None, replay_per_experience: int | None = None,
                       shuffle: bool = True, *, _new_per_class: int | None = None, _name: str = "class_incremental",
                       ) -> Stream:
    _check_pair(train, test)
    _positive_int("classes_per_experience", classes_per_experience)
    _positive_int("new_per_experience", new_per_experience, allow_none=True)
    _positive_int("replay_per_experience", replay_per_experience, allow_none=True)
    rng = np.random.default_rng(seed)
    order = _resolve_order("class_order", train.classes(), class_order, rng)
    k = classes_per_experience
    groups = [order[i:i + k] for i in range(0, len(order), k)]
    if len(order) % k:
        logger.info("class_incremental: %d classes do not split into experiences of %d; the last has %d",
                    len(order), k, len(groups[-1]))
    per_class = _by_class(train)
    planned: list[_Planned] = []
    streamed: list[np.ndarray] = []
    short_replay: list[int] = []
    for e, group in enumerate(groups):
        what = f"experience {e} (classes {group})"
        if _new_per_class is not None:
            new = _subsample_stratified(per_class, group, _new_per_class * len(group), rng, what)
        elif new_per_experience is not None:
            new = _subsample_stratified(per_class, group, new_per_experience, rng, what)
        else:
            new = np.concatenate([per_class[c] for c in group])
        old = np.zeros(0, np.int64)
        if replay_per_experience and streamed:
            pool = np.concatenate(streamed)
            r = min(replay_per_experience, pool.size)
            if r < replay_per_experience:
                short_replay.append(e)
            old = rng.choice(pool, size=r, replace=False)
        streamed.append(new)
        idx = np.concatenate([new, old])
        rep = np.concatenate([np.zeros(new.size, bool), np.ones(old.size, bool)])
        idx, rep = _finish(idx, rep, shuffle, rng)
        planned.append((f"exp{e:03d}_classes_{'-'.join(map(str, group))}", idx, rep))
    if short_replay:
        logger.warning("replay_per_experience=%d: experiences %s replay fewer samples (all earlier data)",
                       replay_per_experience, short_replay)
    sizes = "all samples" if new_per_experience is None and _new_per_class is None else (
        f"{_new_per_class} per class" if _new_per_class is not None else f"{new_per_experience} new samples")
    replay = f" + {replay_per_experience} replayed old samples" if replay_per_experience else ""
    description = (f"{len(groups)} experiences of {k} class(es) each ({sizes}{replay} per experience), "
                   f"class order {order}; test: {len(order)} classes, evaluated throughout")
    params = {"classes_per_experience": k, "class_order": order, "seed": seed,
              "new_per_experience": new_per_experience, "replay_per_experience": replay_per_experience,
              "shuffle": shuffle}
    if _new_per_class is not None:
        params = {"shots": _new_per_class, "classes_per_batch": k, "class_order": order, "seed": seed,
                  "shuffle": shuffle}
    return _assemble(_name, train, test, planned, order, description, params,
                     n_classes=len(train.class_names), class_names=train.class_names)


def class_incremental(train: LabelledImages, test: LabelledImages, classes_per_experience: int = 1,
                      class_order: ClassOrder = None, seed: int = 0, new_per_experience: int | None = None,
                      replay_per_experience: int | None = None, shuffle: bool = True) -> Stream:
    """New classes in groups of ``classes_per_experience``; the test set covers every class of the stream.

    - ``class_order``: ``None`` (ascending labels), ``"random"`` (permuted with ``seed``), or a list of
      labels (a subset is allowed: the stream then holds only those classes).
    - ``new_per_experience``: take exactly this many new samples per experience, spread evenly over its
      classes (the first ``n % k`` classes get one more), drawn without replacement; default all.
    - ``replay_per_experience``: add this many OLD samples to every experience after the first, drawn
      uniformly without replacement from the samples streamed in earlier experiences; they are marked
      in ``batch.replayed``. When fewer old samples exist, all of them are replayed (logged).
    - ``shuffle``: shuffle the samples within each batch (new and replayed mixed).

    Example:
        >>> from firmware_sim.data.sources import LabelledImages
        >>> train = LabelledImages(np.zeros((40, 2, 2, 1), np.uint8), np.repeat(np.arange(4), 10))
        >>> test = LabelledImages(np.zeros((8, 2, 2, 1), np.uint8), np.repeat(np.arange(4), 2))
        >>> s = class_incremental(train, test, 1, class_order=[3, 1, 0, 2], new_per_experience=6,
        ...                       replay_per_experience=4)
        >>> [len(b) for b in s.train_batches], [b.n_replayed for b in s.train_batches], s.classes_per_batch
        ([6, 10, 10, 10], [0, 4, 4, 4], [[3], [1], [0], [2]])
    """
    return _class_incremental(_View.of(train), _View.of(test), classes_per_experience, class_order, seed,
                              new_per_experience, replay_per_experience, shuffle)


def _few_shot(train: _View, test: _View, shots: int = 5, seed: int = 0, classes_per_batch: int | None = None,
              class_order: ClassOrder = None, shuffle: bool = True) -> Stream:
    _positive_int("shots", shots)
    _positive_int("classes_per_batch", classes_per_batch, allow_none=True)
    k = classes_per_batch if classes_per_batch is not None else max(len(train.classes()), 1)
    if class_order is not None and not isinstance(class_order, str):
        k = classes_per_batch if classes_per_batch is not None else max(len(list(class_order)), 1)
    return _class_incremental(train, test, k, class_order, seed, shuffle=shuffle, _new_per_class=shots,
                              _name="few_shot")


def few_shot(train: LabelledImages, test: LabelledImages, shots: int = 5, seed: int = 0,
             classes_per_batch: int | None = None, class_order: ClassOrder = None, shuffle: bool = True) -> Stream:
    """Exactly ``shots`` training examples per class (drawn with ``seed``), in one batch by default.

    With ``classes_per_batch=k`` the classes arrive ``k`` at a time (few-shot class-incremental).
    A class with fewer than ``shots`` training examples is an error.

    Example:
        >>> from firmware_sim.data.sources import LabelledImages
        >>> train = LabelledImages(np.zeros((30, 2, 2, 1), np.uint8), np.repeat(np.arange(3), 10))
        >>> test = LabelledImages(np.zeros((6, 2, 2, 1), np.uint8), np.repeat(np.arange(3), 2))
        >>> s = few_shot(train, test, shots=2)
        >>> len(s), np.bincount(s.train_batches[0].labels).tolist()
        (1, [2, 2, 2])
    """
    return _few_shot(_View.of(train), _View.of(test), shots, seed, classes_per_batch, class_order, shuffle)


def _held_out_sessions(test_sessions: Any, test: _View, rng: np.random.Generator) -> list[int]:
    if test.session is None:
        raise ValueError("domain_incremental test_sessions: expected a `session` array on the test images, "
                         "got session=None")
    available = np.unique(test.session[test.pool]).tolist()
    if isinstance(test_sessions, (int, np.integer)) and not isinstance(test_sessions, bool):
        test_sessions = [int(test_sessions)]
    if isinstance(test_sessions, str) and test_sessions.strip() == "random":
        raise ValueError("test_sessions: expected a session id, a list or a range such as 9-10, got 'random'")
    try:
        return _resolve_order("test_sessions", available, test_sessions, rng)
    except ValueError as exc:
        raise ValueError(str(exc).replace("not in the training data", "not among the test images' sessions")) from None


def _domain_incremental(train: _View, test: _View, session_order: ClassOrder = None, seed: int = 0,
                        shuffle: bool = True, test_sessions: ClassOrder | int = None) -> Stream:
    _check_pair(train, test)
    if train.session is None:
        raise ValueError("domain_incremental: expected a `session` array on the training LabelledImages "
                         "(one session/domain id per image), got session=None; use a source that records "
                         "sessions (CORe50) or build LabelledImages(x, y, session=...)")
    rng = np.random.default_rng(seed)
    train_sessions = train.session
    held: list[int] = []
    if test_sessions is not None:
        held = _held_out_sessions(test_sessions, test, rng)
        if test.session is not None:  # checked by _held_out_sessions
            test = replace(test, pool=test.pool[np.isin(test.session[test.pool], held)])
        train = replace(train, pool=train.pool[~np.isin(train_sessions[train.pool], held)])
        if train.pool.size == 0:
            raise ValueError(f"domain_incremental test_sessions: expected at least one training session left, "
                             f"got none (every session is in test_sessions {held})")
    pool_sessions = train_sessions[train.pool]
    order = _resolve_order("session_order", np.unique(pool_sessions).tolist(), session_order, rng)
    planned: list[_Planned] = []
    for s in order:
        idx = train.pool[pool_sessions == s]
        idx, rep = _finish(idx, np.zeros(idx.size, bool), shuffle, rng)
        planned.append((f"session_{s}", idx, rep))
    classes = train.classes()
    where = f"sessions {held} held out" if held else "all sessions"
    description = (f"{len(order)} experiences, one per session (order {order}), all classes in each; "
                   f"test: {len(classes)} classes ({where}), evaluated throughout")
    params = {"session_order": order, "seed": seed, "shuffle": shuffle, "test_sessions": held or None}
    return _assemble("domain_incremental", train, test, planned, classes, description, params,
                     n_classes=len(train.class_names), class_names=train.class_names)


def domain_incremental(train: LabelledImages, test: LabelledImages, session_order: ClassOrder = None,
                       seed: int = 0, shuffle: bool = True, test_sessions: ClassOrder | int = None) -> Stream:
    """One experience per ``train.session`` value (ascending, ``"random"`` or a given order).

    The test set is every test image of the training classes, whatever its session. With
    ``test_sessions`` (a session id, a list or a range such as ``9-10``) those sessions are held out:
    no training batch holds a frame of them, and the test set is the ``test`` images of those
    sessions only (pass the same source as ``train`` and ``test`` to split one source by session).

    Example:
        >>> from firmware_sim.data.sources import LabelledImages
        >>> train = LabelledImages(np.zeros((6, 2, 2, 1), np.uint8), np.array([0, 1] * 3), np.array([1, 1, 2, 2, 4, 4]))
        >>> test = LabelledImages(np.zeros((2, 2, 2, 1), np.uint8), np.array([0, 1]))
        >>> [b.name for b in domain_incremental(train, test).train_batches]
        ['session_1', 'session_2', 'session_4']
        >>> s = domain_incremental(train, train, test_sessions=4)
        >>> [b.name for b in s.train_batches], s.test.indices.tolist()
        (['session_1', 'session_2'], [4, 5])
    """
    return _domain_incremental(_View.of(train), _View.of(test), session_order, seed, shuffle, test_sessions)


def _nic_like(train: _View, test: _View, batch_size: int = 300, seed: int = 0, first_batch_classes: int = 0,
              drop_last: bool = False) -> Stream:
    _check_pair(train, test)
    _positive_int("batch_size", batch_size)
    _positive_int("first_batch_classes", first_batch_classes, minimum=0)
    rng = np.random.default_rng(seed)
    classes = train.classes()
    if first_batch_classes > len(classes):
        raise ValueError(f"first_batch_classes: expected at most {len(classes)} (classes in the data), "
                         f"got {first_batch_classes}")
    first = sorted(rng.choice(classes, size=first_batch_classes, replace=False).tolist()) if first_batch_classes else []
    # Units of consecutive frames: one class (and one session when sessions exist), source order.
    units: list[np.ndarray] = []
    first_idx: list[np.ndarray] = []
    sessions = train.session
    for c, idx in _by_class(train).items():
        if c in first:
            first_idx.append(idx)
            continue
        runs = [idx] if sessions is None else [idx[sessions[idx] == s] for s in np.unique(sessions[idx])]
        for run in runs:
            for start in range(0, run.size, batch_size):
                chunk = run[start:start + batch_size]
                if chunk.size < batch_size and drop_last:
                    continue
                units.append(chunk)
    planned: list[_Planned] = []
    if first_idx:
        idx, rep = _finish(np.concatenate(first_idx), np.zeros(sum(i.size for i in first_idx), bool), True, rng)
        planned.append((f"b000_first_classes_{'-'.join(map(str, first))}", idx, rep))
    for j in rng.permutation(len(units)):
        u = units[j]
        n = len(planned)
        planned.append((f"b{n:03d}_class_{int(train.y[u[0]])}", u, np.zeros(u.size, bool)))
    if not planned:
        raise ValueError(f"nic_like: no batch left (every class has fewer than batch_size={batch_size} "
                         f"samples and drop_last=True)")
    description = (f"{len(planned)} batches of {batch_size} consecutive samples of one class"
                   f"{' and one session' if sessions is not None else ''}, in random order"
                   f"{f' after a first batch of all samples of classes {first}' if first else ''}; "
                   f"test: {len(classes)} classes, evaluated throughout")
    params = {"batch_size": batch_size, "seed": seed, "first_batch_classes": first_batch_classes,
              "first_classes": first, "drop_last": drop_last}
    return _assemble("nic_like", train, test, planned, classes, description, params,
                     n_classes=len(train.class_names), class_names=train.class_names)


def nic_like(train: LabelledImages, test: LabelledImages, batch_size: int = 300, seed: int = 0,
             first_batch_classes: int = 0, drop_last: bool = False) -> Stream:
    """Small single-class batches: ``batch_size`` consecutive samples (source order) of one class.

    Samples of a class (and of one session, when ``train.session`` exists) are cut into runs of
    ``batch_size``; the runs are then shuffled with ``seed``, so classes come back again and again, as
    in NICv2-391. ``first_batch_classes=c`` starts with one batch holding every sample of ``c``
    classes chosen with ``seed`` (NICv2's larger first batch). A class's last run is shorter when its
    count is not a multiple of ``batch_size``; ``drop_last=True`` drops it. Batches are not shuffled
    inside: consecutive frames stay consecutive.

    Example:
        >>> from firmware_sim.data.sources import LabelledImages
        >>> train = LabelledImages(np.zeros((40, 2, 2, 1), np.uint8), np.repeat(np.arange(2), 20))
        >>> test = LabelledImages(np.zeros((4, 2, 2, 1), np.uint8), np.array([0, 0, 1, 1]))
        >>> s = nic_like(train, test, batch_size=5, seed=0)
        >>> len(s), {len(b) for b in s}, all(len(b.classes) == 1 for b in s)
        (8, {5}, True)
    """
    return _nic_like(_View.of(train), _View.of(test), batch_size, seed, first_batch_classes, drop_last)


_PLANNERS: dict[str, Callable[..., Stream]] = {
    "class_incremental": _class_incremental,
    "few_shot": _few_shot,
    "domain_incremental": _domain_incremental,
    "nic_like": _nic_like,
}


def _subset(data: LabelledImages, classes: list[int]) -> tuple[LabelledImages, dict[int, int]]:
    mapping = {c: i for i, c in enumerate(classes)}
    lut = np.full(max(int(data.y.max(initial=0)), max(classes)) + 1, -1, np.int64)
    lut[classes] = np.arange(len(classes))
    mask = np.isin(data.y, classes)
    names = [(data.class_names or [])[c] if c < len(data.class_names or []) else str(c) for c in classes]
    session = None if data.session is None else data.session[mask]
    return LabelledImages(data.x[mask], lut[data.y[mask]], session, names), mapping


def _remapped_view(data: LabelledImages, classes: list[int]) -> _View:
    lut = np.full(max(int(data.y.max(initial=0)), max(classes)) + 1, -1, np.int64)
    lut[classes] = np.arange(len(classes))
    y = lut[data.y]
    names = list(data.class_names or [])
    return _View(data.x, y, np.flatnonzero(y >= 0).astype(np.int64), data.session,
                 [names[c] if c < len(names) else str(c) for c in classes])


def split_transfer(train: LabelledImages, test: LabelledImages, pretrain_classes: ClassOrder = None,
                   stream_classes: Sequence[int] | None = None, seed: int = 0,
                   protocol: str = "class_incremental", **protocol_params: Any) -> SplitTransfer:
    """Split the classes: pretraining data over some, a continual stream over the others.

    - ``pretrain_classes``: ``None`` (the lower half of the sorted labels, ``n // 2`` classes),
      ``"random"`` (a random half, with ``seed``) or a list of labels.
    - ``stream_classes``: default every other class; must be disjoint from ``pretrain_classes``.

    Both sides are relabelled ``0..m-1`` in the order of their class lists (ascending unless given);
    ``label_map`` / ``pretrain_label_map`` record source label -> new label. The stream is built by
    ``protocol`` (any name of :data:`PROTOCOLS` but ``split_transfer``) with ``protocol_params``, and its
    batch ``indices`` still point into the original ``train`` source. ``pretrain`` and
    ``pretrain_test`` are new :class:`LabelledImages` (copies) for the host pretrainer.

    Example:
        >>> from firmware_sim.data.sources import LabelledImages
        >>> train = LabelledImages(np.zeros((40, 2, 2, 1), np.uint8), np.repeat(np.arange(4), 10))
        >>> test = LabelledImages(np.zeros((8, 2, 2, 1), np.uint8), np.repeat(np.arange(4), 2))
        >>> r = split_transfer(train, test)
        >>> r.pretrain_label_map, r.label_map, r.stream.classes_per_batch
        ({0: 0, 1: 1}, {2: 0, 3: 1}, [[0], [1]])
    """
    classes = np.unique(train.y).tolist()
    if len(classes) < 2:
        raise ValueError(f"split_transfer: expected at least 2 classes in the training data, got {classes}")
    rng = np.random.default_rng(seed)
    if pretrain_classes is None:
        pre = classes[: len(classes) // 2]
    elif isinstance(pretrain_classes, str):
        pre = sorted(_resolve_order("pretrain_classes", classes, pretrain_classes, rng)[: len(classes) // 2])
    else:
        pre = _resolve_order("pretrain_classes", classes, pretrain_classes, rng)
    if stream_classes is None:
        stream = [c for c in classes if c not in set(pre)]
    else:
        stream = _resolve_order("stream_classes", classes, list(stream_classes), rng)
    both = sorted(set(pre) & set(stream))
    if both:
        raise ValueError(f"split_transfer: pretrain_classes and stream_classes must be disjoint, both hold {both}")
    if not stream:
        raise ValueError("split_transfer: expected at least one stream class, got none (all classes pretrain)")
    if protocol not in _PLANNERS:
        raise ValueError(f"split_transfer protocol: expected one of {sorted(_PLANNERS)}, got {protocol!r}")
    pretrain, pre_map = _subset(train, pre)
    pretrain_test, _ = _subset(test, pre)
    stream_map = {c: i for i, c in enumerate(stream)}
    params = dict(protocol_params)
    params.setdefault("seed", seed)
    s = _PLANNERS[protocol](_remapped_view(train, stream), _remapped_view(test, stream), **params)
    s = replace(
        s, name=f"split_transfer/{s.name}", label_map=stream_map, pretrain=pretrain, pretrain_test=pretrain_test,
        n_classes=len(stream),
        description=(f"pretrain on {len(pre)} classes {pre}; stream over {len(stream)} other classes "
                     f"{stream} relabelled 0..{len(stream) - 1}: {s.description}"),
        params={"pretrain_classes": pre, "stream_classes": stream, "protocol": protocol, **s.params},
    )
    return SplitTransfer(pretrain, pretrain_test, s, stream_map, pre_map)


# --------------------------------------------------------------------------- open set


def open_set_classes(n_classes: int, held_out: int | Sequence[int] = 10, seed: int = 0) -> list[int]:
    """The classes an open-set run never trains on (shown only at test time, as "unknown").

    ``held_out`` is a count (chosen at random with ``seed``, sorted) or an explicit list.

    Example:
        >>> open_set_classes(50, [3, 1])
        [1, 3]
        >>> len(open_set_classes(50, 10, seed=0))
        10
    """
    if isinstance(held_out, (int, np.integer)):
        if not 1 <= int(held_out) < n_classes:
            raise ValueError(f"held_out: expected a count in [1, {n_classes - 1}], got {held_out}")
        return sorted(int(c) for c in np.random.default_rng(seed).choice(n_classes, int(held_out), replace=False))
    out = sorted({int(c) for c in held_out})
    if not out or out[0] < 0 or out[-1] >= n_classes or len(out) >= n_classes:
        raise ValueError(f"held_out: expected 1 to {n_classes - 1} classes in [0, {n_classes - 1}], got {list(held_out)}")
    return out


# --------------------------------------------------------------------------- registry

#: Protocol name -> function. Every function takes ``(train, test, **params)``.
PROTOCOLS: dict[str, Callable[..., Any]] = {
    "class_incremental": class_incremental,
    "split_transfer": split_transfer,
    "few_shot": few_shot,
    "domain_incremental": domain_incremental,
    "nic_like": nic_like,
}


def _accepted_params(name: str, params: dict[str, Any]) -> None:
    sig = inspect.signature(PROTOCOLS[name])
    accepted = [p for p in list(sig.parameters)[2:] if sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    if name == "split_transfer":
        inner = params.get("protocol", "class_incremental")
        if inner not in _PLANNERS:
            raise ValueError(f"split_transfer protocol: expected one of {sorted(_PLANNERS)}, got {inner!r}")
        inner_sig = inspect.signature(PROTOCOLS[inner])
        accepted += [p for p in list(inner_sig.parameters)[2:] if p not in accepted]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"protocol {name!r}: unknown parameter(s) {unknown}; valid: {accepted}")


def make_protocol(name: str, train: LabelledImages | None = None, test: LabelledImages | None = None,
                  **params: Any) -> Any:
    """Return ``build(train, test) -> Stream`` for a protocol name; parameters are checked now.

    Given ``train`` and ``test`` as well, build and return the :class:`Stream` at once. For ``split_transfer`` the stream carries the pretraining split in
    ``stream.pretrain`` / ``stream.pretrain_test`` and the relabelling in ``stream.label_map``.

    Example:
        >>> build = make_protocol("nic_like", batch_size=50)
        >>> make_protocol("nope")
        Traceback (most recent call last):
        ...
        ValueError: unknown protocol 'nope'; valid names: class_incremental, domain_incremental, few_shot, nic_like, split_transfer
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid names: {', '.join(sorted(PROTOCOLS))}")
    _accepted_params(name, params)
    fn = PROTOCOLS[name]

    def build(train: LabelledImages, test: LabelledImages) -> Stream:
        out = fn(train, test, **params)
        return out.stream if isinstance(out, SplitTransfer) else out

    build.__name__ = f"build_{name}"
    build.__doc__ = f"{name}({', '.join(f'{k}={v!r}' for k, v in params.items())})"
    if train is not None or test is not None:
        if train is None or test is None:
            raise ValueError(f"protocol {name!r}: expected both train and test LabelledImages, got only "
                             f"{'train' if train is not None else 'test'}")
        return build(train, test)
    return build


_INT_LIST = re.compile(r"^\s*\[?\s*(-?\d+(\s*-\s*\d+)?)(\s*,\s*-?\d+(\s*-\s*\d+)?)*\s*,?\s*\]?\s*$")


def parse_int_list(text: str) -> list[int]:
    """Integers from text: ``"5-9"`` (inclusive range), ``"0-4,7"``, ``"5,6,7"`` or ``"[5, 6, 7]"``.

    Example:
        >>> parse_int_list("5-9"), parse_int_list("0-2,7"), parse_int_list("[3, 1]")
        ([5, 6, 7, 8, 9], [0, 1, 2, 7], [3, 1])
        >>> parse_int_list("9-5")
        Traceback (most recent call last):
        ...
        ValueError: '9-5': expected a range LOW-HIGH with LOW <= HIGH, got 9 > 5
    """
    if not isinstance(text, str) or not _INT_LIST.match(text) or (text.strip().startswith("[")
                                                                   != text.strip().endswith("]")):
        raise ValueError(f"expected integers such as 5-9, 0-4,7 or [5,6,7], got {text!r}")
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.strip().strip("[]").split(","))):
        low, dash, high = part.lstrip("-").partition("-")
        if not dash:
            out.append(int(part))
            continue
        a, b = int(part[: len(part) - len(high) - 1].strip()), int(high)
        if a > b:
            raise ValueError(f"{text!r}: expected a range LOW-HIGH with LOW <= HIGH, got {a} > {b}")
        out.extend(range(a, b + 1))
    return out


def parse_protocol_value(text: str) -> Any:
    """One protocol parameter value from text: None, true/false, int, float, a list (``[5,6]``,
    ``5,6`` or a range ``5-9``), else the bare word (e.g. ``random``).

    Example:
        >>> [parse_protocol_value(t) for t in ("none", "True", "3", "0.5", "[5,6,7]", "5-9", "random")]
        [None, True, 3, 0.5, [5, 6, 7], [5, 6, 7, 8, 9], 'random']
    """
    t = text.strip()
    low = t.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    if _INT_LIST.match(t) and ("-" in t.lstrip("-[ ") or "," in t or t.startswith("[")):
        return parse_int_list(t)
    try:
        value = ast.literal_eval(t)
    except (ValueError, SyntaxError):
        return t  # a bare word such as random
    return list(value) if isinstance(value, tuple) else value




def parse_protocol_params(items: Sequence[str], option: str = "--protocol-param") -> dict[str, Any]:
    """``KEY=VALUE`` command-line items -> protocol parameters (values as :func:`parse_protocol_value`).

    Example:
        >>> parse_protocol_params(["pretrain_classes=[5,6,7,8,9]", "stream_classes=0-4", "seed=2"])
        {'pretrain_classes': [5, 6, 7, 8, 9], 'stream_classes': [0, 1, 2, 3, 4], 'seed': 2}
    """
    params: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{option}: expected KEY=VALUE, got {item!r}")
        params[key.strip()] = parse_protocol_value(value)
    return params


def protocol_parameters() -> dict[str, dict[str, Any]]:
    """Every protocol's parameters and their defaults (``inspect`` of the functions of :data:`PROTOCOLS`).

    Example:
        >>> protocol_parameters()["few_shot"]
        {'shots': 5, 'seed': 0, 'classes_per_batch': None, 'class_order': None, 'shuffle': True}
    """
    out: dict[str, dict[str, Any]] = {}
    for name, fn in PROTOCOLS.items():
        sig = inspect.signature(fn)
        out[name] = {p.name: p.default for p in list(sig.parameters.values())[2:]
                     if p.kind is not inspect.Parameter.VAR_KEYWORD}
    return out


def protocol_help() -> str:
    """The text ``edge-sim run --help`` shows: each protocol with its parameters and defaults."""
    lines = ["protocols for idx/npz/folder data (--scenario NAME, --protocol-param KEY=VALUE; lists as "
             "[5,6,7] or ranges as 5-9):"]
    for name, params in protocol_parameters().items():
        shown = ", ".join(f"{k}={v!r}" if not isinstance(v, str) else f"{k}={v}" for k, v in params.items())
        lines.append(f"  {name}: {shown}")
        if name == "split_transfer":
            lines.append("      (+ the parameters of its inner protocol)")
    return "\n".join(lines)
