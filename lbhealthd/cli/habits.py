"""`lbhealthd completion bash|zsh` and `lbhealthd help [TOPIC]`.

The completion scripts are generated from the argparse parser itself (its subcommands, their
options and the choices of each), so a new command or option is completed without anyone
editing a script. Options that name a file complete file names.

The help topics are short texts shipped in the package (``topics/*.txt``, listed in
pyproject's package-data); each points at the document that says more.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from dataclasses import dataclass
from importlib import resources

EXIT_OK = 0
EXIT_USAGE = 2

SHELLS = ("bash", "zsh")
# Options whose value is a path: completed with file names.
FILE_OPTIONS = frozenset({"-c", "--config", "--haproxy-cfg", "--out", "--cgroup-root"})


def topics() -> dict[str, str]:
    """Every help topic by name, with its text."""
    folder = resources.files("lbhealthd.cli").joinpath("topics")
    found = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".txt"):
            found[entry.name.removesuffix(".txt")] = entry.read_text(encoding="utf-8")
    return dict(sorted(found.items()))


TOPICS = ("config", "events", "exit-codes", "overrides")  # what `help` accepts as TOPIC


def add_commands(
    root: argparse.ArgumentParser, sub: argparse._SubParsersAction[argparse.ArgumentParser]
) -> None:
    """The `completion` and `help` subcommands (completion walks ``root``, once complete)."""
    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    p.add_argument("shell", choices=SHELLS, help="the shell to complete for")
    p.set_defaults(func=cmd_completion, root_parser=root)
    p = sub.add_parser("help", help="print a short text on a topic (no TOPIC: list them)")
    p.add_argument("topic", nargs="?", choices=TOPICS, metavar="TOPIC", help=", ".join(TOPICS))
    p.set_defaults(func=cmd_help)


def cmd_help(args: argparse.Namespace) -> int:
    """Print one topic, or the list of topics with their first line."""
    texts = topics()
    if args.topic is None:
        print("lbhealthd help TOPIC, where TOPIC is one of:")
        for name, text in texts.items():
            print(f"  {name:<12} {text.splitlines()[0]}")
        print("Every command's options: lbhealthd COMMAND --help. More: the docs/ directory.")
        return EXIT_OK
    sys.stdout.write(texts[args.topic])
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the completion script for ``args.shell``."""
    commands = walk(args.root_parser)
    sys.stdout.write(bash_script(commands) if args.shell == "bash" else zsh_script(commands))
    return EXIT_OK


# --- the parser as data ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    names: tuple[str, ...]  # empty for a positional argument
    help: str
    takes_value: bool
    choices: tuple[str, ...]
    metavar: str

    @property
    def files(self) -> bool:
        return any(n in FILE_OPTIONS for n in self.names)


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    options: tuple[Option, ...]


def walk(parser: argparse.ArgumentParser) -> list[Command]:
    """Every subcommand of ``parser`` with its options and positional arguments."""
    commands = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, sub in action.choices.items():
            commands.append(Command(name, helps.get(name, ""), tuple(_options(sub))))
    return commands


def _options(parser: argparse.ArgumentParser) -> list[Option]:
    out = []
    for a in parser._actions:
        choices = tuple(str(c) for c in a.choices) if a.choices else ()
        metavar = a.metavar if isinstance(a.metavar, str) else a.dest.upper()
        text = str(a.help or "")
        with contextlib.suppress(KeyError, TypeError, ValueError):  # as argparse expands it
            text = text % {**vars(a), "prog": parser.prog}
        out.append(Option(tuple(a.option_strings), text, a.nargs != 0, choices, metavar))
    return out


# --- bash --------------------------------------------------------------------------------------


def bash_script(commands: list[Command]) -> str:
    names = " ".join(c.name for c in commands)
    cases = []
    for c in commands:
        values: list[str] = []
        words: list[str] = []
        for o in c.options:
            if not o.names:
                words += o.choices
                continue
            words += o.names
            if o.takes_value:
                action = "-f" if o.files else f'-W "{" ".join(o.choices)}"' if o.choices else ""
                if action:
                    values.append(
                        f"                {'|'.join(o.names)}) "
                        f'COMPREPLY=($(compgen {action} -- "$cur")); return ;;'
                    )
                else:
                    values.append(f"                {'|'.join(o.names)}) return ;;")
        cases.append(
            f"        {c.name})\n"
            + (
                '            case "$prev" in\n' + "\n".join(values) + "\n            esac\n"
                if values
                else ""
            )
            + f'            COMPREPLY=($(compgen -W "{" ".join(words)}" -- "$cur"))\n'
            + "            ;;"
        )
    return _BASH.replace("@COMMANDS@", names).replace("@CASES@", "\n".join(cases))


_BASH = """\
# bash completion for lbhealthd; generated by `lbhealthd completion bash`.
# Install: lbhealthd completion bash > /etc/bash_completion.d/lbhealthd
_lbhealthd() {
    local cur prev cmd i
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -*) ;;
            *) cmd="${COMP_WORDS[i]}"; break ;;
        esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "@COMMANDS@ --help --version" -- "$cur"))
        return
    fi
    case "$cmd" in
@CASES@
    esac
}
complete -o default -F _lbhealthd lbhealthd
"""


# --- zsh ---------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[\[\]'\\`$\"]")


def _z(text: str) -> str:
    """Text made safe inside a single-quoted _arguments description (no quote or bracket)."""
    return _UNSAFE.sub("", " ".join(text.replace("%%", "%").split()))[:80]


def _zm(text: str) -> str:
    """A message field of an _arguments spec: safe text with its colons escaped."""
    return _z(text).replace(":", "\\:")


def zsh_script(commands: list[Command]) -> str:
    described = "\n".join(f"    '{c.name}:{_z(c.help)}'" for c in commands)
    cases = []
    for c in commands:
        specs = []
        position = 0
        for o in c.options:
            if o.files:
                action = "_files"
            elif o.choices:
                action = "(" + " ".join(o.choices) + ")"
            else:
                action = " "
            if not o.names:
                position += 1
                specs.append(f"'{position}:{_zm(o.metavar)}:{action}'")
                continue
            for name in o.names:
                value = f":{_zm(o.metavar)}:{action}" if o.takes_value else ""
                specs.append(f"'{name}[{_z(o.help)}]{value}'")
        cases.append(
            f"    {c.name})\n      _arguments \\\n        "
            + " \\\n        ".join(specs)
            + "\n      ;;"
        )
    return _ZSH.replace("@DESCRIBED@", described).replace("@CASES@", "\n".join(cases))


_ZSH = """\
#compdef lbhealthd
# zsh completion for lbhealthd; generated by `lbhealthd completion zsh`.
# Install: lbhealthd completion zsh > "${fpath[1]}/_lbhealthd"
_lbhealthd() {
  local -a commands
  commands=(
@DESCRIBED@
  )
  if (( CURRENT == 2 )); then
    _describe -t commands 'lbhealthd command' commands
    return
  fi
  local cmd=$words[2]
  shift words
  (( CURRENT-- ))
  case $cmd in
@CASES@
  esac
}
_lbhealthd "$@"
"""
