"""The spec's `defenses` axis: which input defenses every target is evaluated behind, and
how adaptive attacks go through them.

```yaml
defenses:
  names: [jpeg-q75, resize-pad-1.15]
  adaptive: true      # also craft every attack through each defense (default true)
  bpda: true          # BPDA for non-differentiable defenses (JPEG, bit depth)
  eot_samples: 4      # draws averaged per step for randomized defenses (EOT)
  seed: 0             # seeds the defenses' own randomness
```

Defended victims get derived names: `<target>+<defense>` (evaluation) and
`<source>+<defense>/adaptive` (crafting through the defense); the store keeps the plain
victim names and puts `<defense>` or `<defense>/adaptive` in its `defense` column.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)

from robust.errors import RobustError

__all__ = ["ADAPTIVE_SUFFIX", "DefenseAxis"]

ADAPTIVE_SUFFIX: Final[str] = "/adaptive"


class DefenseAxis(BaseModel):
    """Defenses of a matrix experiment and the adaptive-attack settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    names: list[str] = Field(min_length=1)
    adaptive: bool = True
    bpda: bool = True
    eot_samples: PositiveInt = 4
    seed: NonNegativeInt = 0

    @field_validator("names")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        from robust.defenses import parse_defense

        try:
            names = [parse_defense(name).name for name in value]
        except RobustError as error:
            raise ValueError(str(error)) from None
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"defense {duplicates[0]!r} is listed twice; list each once")
        return names

    @model_validator(mode="after")
    def _adaptive_needs_gradients(self) -> DefenseAxis:
        from robust.defenses import parse_defense

        if self.adaptive and not self.bpda:
            blocked = [name for name in self.names if not parse_defense(name).differentiable]
            if blocked:
                raise ValueError(
                    f"{', '.join(blocked)} not differentiable, so adaptive attacks through "
                    "them need BPDA; set bpda: true (or adaptive: false)"
                )
        return self

    def defended_name(self, victim: str, defense: str, *, adaptive: bool) -> str:
        """The derived victim name of `victim` behind `defense`."""
        return f"{victim}+{defense}{ADAPTIVE_SUFFIX if adaptive else ''}"

    def column(self, defense: str, *, adaptive: bool) -> str:
        """The store's `defense` value of a cell."""
        return f"{defense}{ADAPTIVE_SUFFIX if adaptive else ''}"

    def resolve(self, name: str, refs: list[Any]) -> dict[str, str] | None:
        """`{name, spec}` of a derived defended victim name over `refs`, or None."""
        from robust.defenses import defended_spec

        for ref in refs:
            for defense in self.names:
                for adaptive in (False, True):
                    if name != self.defended_name(ref.name, defense, adaptive=adaptive):
                        continue
                    settings = (
                        {"adaptive": True, "bpda": self.bpda, "eot_samples": self.eot_samples}
                        if adaptive
                        else {}
                    )
                    spec = defended_spec(defense, ref.spec, seed=self.seed, **settings)
                    return {"name": name, "spec": spec}
        return None
