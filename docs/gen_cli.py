"""Write docs/reference/cli.md from the typer app: every command's usage, help and options.

`make docs` runs it before `mkdocs build`; tests/docs/test_site.py holds the committed page equal
to what this prints, so the reference cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path


PAGE = Path(__file__).resolve().parent / "reference" / "cli.md"
HEADER = """# Command-line reference

Generated from the app by `docs/gen_cli.py` (`make docs`); do not edit by hand. The same text,
formatted for a terminal, is `avfeat COMMAND --help`.
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(param) -> str:
    value = getattr(param.default, "value", param.default)  # an Enum choice shows its value
    if value is None or callable(value) or getattr(param, "is_flag", False) or value == ():
        return ""
    return f"`{value}`"


def _param_row(param) -> str:
    # typer carries its own copy of click: parameters are told apart by their type name.
    argument = param.param_type_name == "argument"
    names = f"`{param.metavar or param.name.upper()}`" if argument else ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
    kind = "argument" if argument else ("flag" if getattr(param, "is_flag", False) else "option")
    required = " (required)" if param.required else ""
    return f"| {names} | {kind}{required} | {_default(param)} | {_cell(getattr(param, 'help', None) or '')} |"


def _command(name: str, command, parent) -> list[str]:
    ctx = command.context_class(command, info_name=name, parent=parent)
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines = [f"## `{ctx.command_path}`", "", "```", f"{ctx.command_path} {usage}", "```", ""]
    if command.help:
        lines += [command.help.strip(), ""]
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    if params:
        lines += ["| name | kind | default | help |", "|---|---|---|---|"]
        lines += [_param_row(p) for p in params]
        lines.append("")
    return lines


def render() -> str:
    from avfeat.cli import command

    root = command()
    ctx = root.context_class(root, info_name="avfeat")
    lines = [HEADER]
    for name in root.list_commands(ctx):
        lines += _command(name, root.get_command(ctx, name), ctx)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(render())
    print(f"wrote {PAGE}", file=sys.stderr)


if __name__ == "__main__":
    main()
