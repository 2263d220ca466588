"""Which artifact output is which source output.

Converters rename and reorder outputs (the TFLite converter lists a SavedModel's
outputs in its own order; onnx2tf writes channels-last tensors). Outputs are matched
by name, then by shape where names are lost, never by position alone: a mapping that
shapes cannot decide is an error, not a guess. Pure: no toolchain imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgebuild.errors import StepError
from edgebuild.toolchains.onnx_to_tf import signature_key

NHWC_FROM_NCHW = (0, 2, 3, 1)
NCHW_FROM_NHWC = (0, 3, 1, 2)


@dataclass(frozen=True)
class Match:
    source: str            # the source model's output name
    artifact: str          # the artifact's output name
    index: int             # the artifact output's position
    by: str                # "name" or "shape"
    transpose: tuple[int, ...] | None = None  # applied to the artifact's output

    def to_dict(self) -> dict:
        return {"source": self.source, "artifact": self.artifact, "by": self.by,
                **({"transpose": list(self.transpose)} if self.transpose else {})}


def match_outputs(source: list[tuple[str, tuple]], artifact: list[tuple[str, tuple]]
                  ) -> list[Match]:
    """One Match per source output, in the source's order. Shapes are per-sample or
    batched alike, as long as both sides use the same convention."""
    if len(source) != len(artifact):
        raise StepError(f"the source model has {len(source)} outputs and the artifact "
                        f"{len(artifact)}: {_listing(source)} against {_listing(artifact)}")
    by_name = {}
    for i, (name, _) in enumerate(artifact):
        by_name.setdefault(name, i)
    matches: list[Match | None] = [None] * len(source)
    taken: set[int] = set()
    for s, (name, shape) in enumerate(source):
        for candidate in (name, signature_key(name)):
            i = by_name.get(candidate)
            if i is not None and i not in taken:
                transpose = _transpose(artifact[i][1], shape)
                if transpose is False:
                    raise StepError(f"artifact output '{artifact[i][0]}' has shape "
                                    f"{artifact[i][1]}, source output '{name}' {shape}")
                matches[s] = Match(name, artifact[i][0], i, "name", transpose or None)
                taken.add(i)
                break
    for s, (name, shape) in enumerate(source):
        if matches[s] is not None:
            continue
        free = [i for i in range(len(artifact)) if i not in taken]
        exact = [i for i in free if tuple(artifact[i][1]) == tuple(shape)]
        moved = [i for i in free if _transpose(artifact[i][1], shape)]
        candidates = exact or moved
        if len(candidates) != 1:
            what = "no artifact output has" if not candidates else \
                f"{len(candidates)} artifact outputs have"
            raise StepError(
                f"cannot tell which artifact output is source output '{name}' {shape}: the "
                f"names differ ({_listing(artifact)}) and {what} its shape; give the source "
                "model's outputs distinct names that the converter keeps, or distinct shapes")
        i = candidates[0]
        transpose = None if exact else _transpose(artifact[i][1], shape)
        matches[s] = Match(name, artifact[i][0], i, "shape", transpose)
        taken.add(i)
    return [m for m in matches if m is not None]


def _transpose(got: tuple, want: tuple) -> tuple[int, ...] | bool | None:
    """None if the shapes are equal, the permutation that turns a channels-last `got`
    into a channels-first `want` (what onnx2tf does to 4-D tensors), False if neither."""
    got, want = tuple(got), tuple(want)
    if got == want:
        return None
    if len(got) == 4 and tuple(got[i] for i in NCHW_FROM_NHWC) == want:
        return NCHW_FROM_NHWC
    return False


def _listing(outputs: list[tuple[str, tuple]]) -> str:
    return ", ".join(f"'{n}' {tuple(s)}" for n, s in outputs)
