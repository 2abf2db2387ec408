"""One registry mapping a spec prefix (``local``, ``hf``, ``openai``, ``replay``...) to a client factory,
and optionally to a cheap check of the spec that runs before anything is written or loaded."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Protocol

from autogen_core.models import ChatCompletionClient

from aloekit.config import BackendSettings
from aloekit.errors import BackendError, SpecError
from aloekit.secrets import register_url_secrets

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "aloekit.backends"


@dataclass(frozen=True)
class BackendSpec:
    """A parsed spec string: ``prefix:target`` (for example ``openai:http://host:8000/v1#model``)."""

    text: str
    prefix: str
    target: str

    @property
    def endpoint(self) -> str:
        """What a concurrency limit is shared over: the server URL, else the whole spec."""
        base, sep, _ = self.target.partition("#")
        return f"{self.prefix}:{base}" if sep else self.text


def parse_spec(text: str) -> BackendSpec:
    """Split ``prefix:target`` and check the prefix is registered."""
    text = text.strip()
    register_url_secrets(text)  # specs from config files too: a key inside a URL is never shown or stored
    prefix, sep, target = text.partition(":")
    if not sep or not prefix or not target:
        raise SpecError(
            f"malformed backend spec {text!r}: expected PREFIX:TARGET, e.g. local:smollm2 or openai:gpt-4o-mini"
        )
    get_backend(prefix)  # unknown prefixes fail here, with the list of known ones
    return BackendSpec(text=text, prefix=prefix, target=target)


class ClientFactory(Protocol):
    """Builds an autogen client for a spec; raise :class:`~aloekit.errors.BackendError` on bad input."""

    def __call__(self, spec: BackendSpec, settings: BackendSettings) -> ChatCompletionClient: ...


class SpecCheck(Protocol):
    """Validates a spec cheaply (no model load, no network); raise :class:`~aloekit.errors.SpecError` or
    :class:`~aloekit.errors.BackendError` with one line naming the spec or file at fault."""

    def __call__(self, spec: BackendSpec, settings: BackendSettings) -> None: ...


@dataclass
class Backend:
    """A registered backend: its prefix, factory and how to write a spec for it."""

    prefix: str
    factory: ClientFactory
    description: str = ""
    example: str = ""
    source: str = "builtin"
    batching: bool = field(default=False)
    """Whether one client instance batches concurrent requests (so roles should share it)."""
    check: SpecCheck | None = None
    """Cheap validation run by :func:`check_spec` before a run starts (None: only the prefix is checked)."""


_REGISTRY: dict[str, Backend] = {}
_entry_points_loaded = False


def register_backend(
    prefix: str,
    *,
    description: str = "",
    example: str = "",
    batching: bool = False,
    check: SpecCheck | None = None,
    source: str | None = None,
) -> Callable[[ClientFactory], ClientFactory]:
    """Register ``factory`` under ``prefix``, with an optional cheap ``check`` of its specs.

    ``check(spec, settings)`` is what :func:`check_spec` runs before a run is recorded: it must not load
    a model or touch the network, and raises a one-line ``SpecError``/``BackendError`` for bad input.
    ``source`` (shown by ``aloe backends list``) defaults to the factory's top-level package.

    Example:
        >>> from autogen_ext.models.replay import ReplayChatCompletionClient
        >>> def check_echo(spec, settings):
        ...     if spec.target != "any":
        ...         raise SpecError(f"{spec.text}: the echo backend takes only echo:any")
        >>> @register_backend("echo", description="replies 'ok'", example="echo:any", check=check_echo)
        ... def build_echo(spec, settings):
        ...     return ReplayChatCompletionClient(["ok"] * 100)
    """

    def decorate(factory: ClientFactory) -> ClientFactory:
        _REGISTRY[prefix] = Backend(prefix, factory, description, example, source=source or factory_source(factory),
                                    batching=batching, check=check)  # fmt: skip
        return factory

    return decorate


def factory_source(factory: object) -> str:
    """Who registered a factory: ``builtin`` for aloekit's own, else its module's top-level package."""
    # A partial or a callable object has no __module__ of its own worth naming: use what it wraps or its class.
    target = getattr(factory, "func", factory)
    module = getattr(target, "__module__", None) or type(target).__module__
    package = module.split(".", 1)[0]
    return "builtin" if package == "aloekit" else package


def _entry_point_source(ep: metadata.EntryPoint) -> str:
    """``plugin DIST``: the distribution that declared the entry point (its module's package if unknown)."""
    dist = getattr(ep, "dist", None)  # None for an entry point made by hand rather than read from metadata
    return f"plugin {getattr(dist, 'name', None) or ep.module.split('.', 1)[0]}"


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _REGISTRY:
            continue
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken plugin must not break the built-in backends
            logger.warning("backend plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        backend = loaded if isinstance(loaded, Backend) else Backend(ep.name, loaded)
        backend.prefix, backend.source = ep.name, _entry_point_source(ep)
        _REGISTRY[ep.name] = backend


def get_backend(prefix: str) -> Backend:
    """Return the backend registered under ``prefix`` (built-ins, then entry points)."""
    _ensure_builtins()
    if prefix not in _REGISTRY:
        _load_entry_points()
    try:
        return _REGISTRY[prefix]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise SpecError(f"unknown backend prefix {prefix!r} (known: {known})") from None


def check_spec(spec: str, settings: BackendSettings | None = None) -> None:
    """Validate ``spec`` without loading a model or calling a server: its syntax, its prefix, and whatever
    its backend's registered ``check`` looks at (files, folders, model names, keys).

    Raises :class:`~aloekit.errors.SpecError` or :class:`~aloekit.errors.BackendError` with one line.
    """
    parsed = parse_spec(spec)
    backend = get_backend(parsed.prefix)
    if backend.check is None:
        return
    try:
        backend.check(parsed, settings or BackendSettings())
    except (SpecError, BackendError):
        raise
    except Exception as exc:  # a plugin's check failing must still give one clear line
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc) else type(exc).__name__
        raise BackendError(f"{parsed.text}: spec check failed: {detail}") from exc


def list_backends() -> list[Backend]:
    """All registered backends, built-in and from the ``aloekit.backends`` entry-point group."""
    _ensure_builtins()
    _load_entry_points()
    return sorted(_REGISTRY.values(), key=lambda b: b.prefix)


def _ensure_builtins() -> None:
    # The built-in factories import their SDKs lazily, so registering them is cheap.
    from aloekit.agents.backends import local, openai, replay  # noqa: F401
