"""HTTP routes over what a running agent learned (issue 25), included by `edge.device.http.build_app`.

Routes (behind the API's token, Host/Origin and content-type checks, JSON errors):

* ``GET /classes``: each class with its index, name, ledger samples, learned rows and thumbnails;
* ``GET /classes/<name>/samples?offset=0&limit=50``: its samples, oldest first (id, event, time,
  source, thumbnail bytes, ``thumbnail`` URL), paged;
* ``GET /samples/<id>/thumbnail``: the JPEG (the token cookie is accepted, for ``<img>``);
* ``DELETE /samples/<id>``, ``DELETE /events/<id>``: remove one sample or one teach event;
* ``POST /undo``: undo the newest teach event;
* ``GET /export?classes=a,b``: a knowledge pack (`edge.knowledge.pack`) of those classes (default all);
* ``POST /import?on_conflict=merge|rename|refuse[&re_embed=1]``: merge a pack into the running
  state; the body is the pack's bytes (``Content-Type: application/octet-stream``, else 415).
  Answer: ``added``, ``merged`` (names), ``renamed`` (pack name -> new name), ``classes`` (each
  with its ``action`` and ``samples``), ``samples``, ``events``, ``step``.

Removal is exact for ``slda``/``ncm`` and a refit for gradient heads (``removal`` in each answer);
every change is made on a copy of the agent, swapped in and checkpointed (`DeviceLoop.change_agent`,
`DeviceLoop.replace_agent`).

Import has its own body limit, `edge.knowledge.pack.MAX_PACK_BYTES` by default (``max_import`` of
`edge.device.http.build_app`; 413 beyond, from ``Content-Length`` before anything is read, or as
soon as the streamed bytes pass it, and the connection is closed). The body streams to a temporary
file in chunks (never more than 1 MiB held in memory), each chunk within
`edge.device.connections.BODY_TIMEOUT_S` and the whole body within `IMPORT_TIMEOUT_S` (408); one
import runs at a time (429). The file is then read by the CLI's code (`edge.knowledge.pack.read_pack`,
`edge.knowledge.pack.import_packs`: ``edge-agent import``) on copies of the agent and its names:
a pack that cannot be read or is from another backbone answers 400, a class name the state has
with ``on_conflict=refuse`` 409, each with the error naming expected vs got, and the state and its
checkpoints are untouched. ``re_embed=1`` embeds a foreign pack's thumbnails with this backbone;
the loop's frames wait meanwhile (`DeviceLoop.backbone_lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from typing import Any, Awaitable, Callable

import numpy as np

from edge.device.connections import BODY_TIMEOUT_S
from edge.device.labels import UnknownClassError
from edge.device.loop import DeviceLoop
from edge.errors import InputError
from edge.knowledge.pack import CONFLICTS, MAX_PACK_BYTES, PackError

MAX_PAGE = 200
#: Seconds the whole body of ``POST /import`` may take (each chunk: `BODY_TIMEOUT_S`).
IMPORT_TIMEOUT_S = 300.0
#: The name of the uploaded pack in answers and errors (instead of its temporary file's path).
IMPORT_BODY = "POST /import body"
#: Bytes of an upload held in memory before they are written to the temporary file.
_FLUSH_BYTES = 1 << 20


class ImportConflict(PackError):
    """A pack class whose name the state has, with ``on_conflict=refuse`` (HTTP 409)."""

    http_status = 409


class UploadError(InputError):
    """An upload refused before its pack is read: ``http_status`` (413, 408, 429, ...) and whether
    the connection is then closed (``close``: the rest of the body is not read)."""

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.http_status = status
        self.close = close


def _int_param(request: Any, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InputError(f"{name}: expected an integer in [{low}, {high}], got {raw[:20]!r}")
    return int(raw)


def _path_int(request: Any, name: str) -> int:
    raw = str(request.path_params[name])
    if not raw.isdigit() or len(raw) > 18:
        raise InputError(f"{name}: expected a positive integer id, got {raw[:20]!r}")
    return int(raw)


def _import_params(request: Any) -> tuple[str, bool]:
    """``on_conflict`` (default ``merge``) and ``re_embed`` (``0``/``1``) of ``POST /import``."""
    extra = sorted(set(request.query_params) - {"on_conflict", "re_embed"})
    if extra:
        raise InputError(f"import: expected parameters among ['on_conflict', 're_embed'], got {extra[:5]}")
    on_conflict = request.query_params.get("on_conflict", "merge")
    if on_conflict not in CONFLICTS:
        raise InputError(f"on_conflict: expected one of {list(CONFLICTS)}, got {on_conflict[:20]!r}")
    re_embed = request.query_params.get("re_embed", "0")
    if re_embed not in ("0", "1"):
        raise InputError(f"re_embed: expected 0 or 1, got {re_embed[:20]!r}")
    return on_conflict, re_embed == "1"


def _http_words(message: str, path: str) -> str:
    """A pack error in the API's words: the upload's name for its temporary path, the query's
    parameters for the CLI's options."""
    return message.replace(path, IMPORT_BODY).replace("--re-embed", "re_embed=1")


async def receive_pack(request: Any, limit: int, timeout_s: float = IMPORT_TIMEOUT_S) -> str:
    """Stream a request's body to a new temporary file; returns its path (the caller removes it).
    413 past ``limit`` bytes (the ``Content-Length`` is checked first), 408 when a chunk takes over
    `BODY_TIMEOUT_S` or the whole over ``timeout_s``: `UploadError`, the file removed."""
    import anyio
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise UploadError(413, f"import: expected a pack of at most {limit} bytes, got Content-Length "
                               f"{length:.20}", close=True)
    try:
        fd, path = tempfile.mkstemp(prefix="edge-import-", suffix=".pack")
    except OSError as exc:
        raise UploadError(507, f"import: expected a temporary file in {tempfile.gettempdir()}, got "
                               f"{exc.strerror or exc}", close=True) from None
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            held: list[bytes] = []
            held_bytes = 0
            chunks = request.stream().__aiter__()
            with anyio.fail_after(timeout_s):
                while True:
                    with anyio.fail_after(BODY_TIMEOUT_S):
                        try:
                            chunk = await chunks.__anext__()
                        except StopAsyncIteration:
                            break
                    size += len(chunk)
                    if size > limit:
                        raise UploadError(413, f"import: expected a pack of at most {limit} bytes, got more",
                                          close=True)
                    held.append(chunk)
                    held_bytes += len(chunk)
                    if held_bytes >= _FLUSH_BYTES:
                        await run_in_threadpool(handle.writelines, held)
                        held, held_bytes = [], 0
            await run_in_threadpool(handle.writelines, held)
        if size == 0:
            raise UploadError(400, "import: expected a knowledge pack's bytes (edge-agent export, GET /export), "
                                   "got an empty body")
    except TimeoutError:
        os.unlink(path)
        raise UploadError(408, f"import: expected the body within {BODY_TIMEOUT_S:g} s a chunk and {timeout_s:g} s "
                               f"in all, got {size} bytes by then", close=True) from None
    except ClientDisconnect:
        os.unlink(path)
        raise UploadError(400, "import: expected a whole body, got a closed connection") from None
    except OSError as exc:
        os.unlink(path)
        raise UploadError(507, f"import: expected room for the pack in {tempfile.gettempdir()}, got "
                               f"{exc.strerror or exc}", close=True) from None
    except BaseException:
        os.unlink(path)
        raise
    return path


def knowledge_routes(loop: DeviceLoop, endpoint: Callable[..., Callable[[Any], Awaitable[Any]]],
                     body_json: Callable[[Any], Awaitable[dict[str, Any]]], max_import: int = MAX_PACK_BYTES,
                     import_timeout_s: float = IMPORT_TIMEOUT_S) -> list[Any]:
    """The routes above; ``endpoint`` and ``body_json`` are `edge.device.http.build_app`'s (token
    check, error mapping, bounded JSON bodies); ``max_import``: the largest ``POST /import`` body."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response
    from starlette.routing import Route

    from edge.knowledge.cli import sample_listing

    def index_of(name: str) -> int:
        index = loop.labels.find(name)
        if index is None:
            raise UnknownClassError(f"class {name!r}: expected one of {loop.labels.known()}, got an unknown name")
        return int(index)

    def classes_now() -> dict[str, Any]:
        agent = loop.agent
        ledger = agent.knowledge
        out = []
        for item in loop.labels.classes(agent.classes_seen().tolist()):
            pos: Any = ledger.samples_of_label(item["index"]) if ledger is not None else []
            out.append({**item, "ledger_samples": len(pos), "learned_rows": int(agent.stats.count_[item["index"]]),
                        "thumbnails": sum(1 for i in pos if ledger is not None and ledger.thumbs[int(i)])})
        return {"classes": out, "removal": "exact" if agent.removal_is_exact else "refit",
                "last_event": (None if ledger is None or ledger.last_event() is None
                               else ledger.last_event().to_dict())}   # type: ignore[union-attr]

    async def classes(request: Any) -> Any:
        return await run_in_threadpool(classes_now)

    async def samples(request: Any) -> Any:
        offset = _int_param(request, "offset", 0, 0, 10**9)
        limit = _int_param(request, "limit", 50, 1, MAX_PAGE)
        name = request.path_params["name"]
        index = index_of(name)
        rows = sample_listing(loop.agent, index, offset, limit)
        for row in rows:
            row["thumbnail"] = f"/samples/{row['id']}/thumbnail" if row["thumbnail_bytes"] else None
        total = 0 if loop.agent.knowledge is None else int(loop.agent.knowledge.samples_of_label(index).size)
        return {"label": loop.labels.name_of(index), "offset": offset, "total": total, "samples": rows}

    async def thumbnail(request: Any) -> Any:
        sample = _path_int(request, "sample")
        ledger = loop.agent.knowledge
        if ledger is None:
            raise UnknownClassError(f"sample {sample}: expected a sample of the ledger, got no ledger")
        pos = ledger.position_of_sample(sample)
        data = ledger.thumbs[int(pos[0])]
        if not data:
            raise UnknownClassError(f"sample {sample}: expected a thumbnail, got none (dropped by the budget)")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600",
                                                                 "X-Content-Type-Options": "nosniff"})

    def change(action: Callable[[Any], dict[str, Any]], reason: str) -> dict[str, Any]:
        def apply(agent: Any, labels: Any) -> dict[str, Any]:
            done = action(agent)
            label = int(done["label"])
            labels.counts[label] = max(0, int(labels.counts[label]) - int(done.get("samples", 1)))
            done["name"] = labels.name_of(label)
            return done
        result: dict[str, Any] = loop.change_agent(apply, reason)
        return result

    async def delete_sample(request: Any) -> Any:
        sample = _path_int(request, "sample")
        return await run_in_threadpool(change, lambda a: a.remove_sample(sample), "delete sample")

    async def delete_event(request: Any) -> Any:
        event = _path_int(request, "event")
        return await run_in_threadpool(change, lambda a: a.remove_event(event), "delete teach")

    async def undo(request: Any) -> Any:
        data = await body_json(request)
        if data:
            raise InputError(f"undo: expected an empty body or {{}}, got keys {sorted(data)[:5]}")
        return await run_in_threadpool(change, lambda a: a.undo_last(), "undo")

    def export_now(classes: list[str] | None) -> bytes:
        from edge.knowledge.pack import write_pack

        agent = loop.agent
        fingerprint = agent.backbone.manifest.fingerprint if agent.backbone is not None else ""
        fd, path = tempfile.mkstemp(suffix=".pack")
        os.close(fd)
        try:
            write_pack(path, agent, loop.labels, fingerprint=fingerprint, classes=classes)
            with open(path, "rb") as handle:
                return handle.read()
        finally:
            os.unlink(path)

    async def export(request: Any) -> Any:
        raw = request.query_params.get("classes")
        names = [c for c in raw.split(",") if c] if raw else None
        data = await run_in_threadpool(export_now, names)
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="knowledge.pack"'})

    def import_now(path: str, on_conflict: str, re_embed: bool) -> dict[str, Any]:
        from edge.knowledge.pack import import_packs, read_pack

        try:
            pack = read_pack(path)           # verified before the state is touched
        except PackError as exc:
            raise PackError(_http_words(str(exc), path)) from None
        pack = dataclasses.replace(pack, path=IMPORT_BODY)
        per_class = np.bincount(pack.ledger.sample_label, minlength=len(pack.class_names))

        def build(agent: Any, labels: Any) -> tuple[Any, Any, dict[str, Any]]:
            existing = [name for name in pack.class_names if labels.find(name) is not None]
            if existing and on_conflict == "refuse":
                raise ImportConflict(f"{IMPORT_BODY}: classes {existing[:10]}: expected names this state does not "
                                     "have (on_conflict=refuse), got existing classes")
            fingerprint = agent.backbone.manifest.fingerprint if agent.backbone is not None else ""
            embeds = re_embed and pack.fingerprint != fingerprint
            with loop.backbone_lock if embeds else contextlib.nullcontext():
                try:
                    merged, names, report = import_packs(agent, labels, [pack], fingerprint=fingerprint,
                                                         on_conflict=on_conflict, re_embed=re_embed)
                except PackError as exc:
                    raise PackError(_http_words(str(exc), path)) from None
            out: dict[str, Any] = {"added": [], "merged": [], "renamed": {}, "classes": []}
            for k, (name, now) in enumerate(report[0]["classes"].items()):
                action = "renamed" if now != name else "merged" if name in existing else "added"
                if action == "renamed":
                    out["renamed"][name] = now
                else:
                    out[action].append(name)
                out["classes"].append({"name": now, "from": name, "action": action, "samples": int(per_class[k])})
            out.update(samples=int(report[0]["samples"]), events=len(pack.ledger.events()), step=int(merged.step_),
                       re_embedded=embeds)
            return merged, names, out

        result: dict[str, Any] = loop.replace_agent(build, "import")
        return result

    importing: list[bool] = [False]    # one import at a time (the event loop's thread sets it)

    async def import_pack(request: Any) -> Any:
        on_conflict, re_embed = _import_params(request)
        if importing[0]:
            raise UploadError(429, "import: expected one import at a time, got another in progress")
        importing[0] = True
        try:
            path = await receive_pack(request, max_import, import_timeout_s)
            try:
                return await run_in_threadpool(import_now, path, on_conflict, re_embed)
            finally:
                os.unlink(path)
        finally:
            importing[0] = False

    return [Route("/classes", endpoint(classes), methods=["GET"]),
            Route("/classes/{name}/samples", endpoint(samples), methods=["GET"]),
            Route("/samples/{sample}/thumbnail", endpoint(thumbnail, cookie=True), methods=["GET"]),
            Route("/samples/{sample}", endpoint(delete_sample), methods=["DELETE"]),
            Route("/events/{event}", endpoint(delete_event), methods=["DELETE"]),
            Route("/undo", endpoint(undo), methods=["POST"]),
            Route("/export", endpoint(export), methods=["GET"]),
            Route("/import", endpoint(import_pack), methods=["POST"])]
