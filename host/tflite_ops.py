"""Op listing of ``.tflite`` files, used at export time to refuse Flex (select TF) and custom ops.

Parses the flatbuffer with LiteRT's generated schema (``ai_edge_litert``), so it imports neither
TensorFlow nor an interpreter, and lists every subgraph (each signature of a trainable head file is
its own subgraph; ``Interpreter._get_ops_details()`` lists only the first one).

Example:
    >>> from host.tflite_ops import non_builtin_ops
    >>> non_builtin_ops(["ADD", "FlexReluGrad", "CUSTOM"])
    ['FlexReluGrad', 'CUSTOM']
"""

from __future__ import annotations

import os
from pathlib import Path


def tflite_op_names(model: str | os.PathLike[str] | bytes) -> list[str]:
    """Sorted op names used by every subgraph of a ``.tflite`` file or buffer (custom ops by their
    custom code, e.g. ``FlexReluGrad``)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as exc:  # tflite_runtime ships no schema module
        raise ImportError("listing ops needs ai-edge-litert (its schema module) and flatbuffers") from exc
    buf = bytes(model) if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    root = schema.Model.GetRootAsModel(buf, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(root.OperatorCodesLength()):
        oc = root.OperatorCodes(i)
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        custom = oc.CustomCode()
        codes.append(custom.decode() if custom else names.get(code, f"BUILTIN_{code}"))
    used = set()
    for g in range(root.SubgraphsLength()):
        sub = root.Subgraphs(g)
        for j in range(sub.OperatorsLength()):
            used.add(codes[sub.Operators(j).OpcodeIndex()])
    return sorted(used)


def non_builtin_ops(ops: list[str]) -> list[str]:
    """The Flex (select TF) and custom ops of an op list (what device runtimes lack)."""
    from_builtins: set[str] = set()
    try:
        from ai_edge_litert import schema_py_generated as schema

        from_builtins = {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")}
    except ImportError:
        pass
    return [op for op in ops if op.startswith("Flex") or op.upper() in ("CUSTOM", "DELEGATE")
            or (bool(from_builtins) and op not in from_builtins)]
