"""``edge-agent`` verbs on what a (stopped) agent learned: undo, forget, rename, samples, export,
import and upgrade. Registered by ``edge.cli.build_parser`` through `add_knowledge_subparsers`.

Every verb takes the state folder's lock, works on the newest checkpoint and saves a new one
atomically (``samples`` and ``export`` only read). Removal is exact for the statistics strategies
(``slda``, ``ncm``, ``ridge``: their per-sample sums are subtracted, the answers are those of a state that
never learned the samples) and a refit for the gradient heads (the samples leave the replay buffer
and the head is retrained from what remains).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from edge.errors import InputError

logger = logging.getLogger(__name__)

REMOVAL_HELP = ("Removal is exact for the statistics strategies slda, ncm and ridge (their per-sample sums are "
                "subtracted: answers equal a state that never learned the samples); for the gradient "
                "strategies the samples leave the replay buffer and the head is refitted from what remains. "
                "Works on a stopped agent's state (the folder's lock is taken).")


def _open(args: argparse.Namespace, exclusive: bool) -> tuple[Any, Any, Any]:
    from edge.cli import _open as open_state

    agent, store, step, labels = open_state(args, exclusive=exclusive)
    if agent.knowledge is None:
        if step is not None:
            print("note: this state was taught before the teach ledger: its earlier teaches cannot be "
                  "undone one by one and have no thumbnails (new teaches are recorded)")
        agent.enable_ledger()
    return agent, store, labels


def _save(store: Any, agent: Any, labels: Any) -> Any:
    from edge.cli import _save_with_labels

    return _save_with_labels(store, agent, labels)


def _locked(args: argparse.Namespace) -> Any:
    from edge.lock import StateLock

    return StateLock(args.state, timeout_s=args.lock_timeout)


def _index(labels: Any, name: str) -> int:
    from edge.device.labels import UnknownClassError

    index = labels.find(name)
    if index is None:
        raise UnknownClassError(f"class {name!r}: expected one of {labels.known()}, got an unknown name")
    return int(index)


def _cmd_undo(args: argparse.Namespace) -> int:
    with _locked(args):
        agent, store, labels = _open(args, exclusive=True)
        if args.sample is not None:
            done = agent.remove_sample(args.sample)
        elif args.event is not None:
            done = agent.remove_event(args.event)
        else:
            done = agent.undo_last()
        removed = done.get("samples", 1)
        labels.counts[done["label"]] = max(0, int(labels.counts[done["label"]]) - removed)
        path = _save(store, agent, labels)
    what = f"sample {done['sample']}" if "sample" in done else f"teach {done['event']} ({removed} samples)"
    print(f"removed {what} of class {labels.name_of(done['label'])} ({done['removal']}); saved {path}")
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    with _locked(args):
        agent, store, labels = _open(args, exclusive=True)
        index = _index(labels, args.label)
        done = agent.remove_label(index)
        # the index is free for a new class once the agent holds nothing of it; else it stays retired
        labels.forget(index, reuse=bool(done["complete"]) and index not in agent.classes_seen().tolist())
        path = _save(store, agent, labels)
    tail = ("" if done["complete"] else
            "; rows learned before the ledger stay in the state, masked from every answer")
    print(f"forgot class {args.label}: {done['samples']} samples removed ({done['removal']}){tail}; saved {path}")
    return 0


def _cmd_rename(args: argparse.Namespace) -> int:
    with _locked(args):
        agent, store, labels = _open(args, exclusive=True)
        index = labels.rename(args.label, args.to)
        path = _save(store, agent, labels)
    print(f"renamed class {args.label} (index {index}) to {args.to}; saved {path}")
    return 0


def sample_listing(agent: Any, index: int, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
    """The ledger's samples of one class: id, event, time, source, thumbnail bytes (oldest first)."""
    ledger = agent.knowledge
    if ledger is None:
        return []
    out = []
    pos = ledger.samples_of_label(index)
    end = None if limit is None else offset + limit
    for i in pos[offset:end]:
        event = ledger.event(int(ledger.sample_event[i]))
        out.append({"id": int(ledger.sample_id[i]), "event": int(ledger.sample_event[i]), "time": event["time"],
                    "source": event["source"], "thumbnail_bytes": len(ledger.thumbs[int(i)])})
    return out


def _cmd_samples(args: argparse.Namespace) -> int:
    agent, _, labels = _open(args, exclusive=False)
    index = _index(labels, args.label)
    rows = sample_listing(agent, index)
    if args.thumbnails:
        folder = Path(args.thumbnails)
        folder.mkdir(parents=True, exist_ok=True)
        for row, i in zip(rows, agent.knowledge.samples_of_label(index)):
            data = agent.knowledge.thumbs[int(i)]
            if data:
                (folder / f"{row['id']}.jpg").write_bytes(data)
    if args.json:
        print(json.dumps({"label": labels.name_of(index), "index": index,
                          "learned_rows": int(agent.stats.count_[index]), "samples": rows}))
        return 0
    print(f"class {labels.name_of(index)} (index {index}): {len(rows)} samples in the ledger, "
          f"{int(agent.stats.count_[index])} rows learned")
    for row in rows:
        print(f"{row['id']}\tevent {row['event']}\t{row['source']}\t{row['thumbnail_bytes']} B")
    return 0


def _fingerprint(agent: Any) -> str:
    return str(agent.backbone.manifest.fingerprint)


def _cmd_export(args: argparse.Namespace) -> int:
    from edge.knowledge.pack import write_pack

    agent, _, labels = _open(args, exclusive=False)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    header = write_pack(args.output, agent, labels, fingerprint=_fingerprint(agent), classes=classes)
    summary = ", ".join(f"{c['name']} ({c['samples']})" for c in header["classes"])
    print(f"exported {summary} to {args.output} ({os.path.getsize(args.output)} bytes)")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from edge.knowledge.pack import import_packs, read_pack

    packs = [read_pack(p) for p in args.packs]   # every pack verified before the state is touched
    with _locked(args):
        agent, store, labels = _open(args, exclusive=True)
        merged, names, report = import_packs(agent, labels, packs, fingerprint=_fingerprint(agent),
                                             on_conflict=args.on_conflict, re_embed=args.re_embed)
        path = _save(store, merged, names)
    for item in report:
        print(f"imported {item['samples']} samples from {item['pack']}: " +
              ", ".join(f"{a} -> {b}" for a, b in item["classes"].items()))
    print(f"saved {path}")
    return 0


def _cmd_upgrade(args: argparse.Namespace) -> int:
    from edge.checkpoint import CheckpointStore
    from edge.config import validate_agent_config
    from edge.knowledge.upgrade import upgrade_agent
    from edge.model_store import default_precision, resolve_model
    from edge.runtimes import open_backbone

    new_dir = resolve_model(args.model)
    old_args = argparse.Namespace(**{**vars(args), "model": args.from_model, "precision": args.from_precision})
    with _locked(old_args):
        old, _, labels = _open(old_args, exclusive=False)
    backbone = open_backbone(new_dir, runtime=args.runtime,
                             precision=args.precision or default_precision(new_dir, args.runtime),
                             num_threads=args.threads, providers=args.providers)
    out = Path(args.out) if args.out else Path(f"{str(args.state).rstrip('/')}-{backbone.manifest.name}")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out}: expected an empty or new folder, got one with files (a state is kept, "
                         "never overwritten)")
    agent, report = upgrade_agent(old, backbone)
    store = CheckpointStore(out, backbone.manifest.fingerprint, validate_config=validate_agent_config)
    path = _save(store, agent, labels)
    print(f"upgraded {report['samples']} samples of {len(report['classes'])} classes "
          f"({report['lost_samples']} without a thumbnail were not carried) to {backbone.manifest.name}; "
          f"saved {path}; the old state in {args.state} is kept")
    return 0 if not report["lost_classes"] else 1


def add_knowledge_subparsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add undo, forget, rename, samples, export, import and upgrade to ``edge-agent``."""
    from edge.lock import DEFAULT_TIMEOUT_S

    def lock(p: argparse.ArgumentParser) -> None:
        from edge.cli import _add_lock_timeout

        _add_lock_timeout(p, DEFAULT_TIMEOUT_S, "wait this long for another writer's lock")

    p = sub.add_parser("undo", parents=[common], help="undo the last teach (or one teach event or sample)",
                       description="Undo the newest teach, or --event ID, or --sample ID. " + REMOVAL_HELP)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--event", type=int, default=None, help="a teach event id (edge-agent samples shows them)")
    what.add_argument("--sample", type=int, default=None, help="one sample id")
    lock(p)
    p.set_defaults(func=_cmd_undo)

    p = sub.add_parser("forget", parents=[common], help="forget a class (its samples removed, its name freed)",
                       description="Forget a class. " + REMOVAL_HELP)
    p.add_argument("--label", required=True, help="class name")
    lock(p)
    p.set_defaults(func=_cmd_forget)

    p = sub.add_parser("rename", parents=[common], help="rename a class")
    p.add_argument("--label", required=True, help="class name now")
    p.add_argument("--to", required=True, help="new name")
    lock(p)
    p.set_defaults(func=_cmd_rename)

    p = sub.add_parser("samples", parents=[common], help="list the taught samples of a class")
    p.add_argument("--label", required=True, help="class name")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--thumbnails", default=None, metavar="DIR", help="also write the thumbnails as DIR/<id>.jpg")
    p.set_defaults(func=_cmd_samples)

    p = sub.add_parser("export", parents=[common], help="write what was learned (classes, rows, thumbnails, "
                       "ledger) to one verified pack file")
    p.add_argument("--classes", default=None, help="comma-separated class names (default: every class)")
    p.add_argument("-o", "--output", required=True, help="pack file to write")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("import", parents=[common], help="merge pack files into the state",
                       description="Merge packs (edge-agent export). Statistics strategies (slda, ncm, ridge) merge "
                                   "exactly: the result equals one device taught everything; gradient "
                                   "strategies learn the rows and their buffer keeps what its policy keeps. "
                                   "A pack from another backbone is refused unless --re-embed.")
    p.add_argument("packs", nargs="+", help="pack files")
    p.add_argument("--on-conflict", choices=("merge", "rename", "refuse"), default="merge",
                   help="a class name the state has: merge into it (default), rename (name-2), refuse")
    p.add_argument("--re-embed", action="store_true",
                   help="a pack of another backbone: embed its thumbnails with this one")
    lock(p)
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("upgrade", parents=[common], help="move a state to a new backbone by re-embedding its "
                       "thumbnails (the old state is kept)")
    p.add_argument("--from-model", required=True, help="the backbone the state was taught on (folder or NAME)")
    p.add_argument("--from-precision", default=None, choices=("fp32", "int8"), help="its precision")
    p.add_argument("--out", default=None, help="new state folder (default: STATE-<new model name>)")
    lock(p)
    p.set_defaults(func=_cmd_upgrade)


def thumbnails_flash_bytes(thumbnails: list[bytes]) -> int:
    """Bytes the thumbnails add to a checkpoint (their JPEG bytes + one int64 offset each)."""
    return int(sum(len(t) for t in thumbnails) + 8 * len(thumbnails))


