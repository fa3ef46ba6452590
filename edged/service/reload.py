"""Reload as data: which components a settings change rebuilds, reconfigures, or refuses.

:func:`diff` compares two validated :class:`~edged.config.Settings` key by key and reads
each changed key's policy from the config models' metadata (:class:`edged.config.Reload`),
so the policy lives next to the key it governs and the daemon only executes the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from edged.config import Change, Component, Settings, key_policy
from edged.errors import ConfigError


@dataclass(frozen=True)
class ReloadPlan:
    """What applying new settings takes, derived from the keys that changed."""

    #: Every dotted key whose value differs (``cameras`` as a whole).
    changed: tuple[str, ...] = ()
    #: Changed keys only a restart applies; a plan with any is refused.
    restart_only: tuple[str, ...] = ()
    #: Components built anew before anything switches over.
    rebuild: frozenset[Component] = frozenset()
    #: Components whose ``reconfigure`` takes the new settings in place.
    reconfigure: frozenset[Component] = frozenset()

    def touches(self, component: Component) -> bool:
        return component in self.rebuild or component in self.reconfigure

    def check_restart_only(self) -> None:
        """Raise :class:`ConfigError` naming the first key only a restart can change."""
        if self.restart_only:
            raise ConfigError(f"{self.restart_only[0]} cannot change while running; restart edged")


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Dotted keys whose values differ: ``section.key`` for sections, the name otherwise."""
    after = dict(new)
    keys: list[str] = []
    for name, before in old:
        now = after[name]
        if isinstance(before, BaseModel) and isinstance(now, BaseModel):
            fields = dict(now)
            keys.extend(f"{name}.{k}" for k, v in before if fields[k] != v)
        elif before != now:
            keys.append(name)
    return keys


def diff(old: Settings, new: Settings) -> ReloadPlan:
    """The plan that takes a running daemon from ``old`` to ``new``."""
    changed = changed_keys(old, new)
    restart: list[str] = []
    rebuild: set[Component] = set()
    reconfigure: set[Component] = set()
    for key in changed:
        policy = key_policy(key)
        if policy is None or policy.change is Change.RESTART:
            restart.append(key)
        elif policy.change is Change.REBUILD:
            rebuild.update(policy.components)
        else:
            reconfigure.update(policy.components)
    return ReloadPlan(
        tuple(changed), tuple(restart), frozenset(rebuild), frozenset(reconfigure - rebuild)
    )


__all__ = ["ReloadPlan", "changed_keys", "diff"]
