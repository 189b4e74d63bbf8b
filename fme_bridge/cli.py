"""``fme-bridge``: the operator CLI, for an AWS deployment and for the local stack alike.

Each command group lives in its own module under ``fme_bridge.commands`` and exposes
``register(app)``; adding a group is one line in :data:`COMMAND_MODULES`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Annotated, Any

import typer
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
from typer.core import TyperGroup

from fme_bridge.commands.common import CliError, err, styled
from fme_bridge.target import Target, TargetError
from shared.config import ConfigError

COMMAND_MODULES = (
    "fme_bridge.commands.local",
    "fme_bridge.commands.config",
    "fme_bridge.commands.impressions",
    "fme_bridge.commands.dlq",
    "fme_bridge.commands.stored",
    "fme_bridge.commands.delivery",
    "fme_bridge.commands.profiles",
)


def describe_error(exc: BaseException, endpoint_url: str | None = None) -> str | None:
    """One line for a failure the user can act on; None for a bug (shown with its traceback)."""
    if isinstance(exc, CliError | TargetError | ConfigError):
        return str(exc)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "error"))
        detail = f"{code}: {error.get('Message', '')}".rstrip(": ")
        if code.isdigit() and endpoint_url:  # a bare HTTP status: what answered may not be an AWS API
            detail += (
                f" ({endpoint_url} did not answer as AWS does: is it the AWS endpoint, the local stack's "
                "--aws-port, and not its HTTP API?)"
            )
        return f"AWS {exc.operation_name} failed: {detail}"
    if isinstance(exc, NoCredentialsError):
        return (
            "no AWS credentials found (configure them as for the AWS CLI, "
            "or pass --endpoint-url for the local stack)"
        )
    if isinstance(exc, NoRegionError):
        return "no AWS region set (pass --region or set AWS_REGION)"
    if isinstance(exc, BotoCoreError):
        return f"AWS: {exc}"
    return None


def _unwrapped(help_text: str) -> str:
    """The paragraphs of a docstring as one line each: the help wraps them to the terminal's width
    (Typer keeps a docstring's own line breaks after its first paragraph)."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(help_text).split("\n\n"))


def _unwrap_help(command: Any) -> None:  # a click command or group (Typer's own click)
    if command.help:
        command.help = _unwrapped(command.help)
    for sub in getattr(command, "commands", {}).values():
        _unwrap_help(sub)


class _OneLineErrors(TyperGroup):
    """Turns the failures of any command into one red line on stderr and exit status 1."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        _unwrap_help(self)
        return super().main(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = describe_error(exc, getattr(ctx.obj, "endpoint_url", None))
            if message is None:
                raise
            err.print(styled("[red]error:[/red] {}", message), soft_wrap=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_OneLineErrors,
    help="Operate fme-segment-bridge: on AWS, or on the local stack (`fme-bridge local`).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            envvar="AWS_ENDPOINT_URL",
            help="AWS endpoint, e.g. http://127.0.0.1:4566 for the local stack.",
        ),
    ] = None,
    region: Annotated[str | None, typer.Option(envvar="AWS_REGION", help="AWS region.")] = None,
    prefix: Annotated[
        str | None, typer.Option(envvar="CONFIG_PREFIX", help="Config prefix in SSM / Secrets Manager.")
    ] = None,
    stack_name: Annotated[
        str | None,
        typer.Option(
            envvar="FME_BRIDGE_STACK", help="CloudFormation stack of the bridge (prefix, queues, tables)."
        ),
    ] = None,
) -> None:
    ctx.obj = Target(
        endpoint_url=endpoint_url,
        region=region,
        prefix_option=prefix,
        stack_name=stack_name,
        # By name: Typer carries its own copy of click's ParameterSource.
        region_given=getattr(ctx.get_parameter_source("region"), "name", None) == "COMMANDLINE",
    )


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
