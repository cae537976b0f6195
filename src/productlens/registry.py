"""A small lazy registry: names map to factories given as 'module:function' strings.

Factories are imported only when created, so listing models never imports torch
or onnxruntime (the timm lesson: do not import every architecture eagerly).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from productlens.types import ProductLensError


class UnknownName(ProductLensError, KeyError):
    """A name no factory is registered for: a clear ProductLensError, still a KeyError for callers that
    catch one."""

    def __str__(self) -> str:  # KeyError's own would print the message in quotes
        return str(self.args[0]) if self.args else ""


class Registry:
    """Names -> factories, with optional prefix handlers such as ``onnx:PATH``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, str] = {}
        self._prefixes: dict[str, str] = {}

    def register(self, name: str, target: str) -> None:
        """Register ``name`` as ``'package.module:function'``."""
        self._entries[name] = target

    def register_prefix(self, prefix: str, target: str) -> None:
        """Register a factory for names ``prefix:ARG``; it is called with ARG first."""
        self._prefixes[prefix] = target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return isinstance(name, str) and (name in self._entries or self._prefix_of(name) is not None)

    def _prefix_of(self, name: str) -> str | None:
        if not isinstance(name, str):
            raise UnknownName(f"the {self.kind} name must be a string, got {name!r:.40}")
        head, sep, _ = name.partition(":")
        return head if sep and head in self._prefixes else None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Create the object registered as ``name`` (or handled by its prefix)."""
        prefix = self._prefix_of(name)
        if prefix is not None:
            return _load(self._prefixes[prefix])(name[len(prefix) + 1 :], **kwargs)
        if name not in self._entries:
            known = ", ".join(self.names() + [p + ":..." for p in sorted(self._prefixes)])
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {known}")
        return _load(self._entries[name])(**kwargs)


def _load(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
