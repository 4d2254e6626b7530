"""`python -m service`: serve with uvicorn. Options override their FACES_* variables; all else is FACES_*."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from service.config import Settings

# option -> (metavar, help); each overrides the variable FACES_<OPTION> (see env_name)
OPTIONS: dict[str, tuple[str, str]] = {
    "--host": ("HOST", "address to listen on"),
    "--port": ("PORT", "port to listen on"),
    "--workers": ("N", "uvicorn worker processes; each loads every model"),
    "--model-dir": ("DIR", "folder of model folders, or one model folder"),
    "--log-level": ("{debug,info,warning,error}", "log level"),
}


def field_name(option: str) -> str:
    return option.removeprefix("--").replace("-", "_")


def env_name(option: str) -> str:
    return "FACES_" + field_name(option).upper()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the face generators of the model folder over HTTP with uvicorn.",
        epilog="Every other setting is an environment variable, FACES_*: docs/service.md lists them all. "
        "An option given here overrides its variable.",
    )
    for option, (metavar, text) in OPTIONS.items():
        var = env_name(option)
        now = os.environ.get(var)
        default = Settings.model_fields[field_name(option)].default
        where = f"{var}={now}" if now is not None else f"{var}, default {default}"
        # no type or choices: Settings checks the values, as it does those of the environment
        parser.add_argument(option, metavar=metavar, help=f"{text} ({where})".replace("%", "%%"))
    return parser.parse_args(argv)


def source(field: str, given: dict[str, str]) -> str:
    """Where a setting came from, for messages: `--port 99999` or `FACES_PORT`."""
    option = "--" + field.replace("_", "-")
    return f"{option} {given[option]}" if option in given else "FACES_" + field.upper()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = {opt: value for opt in OPTIONS if (value := getattr(args, field_name(opt))) is not None}
    # uvicorn's workers build the app from the environment (service.main reads Settings()); variables set
    # here reach every one of them, worker processes included
    for option, value in given.items():
        os.environ[env_name(option)] = value
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{source('.'.join(map(str, e['loc'])), given)}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return 2
    if not settings.model_dir.is_dir():  # checked here too, so that uvicorn does not start for nothing
        origin = "--model-dir" if "--model-dir" in given else "FACES_MODEL_DIR"
        print(f"error: the model folder {settings.model_dir} does not exist ({origin})", file=sys.stderr)
        return 2
    uvicorn.run(
        "service.main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_timeout or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
