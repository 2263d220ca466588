"""Targets: a device profile's step slots, overridden by the target's own, resolved
into typed step parameters, checked, with budgets and fallback ladders."""

from __future__ import annotations

from edgebuild.recipe.devices import merge_slots
from edgebuild.recipe.model import SLOTS, Dataset, Device, Target
from edgebuild.recipe.rules import TargetRules, resolved_quantize
from edgebuild.steps.params import SLOT_PARAMS, QuantizeParams

DEFAULT_RUNTIME = {"tflite": "litert", "onnx": "onnxruntime"}  # a device's other format
ON_BY_DEFAULT = {"convert", "validate", "bundle"}  # the rest run where a profile asks


class TargetSlots(TargetRules):
    def _target(self, name: str, spec: dict, devices: dict[str, Device],
                calibration: Dataset | None, validation: Dataset | None) -> Target | None:
        where = ("targets", name)
        device = devices.get(spec["device"])
        if device is None:
            self.complain((*where, "device"), f"'{spec['device']}' is not a known device "
                          f"(known: {', '.join(sorted(devices))})")
            return None
        fmt = spec.get("format", device.format)
        if fmt not in device.formats:
            self.complain((*where, "format"), f"'{fmt}' is not a format of device "
                          f"'{device.name}' (choose one of: {', '.join(device.formats)})")
        profile = device.steps
        if self.train is not None:  # e.g. cloud-gpu clusters once it can fine-tune
            profile = merge_slots(profile, device.with_training_data)
        slots = merge_slots(profile, {k: v for k, v in spec.items() if k in SLOTS})
        steps = {}
        for slot in SLOTS:
            value = slots.get(slot, {} if slot in ON_BY_DEFAULT else False)
            if value is False:
                continue
            steps[slot] = SLOT_PARAMS[slot].from_dict(value if isinstance(value, dict) else {})
        self._check_target(where, device, fmt, steps, calibration, validation)
        self._check_optimizations(where, spec, steps)
        self._check_layers(where, spec, steps)
        budget = self._budget(where, device, spec.get("budget", {}), steps)
        fallback = self._fallback(where, spec.get("fallback"), device, fmt, steps, budget)
        fallback = tuple((rung, self.resolved_qat(resolved_quantize(q, fmt)))
                         for rung, q in fallback)
        if "quantize" in steps:
            steps["quantize"] = self.resolved_qat(resolved_quantize(steps["quantize"], fmt))
        if fallback:
            steps = _with_quantize(steps, fallback[0][1])  # the ladder starts at its top
        runtime = spec.get("runtime") or (device.runtime if fmt == device.format
                                          else DEFAULT_RUNTIME[fmt])
        return Target(name=name, device=device, format=fmt, runtime=runtime, steps=steps,
                      budget=budget, fallback=fallback)


def _with_quantize(steps: dict, quantize: QuantizeParams | None) -> dict:
    """The target's slots with the quantize slot replaced (None: no quantization)."""
    replaced = {slot: params for slot, params in steps.items() if slot != "quantize"}
    if quantize is not None:
        replaced["quantize"] = quantize
    return {slot: replaced[slot] for slot in SLOTS if slot in replaced}

