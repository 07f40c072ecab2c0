"""Every `phenovec ...` command line in the README's bash blocks parses as written (options, choices, required
arguments): the README stays true to the CLI. Running them is the job of the stage tests and the demo."""
import re
import shlex
from pathlib import Path

import pytest

from phenovec.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """The `phenovec` command lines of the README's ```bash blocks, continuation lines joined, comments and
    shell redirections / chains cut."""
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s#", line, maxsplit=1)[0]
            for part in re.split(r"&&|\|", line):
                part = re.split(r"\s>\s?", part.strip())[0].strip()
                if part.startswith(".venv/bin/"):
                    part = part[len(".venv/bin/"):]
                if part.startswith("phenovec "):
                    cmds.append(part)
    return cmds


COMMANDS = readme_commands()


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 25, COMMANDS
    assert any(c.startswith("phenovec process recipes") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command, capsys):
    argv = shlex.split(command)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help / --version exit 0; a bad option exits 2 with argparse's message
        assert e.code == 0, f"{command!r}: {capsys.readouterr().err}"
        return
    assert callable(getattr(args, "run", None)), command
