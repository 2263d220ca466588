"""Device profiles: the catalog's, merged with the recipe's own `devices:` (which
may extend a catalog device), typed as Device."""

from __future__ import annotations

from edgebuild.catalog import load_catalog
from edgebuild.recipe.model import Device
from edgebuild.recipe.problems import ProblemLog


class DeviceProfiles(ProblemLog):
    known_valid: bool

    def _devices(self, own: dict) -> dict[str, Device]:
        profiles = dict(load_catalog(validate=not self.known_valid))
        for name, spec in own.items():
            base = spec.get("extends")
            if base is not None and base not in profiles:
                self.complain(("devices", name, "extends"),
                              f"'{base}' is not a known device (known: {', '.join(profiles)})")
                continue
            merged = dict(profiles.get(base, {})) if base else {}
            for slots in ("steps", "with_training_data"):
                merged[slots] = merge_slots(merged.get(slots, {}), spec.get(slots, {}))
            merged["budget"] = {**merged.get("budget", {}), **spec.get("budget", {})}
            merged.update({k: v for k, v in spec.items()
                           if k not in ("extends", "steps", "with_training_data", "budget")})
            missing = [k for k in ("family", "runtime", "format") if k not in merged]
            if missing:
                self.complain(("devices", name), f"missing {', '.join(missing)} "
                              "(set them, or `extends:` a catalog device)")
                continue
            merged.setdefault("description", name)
            profiles[name] = merged
        return {name: _device(name, spec) for name, spec in profiles.items()
                if "format" in spec}


def _device(name: str, spec: dict) -> Device:
    return Device(name=name, description=spec.get("description", name), family=spec["family"],
                  runtime=spec["runtime"], format=spec["format"],
                  formats=tuple(spec.get("formats", [spec["format"]])),
                  integer_only=spec.get("integer_only", False), steps=spec.get("steps", {}),
                  notes=spec.get("notes", ""),
                  with_training_data=spec.get("with_training_data", {}),
                  budget=spec.get("budget", {}))


def merge_slots(base: dict, override: dict) -> dict:
    """Override a profile's slots: `false` switches off, a mapping merges over the
    profile's parameters, `true` keeps them."""
    merged = dict(base)
    for slot, value in override.items():
        if value is True:
            merged[slot] = merged.get(slot) or {}
        elif isinstance(value, dict) and isinstance(merged.get(slot), dict):
            merged[slot] = {**merged[slot], **value}
        else:
            merged[slot] = value
    return merged

