"""The `flywheel` command. Each service adds its subcommands through the
`flywheel.cli` entry point group (e.g. `flywheel registry ...`)."""

from __future__ import annotations

from importlib.metadata import entry_points

import click


class PluginGroup(click.Group):
    """A click group whose subcommands are the installed `flywheel.cli` entry points."""

    def _plugins(self) -> dict[str, object]:
        return {ep.name: ep for ep in entry_points(group="flywheel.cli")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in (plugins := self._plugins()):
            command = plugins[name].load()  # type: ignore[attr-defined]
        return command


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flywheel-common")
def main() -> None:
    """Flywheel: the closed MLOps/LLMOps loop. Each service's commands are below."""


if __name__ == "__main__":
    main()
