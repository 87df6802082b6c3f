"""Settings as both servers take them: each a command-line flag and an environment variable.

A server declares its settings as fields of a ServerSettings subclass, each made with
`setting(default, env=..., help=...)`; the flag is the field's name (`pool_size` is
`--pool-size`). A flag wins over its variable, which wins over the default.

pydantic-settings reads the variables and pydantic checks and converts every value
(`LOG_JSON=false` is off; true/false, 1/0, yes/no, on/off are the booleans); argparse
reads the flags and writes --help. Flags reach pydantic as text, so a bad value is
reported the same way wherever it came from: one line on stderr naming the flag and
the variable, and exit code 2.

Serving's settings are checked together too: a server serves plaintext only on a loopback
address or with --insecure, so that tokens and addresses never cross a network in clear
by accident.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import math
import os
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal, NoReturn, Self

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _to_timedelta(value: object) -> object:
    """Seconds, as text from a flag or a variable, or as a number, to a timedelta."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("Input should be a number of seconds") from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError("Input should be a finite number of seconds")
        try:
            return dt.timedelta(seconds=value)
        except OverflowError:
            raise ValueError("Input should be fewer seconds") from None
    return value


def _not_negative(value: dt.timedelta) -> dt.timedelta:
    if value < dt.timedelta(0):
        raise ValueError("Input should be greater than or equal to 0")
    return value


def _positive(value: dt.timedelta) -> dt.timedelta:
    if value <= dt.timedelta(0):
        raise ValueError("Input should be greater than 0")
    return value


# The types of settings; NaN and infinities are refused for all (see model_config).
Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(ge=0)]
PositiveSeconds = Annotated[float, Field(gt=0)]
# Seconds too, for code that wants a timedelta.
Duration = Annotated[dt.timedelta, BeforeValidator(_to_timedelta), AfterValidator(_not_negative)]
PositiveDuration = Annotated[
    dt.timedelta, BeforeValidator(_to_timedelta), AfterValidator(_positive)
]
Count = Annotated[int, Field(ge=1)]
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
]


def is_loopback(host: str) -> bool:
    """Whether `host`, an address to listen on or to connect to, is this machine only:
    `localhost` or a loopback address (127.0.0.0/8, ::1). `0.0.0.0` and names are not."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def target_is_loopback(target: str) -> bool:
    """Whether a gRPC target (`host:port`, `[::1]:port`, `dns:///host:port`, `unix:path`)
    reaches this machine only."""
    target = target.strip()
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    target = target.removeprefix("dns:").removeprefix("ipv4:").removeprefix("ipv6:")
    target = target.lstrip("/").rpartition("/")[2]  # dns://authority/host:port
    host, colon, _port = target.rpartition(":")
    if not colon or (target.count(":") > 1 and not target.startswith("[")):
        host = target  # no port, or a bare IPv6 address
    return is_loopback(host)


def setting(default: Any = PydanticUndefined, *, env: str, help: str) -> Any:
    """A setting: the flag named after the field and the environment variable `env`.

    Without a default, the setting is required. `help` is a phrase for --help, which
    adds the variable and the default.
    """
    return Field(default, validation_alias=env, description=help)


class Parser(argparse.ArgumentParser):
    """argparse with every error on one line, `prog: error: message`, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class ServerSettings(BaseSettings):
    """What serving needs of a server's settings; each server declares its own variables.

    A subclass declares host, port, metrics_port and grace with its variables, names its
    program in `prog`, and adds its own settings. `parse()` reads them.
    """

    model_config = SettingsConfigDict(
        case_sensitive=True,
        # A variable set to nothing (`LOG_JSON=`) is as good as unset.
        env_ignore_empty=True,
        allow_inf_nan=False,
        validate_default=True,
        frozen=True,
    )

    prog: ClassVar[str] = "server"
    description: ClassVar[str] = ""

    host: str
    port: Port
    log_level: LogLevel = setting("INFO", env="LOG_LEVEL", help="logging level")
    log_json: bool = setting(False, env="LOG_JSON", help="JSON log lines")
    # A test's seam (grpc_common.clock): the wall clock offset by the seconds in a file.
    clock_offset_file: str = setting(
        "",
        env="CLOCK_OFFSET_FILE",
        help="for tests: a file holding seconds added to the wall clock, read again as it "
        "changes, to step the clock of a running server; refused beyond loopback; none: off",
    )
    metrics_port: Port
    # A plaintext port with the health service alone: it reveals nothing, and the
    # kubelet's gRPC probes speak no TLS.
    health_port: Port
    grace: Seconds
    # Transport (grpc_common.serving): TLS files, plaintext beyond loopback, and the caps.
    tls_cert: str
    tls_key: str
    tls_client_ca: str
    insecure: bool
    max_concurrent_rpcs: Count
    max_streams: Count

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        missing = [name for name, field in cls.model_fields.items() if not _env(field)]
        if missing:
            raise TypeError(f"{cls.__name__}: declare {', '.join(missing)} with setting()")

    @model_validator(mode="after")
    def _transport(self) -> Self:
        """TLS files that go together, and no plaintext beyond loopback unless asked for."""
        name = self.name_of
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(f"{name('tls_cert')} and {name('tls_key')} go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError(
                f"{name('tls_client_ca')} needs {name('tls_cert')} and {name('tls_key')}"
            )
        if not self.tls_cert and not self.insecure and not is_loopback(self.host):
            raise ValueError(
                f"{name('host')} {self.host!r} would serve plaintext beyond this machine: "
                f"give {name('tls_cert')} and {name('tls_key')}, or {name('insecure')} "
                "to serve plaintext anyway"
            )
        if self.clock_offset_file and not is_loopback(self.host):
            raise ValueError(
                f"{name('clock_offset_file')} steps the clock for tests: a server listening "
                f"on {self.host!r}, beyond this machine, refuses it"
            )
        if self.max_streams > self.max_concurrent_rpcs:
            raise ValueError(f"{name('max_streams')} must not exceed {name('max_concurrent_rpcs')}")
        return self

    @classmethod
    def name_of(cls, field: str) -> str:
        """A setting as errors name it: `--flag (env VARIABLE)`."""
        return f"{_flag(field)} (env {_env(cls.model_fields[field])})"

    @classmethod
    def parse(cls, argv: Sequence[str] | None = None) -> Self:
        """The settings from the flags in argv (default: sys.argv[1:]), then the environment,
        then the defaults.

        A bad value, an unknown flag or a missing required setting exits with one line on
        stderr and code 2. --help prints the help and exits 0; if a flag or a variable
        holds a bad value too, that is then reported as above.
        """
        parser = cls.parser()
        given = vars(parser.parse_args(argv))
        wants_help = given.pop("help")
        if wants_help:
            parser.print_help()
        fields = cls.model_fields
        try:
            settings = cls(**{_env(fields[name]): value for name, value in given.items()})
        except ValidationError as exc:
            problems = [
                cls._problem(error, given)
                for error in exc.errors(include_url=False)
                # Help must work before the required settings are known.
                if not (wants_help and error["type"] == "missing")
            ]
            if problems:
                parser.error("; ".join(problems))
            parser.exit()
        if wants_help:
            parser.exit()
        return settings

    @classmethod
    def variables(cls) -> list[str]:
        """The environment variables of the settings."""
        return [_env(field) for field in cls.model_fields.values()]

    @classmethod
    def parser(cls) -> Parser:
        """The flags, grouped: this server's own, then those of serving."""
        parser = Parser(prog=cls.prog, description=cls.description, add_help=False)
        parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
        own = parser.add_argument_group("settings")
        serving = parser.add_argument_group("serving")
        for name, field in cls.model_fields.items():
            group = serving if name in ServerSettings.model_fields else own
            flag = _flag(name)
            text = f"{field.description} (env {_env(field)}, {_shown_default(field)})"
            text = text.replace("%", "%%")
            # Values stay text here: pydantic checks flags and variables alike.
            if field.annotation is bool:
                group.add_argument(
                    flag,
                    action=argparse.BooleanOptionalAction,
                    default=argparse.SUPPRESS,
                    help=text,
                )
            else:
                group.add_argument(
                    flag, metavar=_metavar(name, field), default=argparse.SUPPRESS, help=text
                )
        return parser

    @classmethod
    def _problem(cls, error: ErrorDetails, given: dict[str, Any]) -> str:
        """One error as `<where the value came from>: <what is wrong with it>`."""
        by_env = {_env(field): name for name, field in cls.model_fields.items()}
        message = error["msg"].removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
        env = str(error["loc"][0]) if error["loc"] else ""
        if env not in by_env:
            return message
        flag = _flag(by_env[env])
        if error["type"] == "missing":
            return f"{flag} or {env} is required"
        if by_env[env] in given:
            return f"{flag} {given[by_env[env]]!r} (env {env}): {message}"
        return f"{env}={os.environ.get(env, '')!r} (flag {flag}): {message}"


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _env(field: FieldInfo) -> str:
    alias = field.validation_alias
    return alias if isinstance(alias, str) else ""


def _metavar(name: str, field: FieldInfo) -> str:
    if field.annotation in (float, dt.timedelta):
        return "SECONDS"
    return name.rpartition("_")[2].upper()


def _shown_default(field: FieldInfo) -> str:
    default = field.default
    if default is PydanticUndefined:
        return "required"
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, dt.timedelta):
        shown = f"{default.total_seconds():g}"
    elif default == "":
        shown = "none"
    else:
        shown = str(default)
    return f"default {shown}"
