"""Host tool: pretrain a backbone, freeze it and export it for the device (TensorFlow/Keras).

What lives here: the backbone registry (`host.backbones`, with `host.efficientnet_lite`,
`host.pretrained` and `host.torch_weights` for the ImageNet EfficientNet-Lite0), pretraining
(`host.pretrain`), export to TFLite/ONNX with the manifest (`host.export`, `host.tflite_ops`),
trainable-head export (`host.export_head`), the parity check (`host.parity`), model bundles for a
device (`host.bundle`), wheels fetched once into a cache (`host.downloads`: the sample photographs;
no TensorFlow), and the `edge-host` command (`host.cli`, with `host.quiet` keeping
TensorFlow's log noise out of its output).

This is the only package that imports TensorFlow/Keras. Nothing in `edge/` or `firmware_sim/` may
import `host` (a device has no TensorFlow); `host` may use `edge` (the manifest schema) and
`firmware_sim` (data sources). `host.cli` and `host.quiet` import no TensorFlow at module level, so
`edge-host --help` and the missing-extra message work in a device-only install.
"""

from edge.version import __version__

__all__ = ["__version__"]
