"""HTTP routes over what a running agent learned (issue 25), included by `edge.device.http.build_app`.

Routes (behind the API's token, Host/Origin and content-type checks, JSON errors):

* ``GET /classes``: each class with its index, name, ledger samples, learned rows and thumbnails;
* ``GET /classes/<name>/samples?offset=0&limit=50``: its samples, oldest first (id, event, time,
  source, thumbnail bytes, ``thumbnail`` URL), paged;
* ``GET /samples/<id>/thumbnail``: the JPEG (the token cookie is accepted, for ``<img>``);
* ``DELETE /samples/<id>``, ``DELETE /events/<id>``: remove one sample or one teach event;
* ``POST /undo``: undo the newest teach event;
* ``GET /export?classes=a,b``: a knowledge pack (`edge.knowledge.pack`) of those classes (default all).

Removal is exact for ``slda``/``ncm`` and a refit for gradient heads (``removal`` in each answer);
every change is made on a copy of the agent, swapped in and checkpointed (`DeviceLoop.change_agent`).
Import is the CLI's (``edge-agent import`` on the stopped agent's state): a pack is larger than the
API's body limit.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Awaitable, Callable

from edge.device.labels import UnknownClassError
from edge.device.loop import DeviceLoop
from edge.errors import InputError

MAX_PAGE = 200


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


def knowledge_routes(loop: DeviceLoop, endpoint: Callable[..., Callable[[Any], Awaitable[Any]]],
                     body_json: Callable[[Any], Awaitable[dict[str, Any]]]) -> list[Any]:
    """The routes above; ``endpoint`` and ``body_json`` are `edge.device.http.build_app`'s (token
    check, error mapping, bounded JSON bodies)."""
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

    return [Route("/classes", endpoint(classes), methods=["GET"]),
            Route("/classes/{name}/samples", endpoint(samples), methods=["GET"]),
            Route("/samples/{sample}/thumbnail", endpoint(thumbnail, cookie=True), methods=["GET"]),
            Route("/samples/{sample}", endpoint(delete_sample), methods=["DELETE"]),
            Route("/events/{event}", endpoint(delete_event), methods=["DELETE"]),
            Route("/undo", endpoint(undo), methods=["POST"]),
            Route("/export", endpoint(export), methods=["GET"])]
