"""Keep `edge-host` output to what matters: TensorFlow's log noise off, real warnings and errors on.

Each kind of noise is silenced at the narrowest place that works:

- C++ INFO/WARNING lines that honour ``TF_CPP_MIN_LOG_LEVEL``: set to 2 before TensorFlow loads
  (`quiet_tensorflow`). C++ errors still print.
- Python loggers ``tensorflow``, ``absl`` and ``tf2onnx`` at ERROR (TensorFlow's "triggered
  tf.function retracing" notices are WARNINGs); our own loggers stay at WARNING.
- The converter's ``UserWarning: Statistics for quantized inputs were expected`` (int8 export with
  no input statistics is what we ask for) is filtered by its message; other warnings still show.
- Keras's "Saved artifact at ... TensorSpec(...)" listing, printed while the TFLite converter saves
  a temporary SavedModel: Keras interactive logging is switched off around export only
  (`keras_prints_to_log`), so it goes to the absl logger at INFO; training progress is untouched.
- What ignores every setting — lines TensorFlow writes while loading, before absl logging is
  initialised (the oneDNN notice), a known-harmless tf.data error line, the MLIR quantizer's
  ``fully_quantize: ...`` printf and LiteRT's XNNPACK INFO line — is dropped by `filtered_stderr`,
  which passes file descriptor 2 through a filter process that removes exactly the lines matching
  `NOISE` and forwards everything else (a separate process, so a crash message still gets out).

``edge-host -v`` skips all of it.

Example:
    >>> is_noise(b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
    True
    >>> is_noise(b"E0000 00:00:1.2 4657 cuda_dnn.cc:1] could not create cudnn handle")
    False
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import warnings
from typing import Iterator

# Whole lines (without the newline) that carry no information for a user of edge-host.
NOISE: tuple[re.Pattern[bytes], ...] = (
    # absl's notice printed before the first pre-initialisation message.
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    # absl/TF C++ INFO lines (absl format: I<mmdd> <time> <thread> <file>:<line>] ...).
    re.compile(rb"^I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "),
    # tf.data graph rewrite on TF 2.18+: harmless, logged at ERROR on every fit/predict.
    re.compile(rb"^E\d{4} [\d:.]+ +\d+ node_def_util\.cc:\d+\] NodeDef mentions attribute "
               rb"use_unbounded_threadpool which is not in the op definition"),
    # printf from the MLIR quantizer during full-int8 conversion.
    re.compile(rb"^fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, "
               rb"output_inference_type: \w+$"),
    # LiteRT's one-line INFO when an interpreter gets its default CPU delegate.
    re.compile(rb"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
)

NOISY_LOGGERS = ("tensorflow", "absl", "tf2onnx")


def is_noise(line: bytes) -> bool:
    """True if ``line`` (one stderr line, newline stripped) is known noise from TensorFlow/LiteRT."""
    line = line.rstrip(b"\r\n")
    return any(pattern.search(line) for pattern in NOISE)


def quiet_tensorflow() -> None:
    """Quiet TensorFlow's C++ and Python logging; call before TensorFlow is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected",
                            category=UserWarning)


@contextlib.contextmanager
def keras_prints_to_log() -> Iterator[None]:
    """Within the block, Keras's own prints go to the absl logger at INFO instead of stdout."""
    import keras

    was_on = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        yield
    finally:
        if was_on:
            keras.config.enable_interactive_logging()


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Within the block, file descriptor 2 goes through a filter that drops `NOISE` lines.

    Covers output from C/C++ code too (it is the descriptor, not ``sys.stderr``, that is
    redirected). If the filter process cannot start, stderr is left as it is.
    """
    sys.stderr.flush()
    saved: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        saved = os.dup(2)
        proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__)],
                                stdin=subprocess.PIPE, stdout=saved, stderr=saved)
    except OSError as exc:  # no stderr at all, or no process: leave stderr as it is
        logging.getLogger(__name__).debug("stderr filter not started: %s", exc)
        if saved is not None:
            os.close(saved)
    if saved is None or proc is None or proc.stdin is None:
        yield
        return
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the filter drains it and exits
        os.close(saved)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a child process still holds the pipe; it forwards on its own
            pass


def _filter_main() -> int:
    """The filter process: stdin -> stdout, `NOISE` lines dropped, everything else forwarded at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent; keep forwarding its traceback
    out = sys.stdout.buffer
    pending = b""
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if not is_noise(line):
                out.write(line + b"\n")
        if pending and (b"\r" in pending or len(pending) > 4096):  # progress bars, huge lines: no wait
            out.write(pending)
            pending = b""
        out.flush()
    if pending and not is_noise(pending):
        out.write(pending)
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_filter_main())
