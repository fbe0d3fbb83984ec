"""``edge-sim device``: the firmware simulation: a frame clock, a teacher, budgets and power cuts.

The child process (`firmware_sim.device.child`) runs the same `edge.device.loop.DeviceLoop` as
``edge-agent run``; the parent (`firmware_sim.device.sim`) is the camera, the teacher and the power
supply. `firmware_sim.device.experiment.run_device` runs it end to end and writes the report.
"""

from firmware_sim.device.sim import DeviceOptions

__all__ = ["DeviceOptions"]
