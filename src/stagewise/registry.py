"""The one place strategies register: trainable selectors, losses, LR rules, data transforms.

A strategy is a folder under ``stagewise/strategies`` whose ``__init__`` calls
``SELECTORS.register(...)`` (or one of the other registries) with a pydantic config
class and an implementation, like a PEFT tuner registering its config and model.
Recipes name a registered entry by ``kind``; its config class validates the rest
of the keys, so a typo in a strategy option is a recipe error with a line number.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Generic, TypeVar

from pydantic import ConfigDict

from .errors import RecipeError
from .schema import StrictModel

Impl = TypeVar("Impl", bound=Callable[..., Any])


class PluginConfig(StrictModel):
    """Base of every registered entry's options; ``kind`` names the entry."""

    model_config = ConfigDict(frozen=True, validate_assignment=False)
    acts_on_wrapper: ClassVar[bool] = False  # selectors only: receives the adapter-wrapped model
    stage_wide: ClassVar[bool] = False       # transforms only: one pass over all the stage's datasets together
    kind: str


@dataclass(frozen=True)
class Entry(Generic[Impl]):
    name: str
    config_cls: type[PluginConfig]
    impl: Impl


class Registry(Generic[Impl]):
    """Name -> (config class, implementation) for one extension point."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry[Impl]] = {}

    def register(self, name: str, config_cls: type[PluginConfig] | None = None) -> Callable[[Impl], Impl]:
        """Decorator: ``@SELECTORS.register("hft", HFTConfig)`` on the implementation."""

        def decorate(impl: Impl) -> Impl:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._entries[name] = Entry(name, config_cls or PluginConfig, impl)
            return impl

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry[Impl]:
        try:
            return self._entries[name]
        except KeyError:
            hint = difflib.get_close_matches(name, self._entries, n=1)
            maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise RecipeError(
                f"unknown {self.what} {name!r}{maybe}; expected one of: {', '.join(self.names())}"
            ) from None

    def normalize(self, raw: Any) -> dict[str, Any]:
        """Accept ``"name"`` or ``{kind: name, ...}`` and return the dict form."""
        if isinstance(raw, PluginConfig):
            return raw.model_dump()
        if isinstance(raw, str):
            return {"kind": raw}
        if isinstance(raw, dict) and isinstance(raw.get("kind"), str):
            return dict(raw)
        raise RecipeError(f"expected a {self.what} name or a mapping with 'kind', got {raw!r}")

    def impl(self, config: PluginConfig) -> Impl:
        return self.get(config.kind).impl


SELECTORS: Registry[Callable[..., Any]] = Registry("trainable selector")
LOSSES: Registry[Callable[..., Any]] = Registry("loss")
LR_RULES: Registry[Callable[..., Any]] = Registry("lr_rule")
TRANSFORMS: Registry[Callable[..., Any]] = Registry("data transform")


def load_plugins() -> None:
    """Import every module that registers entries (idempotent; imports are cached)."""
    import importlib

    for module in ("selection", "losses", "schedules", "transforms", "strategies"):
        importlib.import_module(f"{__package__}.{module}")
