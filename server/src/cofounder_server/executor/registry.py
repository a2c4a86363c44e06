"""The plug-in registry: brains and tools by name, built-ins plus third-party plug-ins.

Third parties extend the server without editing it, in either of two ways:

- **Entry points** in their package metadata. Group ``cofounder.brains``: the entry-point
  name is the brain name, the object a :data:`BrainFactory`. Group ``cofounder.tools``: the
  name is the tool name, the object a :data:`ToolFactory`.
- **Import paths** in the ``plugins`` setting (``--plugins`` / ``COFOUNDER_PLUGINS``): a
  comma-separated list of ``module:attribute``, each naming a callable
  ``register(registry)`` that calls :meth:`PluginRegistry.register_brain` /
  :meth:`PluginRegistry.register_tool`.

``SubmitJob`` checks a job's agent spec with :meth:`PluginRegistry.validate`: the brain must
be registered, and a factory with a ``validate`` step (see
:class:`~cofounder_server.executor.plugins.ValidatingBrainFactory`) checks the config.

Failure policy at start-up: an import path the operator configured explicitly must load,
or the server refuses to start (:class:`PluginLoadError`) - a typo there would otherwise
only surface as failed jobs much later. An entry point is ambient (any installed package
may declare one), so a broken one is logged and skipped rather than taking the control
plane down.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.brains.anthropic import AnthropicBrainFactory
from cofounder_server.executor.brains.openai import OpenAIBrainFactory
from cofounder_server.executor.brains.provider_access import ModelClients, parse_model_concurrency
from cofounder_server.executor.brains.scripted import ScriptedBrainFactory
from cofounder_server.executor.plugin_errors import PluginConfigError, UnknownBrainError
from cofounder_server.executor.plugins import Brain, BrainFactory, Tool, ToolFactory, ToolSpec
from cofounder_server.executor.tools.ask_human import AskHumanTool
from cofounder_server.executor.tools.narrate import NarrateTool

if TYPE_CHECKING:
    from cofounder_server.config import Settings

_log = logging.getLogger(__name__)

BRAIN_ENTRY_POINT_GROUP = "cofounder.brains"
TOOL_ENTRY_POINT_GROUP = "cofounder.tools"


class PluginLoadError(RuntimeError):
    """A plug-in named in the ``plugins`` setting could not be loaded."""


class PluginRegistry:
    """Brain factories and tools by name.

    Tools are built once, when registered, and shared by every job: a tool keeps no
    per-job state (what it needs about the job arrives in its :class:`ToolContext`).
    Brains are built per job by :meth:`brain_for`.
    """

    def __init__(self) -> None:
        self._brains: dict[str, BrainFactory] = {}
        self._tools: dict[str, Tool] = {}
        self._cleanups: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def default(cls, settings: Settings, *, entry_points: bool = True) -> PluginRegistry:
        """The built-ins (brains ``scripted``, ``anthropic`` and ``openai``, tools ``ask_human``
        and ``narrate``) plus plug-ins.

        Entry points are loaded first (unless ``entry_points`` is false), then the import
        paths of ``settings.plugins``. Raises :class:`PluginLoadError` if a configured import
        path fails; see the module docstring for why.
        """
        registry = cls()
        registry.register_brain("scripted", ScriptedBrainFactory(settings.scripted_turns_dir))
        # One client and one rate-limit gate per provider account, shared by every job.
        clients = ModelClients(
            max_connections=settings.model_max_connections,
            model_concurrency=parse_model_concurrency(settings.model_concurrency),
            default_backoff=settings.model_backoff_seconds,
        )
        registry.add_cleanup(clients.aclose)
        registry.register_brain(
            "anthropic",
            AnthropicBrainFactory(
                base_url=settings.anthropic_base_url,
                api_key=settings.anthropic_api_key,
                max_tokens=settings.anthropic_max_tokens,
                timeout_seconds=settings.anthropic_timeout_seconds,
                clients=clients,
            ),
        )
        registry.register_brain(
            "openai",
            OpenAIBrainFactory(
                base_url=settings.openai_base_url,
                api_key=settings.openai_api_key,
                max_tokens=settings.openai_max_tokens,
                timeout_seconds=settings.openai_timeout_seconds,
                clients=clients,
            ),
        )
        registry.register_tool("ask_human", AskHumanTool)
        registry.register_tool("narrate", NarrateTool)
        if entry_points:
            registry.load_entry_points()
        for path in (p.strip() for p in settings.plugins.split(",")):
            if path:
                registry.load_import_path(path)
        return registry

    def register_brain(self, name: str, factory: BrainFactory, *, replace: bool = False) -> None:
        """Make ``factory`` build the brain called ``name``.

        A name already taken is an error unless ``replace`` is true, so two plug-ins cannot
        silently shadow each other (or a built-in).
        """
        if not name:
            raise ValueError("a brain needs a non-empty name")
        if name in self._brains and not replace:
            raise ValueError(f"a brain named {name!r} is already registered")
        self._brains[name] = factory

    def register_tool(self, name: str, factory: ToolFactory, *, replace: bool = False) -> None:
        """Build the tool now and offer it to brains as ``name`` (which must match its spec)."""
        if not name:
            raise ValueError("a tool needs a non-empty name")
        if name in self._tools and not replace:
            raise ValueError(f"a tool named {name!r} is already registered")
        tool = factory()
        # Brains call tools by the name in their spec; a mismatch would make the tool
        # registered under one name and called under another, i.e. never found.
        if tool.spec.name != name:
            raise ValueError(f"tool registered as {name!r} calls itself {tool.spec.name!r}")
        self._tools[name] = tool

    def add_cleanup(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Run ``cleanup`` on :meth:`aclose` (e.g. to close a plug-in's shared HTTP client)."""
        self._cleanups.append(cleanup)

    async def aclose(self) -> None:
        """Release what plug-ins hold, in reverse order of registration; failures are logged."""
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                await cleanup()
            except Exception:
                _log.exception("a plug-in failed to clean up")

    def has_brain(self, name: str) -> bool:
        """Whether a brain called ``name`` is registered."""
        return name in self._brains

    def brain_names(self) -> list[str]:
        """The registered brain names, sorted."""
        return sorted(self._brains)

    def validate(self, spec: AgentSpec) -> None:
        """Check ``spec`` as ``SubmitJob`` does, without building a brain and without I/O.

        Raises :class:`UnknownBrainError` for an unregistered brain and
        :class:`PluginConfigError` when the brain's ``validate`` step rejects the spec. A
        brain without that step (see :class:`ValidatingBrainFactory`) accepts any spec here.
        """
        factory = self._factory(spec.brain)
        validate = getattr(factory, "validate", None)
        if validate is None:
            return
        try:
            validate(spec)
        except PluginConfigError:
            raise
        except Exception as exc:
            # A bug in the plug-in, not in the request; still refuse what nobody could check.
            _log.exception("brain %r failed to validate an agent config", spec.brain)
            raise PluginConfigError(
                "the brain could not check this config; the server logged why", field="agent.config"
            ) from exc

    def brain_for(self, spec: AgentSpec) -> Brain:
        """A new brain for a job.

        Raises :class:`UnknownBrainError` for an unregistered brain and
        :class:`PluginConfigError` when the brain rejects ``spec.config`` or ``spec.model``.
        """
        return self._factory(spec.brain)(spec)

    def _factory(self, brain: str) -> BrainFactory:
        factory = self._brains.get(brain)
        if factory is None:
            known = ", ".join(self.brain_names()) or "none"
            raise UnknownBrainError(f"unknown brain {brain!r} (registered: {known})", field="agent.brain")
        return factory

    def tools(self) -> list[Tool]:
        """Every registered tool, sorted by name."""
        return [self._tools[name] for name in sorted(self._tools)]

    def tool_specs(self) -> list[ToolSpec]:
        """The specs of :meth:`tools`, as a brain is shown them."""
        return [tool.spec for tool in self.tools()]

    def tool(self, name: str) -> Tool | None:
        """The tool called ``name``, or ``None`` if there is none."""
        return self._tools.get(name)

    def load_entry_points(self) -> None:
        """Register the brains and tools installed packages declare as entry points.

        A plug-in that fails to load or register is logged and skipped.
        """
        for ep in importlib.metadata.entry_points(group=BRAIN_ENTRY_POINT_GROUP):
            try:
                self.register_brain(ep.name, ep.load())
            except Exception:
                _log.exception("skipping brain plug-in %r (%s): it failed to load", ep.name, ep.value)
        for ep in importlib.metadata.entry_points(group=TOOL_ENTRY_POINT_GROUP):
            try:
                self.register_tool(ep.name, ep.load())
            except Exception:
                _log.exception("skipping tool plug-in %r (%s): it failed to load", ep.name, ep.value)

    def load_import_path(self, path: str) -> None:
        """Import ``module:attribute`` and call it with this registry.

        Raises :class:`PluginLoadError` naming ``path`` if anything goes wrong.
        """
        module_name, sep, attribute = path.partition(":")
        if not sep or not module_name or not attribute:
            raise PluginLoadError(f"plug-in {path!r}: expected module:attribute")
        try:
            target: object = importlib.import_module(module_name)
            for part in attribute.split("."):
                target = getattr(target, part)
            if not callable(target):
                raise TypeError(f"{attribute} is not callable")
            target(self)
        except Exception as exc:
            raise PluginLoadError(f"plug-in {path!r} failed to load: {exc}") from exc
        _log.info("loaded plug-in %s", path)
