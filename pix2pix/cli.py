"""What every job's command line shares: one-line errors, the JSON summary line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import traceback
import typing
from collections.abc import Callable

from pix2pix.errors import JobError
from pix2pix.storage import redact


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, but not the None/False of optional flags."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def add_field_flags(group, options) -> None:
    """A flag per field of the dataclass ``options`` that carries help in its metadata: --name-with-
    dashes, typed by the field, ``choices`` from the metadata, a bool as --x/--no-x. Each flag
    defaults to None (not given), so the dataclass's or a preset's value applies."""
    hints = typing.get_type_hints(options)
    for field in dataclasses.fields(options):
        if "help" not in field.metadata:
            continue
        kind = next(arg for arg in (*typing.get_args(hints[field.name]), hints[field.name]) if arg is not type(None))
        flag = "--" + field.name.replace("_", "-")
        extras = {key: value for key, value in field.metadata.items() if key != "help"}
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=field.metadata["help"])
        else:
            group.add_argument(flag, type=kind, default=None, help=field.metadata["help"], **extras)


def flag_values(args: argparse.Namespace, options) -> dict:
    """The parsed flags named like the fields of the dataclass ``options``: how every job turns
    its flags into the library's options."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(options) if hasattr(args, field.name)}


def print_summary(summary: dict) -> None:
    """The job's closing JSON line, redacted like every other line it prints."""
    print(redact(json.dumps(summary, sort_keys=False, default=str)), flush=True)


def run(main: Callable[[], int | None]) -> None:
    """Run a job's main: a JobError (the user's to fix) becomes one redacted line on stderr and
    exit code 1; anything else is a bug and keeps its traceback."""
    try:
        code = main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except JobError as error:
        message = " ".join(str(error).split()) or type(error).__name__
        sys.stderr.write(f"error: {redact(message)}\n")
        sys.exit(1)
    except Exception:
        sys.stderr.write(redact(traceback.format_exc()))
        sys.exit(1)
    sys.exit(code or 0)
