"""What the device learned, visible and movable: the teach ledger with thumbnails
(`edge.knowledge.ledger`, `edge.knowledge.thumbnails`), undo/delete (``Agent.forget_samples`` and
friends), packs to export/import/merge (`edge.knowledge.pack`) and backbone upgrades
(`edge.knowledge.upgrade`); CLI verbs in `edge.knowledge.cli`."""
