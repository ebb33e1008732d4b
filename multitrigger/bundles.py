"""A set of DAG bundle names that may be cofinite ("every bundle but ...") and may hold the unknown
bundle (a trigger whose bundle cannot be told). Pure, no imports of the project: ``config`` (what
this instance serves, ``Config.served``), ``scope`` (claim groups) and ``supervisor.claims`` (SQL)
all speak it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bundles:
    """A set of bundle names that may be cofinite: ``names``, or (``complement``) every bundle but
    ``names``; ``unknown``: also the triggers whose bundle is unknown. Closed under & | ~."""

    names: frozenset[str] = frozenset()
    complement: bool = False
    unknown: bool = False

    @classmethod
    def everything(cls) -> Bundles:
        return cls(frozenset(), complement=True, unknown=True)

    def __contains__(self, bundle: object) -> bool:
        if bundle is None:
            return self.unknown
        return (bundle in self.names) != self.complement

    def __invert__(self) -> Bundles:
        return Bundles(self.names, not self.complement, not self.unknown)

    def __and__(self, other: Bundles) -> Bundles:
        a, b = self, other
        match (a.complement, b.complement):
            case (False, False):
                names, complement = a.names & b.names, False
            case (False, True):
                names, complement = a.names - b.names, False
            case (True, False):
                names, complement = b.names - a.names, False
            case _:
                names, complement = a.names | b.names, True
        return Bundles(frozenset(names), complement, a.unknown and b.unknown)

    def __or__(self, other: Bundles) -> Bundles:
        return ~(~self & ~other)

    @property
    def empty(self) -> bool:
        return not self.complement and not self.names and not self.unknown

    def describe(self) -> str:
        if self.complement:
            but = f" but {', '.join(sorted(self.names))}" if self.names else ""
            return f"every bundle{but}" + ("" if self.unknown else " (not unknown ones)")
        listed = ", ".join(sorted(self.names)) or "no bundle"
        return listed + (" and unknown ones" if self.unknown else "")
