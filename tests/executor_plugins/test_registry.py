"""The plug-in registry: built-ins, unknown brains, and plug-ins by import path and entry point."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cofounder_server.config import Settings
from cofounder_server.domain.model import AgentSpec
from cofounder_server.executor.plugins import Message, ToolSpec
from cofounder_server.executor.registry import (
    PluginLoadError,
    PluginRegistry,
    UnknownBrainError,
)

from . import sample_plugin

PLUGIN = sample_plugin.__name__


def test_the_default_registry_has_the_built_ins() -> None:
    registry = PluginRegistry.default(Settings(), entry_points=False)

    assert registry.brain_names() == ["anthropic", "openai", "scripted"]
    assert [tool.spec.name for tool in registry.tools()] == ["ask_human", "narrate"]
    assert registry.tool_specs()[1].name == "narrate"
    assert registry.tool("narrate") is registry.tools()[1]
    assert registry.tool("nope") is None
    assert registry.has_brain("scripted")
    assert not registry.has_brain("gpt")


async def test_a_scripted_brain_comes_from_the_registry() -> None:
    registry = PluginRegistry.default(Settings(), entry_points=False)

    brain = registry.brain_for(AgentSpec(brain="scripted", config={"turns": [{"text": "hi"}]}))

    assert (await brain.think([Message(role="user", text="go")], registry.tool_specs())).text == "hi"


def test_an_unknown_brain_is_a_config_error_naming_the_field_and_the_known_brains() -> None:
    registry = PluginRegistry.default(Settings(), entry_points=False)

    with pytest.raises(
        UnknownBrainError, match=r"unknown brain 'gpt' \(registered: anthropic, openai, scripted\)"
    ) as caught:
        registry.brain_for(AgentSpec(brain="gpt"))

    assert caught.value.field == "agent.brain"
    assert isinstance(caught.value, ValueError)


def test_names_cannot_be_taken_twice_unless_replacing() -> None:
    registry = PluginRegistry()
    registry.register_brain("echo", sample_plugin.echo_brain)
    registry.register_tool("shout", sample_plugin.ShoutTool)

    with pytest.raises(ValueError, match="already registered"):
        registry.register_brain("echo", sample_plugin.echo_brain)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_tool("shout", sample_plugin.ShoutTool)
    registry.register_brain("echo", sample_plugin.echo_brain, replace=True)


def test_a_tool_must_be_registered_under_the_name_it_gives_itself() -> None:
    with pytest.raises(ValueError, match="registered as 'yell' calls itself 'shout'"):
        PluginRegistry().register_tool("yell", sample_plugin.ShoutTool)


async def test_a_plugin_loads_from_an_import_path_in_settings() -> None:
    registry = PluginRegistry.default(Settings(plugins=f" {PLUGIN}:register , "), entry_points=False)

    brain = registry.brain_for(AgentSpec(brain="echo", model="e1"))
    turn = await brain.think([Message(role="user", text="hello")], [])
    shout = registry.tool("shout")

    assert turn.text == "echo: hello"
    assert turn.usage.model == "e1"
    assert shout is not None
    assert shout.spec == ToolSpec(name="shout", description="Upper-case some text.")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_colon_here", "expected module:attribute"),
        ("no_such_module_for_cofounder:register", "No module named"),
        (f"{PLUGIN}:missing", "has no attribute 'missing'"),
        (f"{PLUGIN}:__name__", "is not callable"),
        (f"{PLUGIN}:register_failing", "the plug-in's own start-up failed"),
    ],
)
def test_a_configured_plugin_that_fails_stops_start_up_naming_it(path: str, message: str) -> None:
    with pytest.raises(PluginLoadError, match=message) as caught:
        PluginRegistry.default(Settings(plugins=path), entry_points=False)

    assert path in str(caught.value)


def make_distribution(root: Path, entry_points: str) -> None:
    """A minimal installed distribution (dist-info with entry points) under ``root``."""
    info = root / "cofounder_fake_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cofounder-fake-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


async def test_entry_point_plugins_load_and_broken_ones_are_logged_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    make_distribution(
        tmp_path,
        f"[cofounder.brains]\n"
        f"echo = {PLUGIN}:echo_brain\n"
        f"scripted = {PLUGIN}:echo_brain\n"
        f"[cofounder.tools]\n"
        f"shout = {PLUGIN}:ShoutTool\n"
        f"whisper = {PLUGIN}:does_not_exist\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    with caplog.at_level(logging.ERROR, logger="cofounder_server.executor.registry"):
        registry = PluginRegistry.default(Settings())

    assert registry.brain_names() == ["anthropic", "echo", "openai", "scripted"]
    assert [tool.spec.name for tool in registry.tools()] == ["ask_human", "narrate", "shout"]
    turn = await registry.brain_for(AgentSpec(brain="echo")).think([Message(role="user", text="hi")], [])
    assert turn.text == "echo: hi"
    # The built-in kept its name; the clashing and the broken plug-in were reported.
    assert registry.brain_for(AgentSpec(brain="scripted", config={"turns": [{"text": "s"}]})) is not None
    skipped = [r.getMessage() for r in caplog.records]
    assert any("skipping brain plug-in 'scripted'" in m for m in skipped)
    assert any("skipping tool plug-in 'whisper'" in m for m in skipped)


async def test_aclose_runs_cleanups_in_reverse_and_survives_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = PluginRegistry()
    order: list[str] = []

    async def first() -> None:
        order.append("first")

    async def failing() -> None:
        order.append("failing")
        raise RuntimeError("cannot close")

    registry.add_cleanup(first)
    registry.add_cleanup(failing)
    with caplog.at_level(logging.ERROR, logger="cofounder_server.executor.registry"):
        await registry.aclose()
    await registry.aclose()

    assert order == ["failing", "first"]
    assert "a plug-in failed to clean up" in caplog.text
