"""``fme-bridge local``: the whole bridge on this machine, no AWS account and no Docker."""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fme_bridge.commands.common import CliError
from fme_bridge.fme_sink import FmeSink
from fme_bridge.local.stack import InvalidPort, LocalSettings, LocalStack, NotLoopback, PortInUse
from fme_bridge.segment_sink import SegmentSink


def register(app: typer.Typer) -> None:
    app.command("local")(local)


# The local stack's console: its log lines are Rich markup, in which what came from outside (paths,
# errors, tracebacks) is escaped where the line is made.
out = Console(highlight=False, emoji=False)


def _log(message: str) -> None:
    out.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", soft_wrap=True)


def make_sink(host: str, port: int) -> SegmentSink:
    """The local Segment sink: Basic auth required, any non-empty write key accepted (the demo's and an
    operator's own outbound configs alike)."""
    sink = SegmentSink(host=host, port=port)
    sink.write_keys = AnyWriteKey()
    return sink.start()


class AnyWriteKey(set[str]):
    """Stands in for the sink's set of write keys."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(key)


def make_fme_sink(host: str, port: int) -> FmeSink:
    """The local FME sink that delivery sends to: accepts any key, shows what it got at /_sink/state."""
    return FmeSink(sdk_keys=None, admin_keys=None, host=host, port=port).start()


def local(
    demo: Annotated[
        bool, typer.Option("--demo", help="Seed a demo connection and push sample traffic through.")
    ] = False,
    host: Annotated[str, typer.Option(help="Loopback address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the webhook API (and GET /_local/info).")] = 3000,
    aws_port: Annotated[
        int, typer.Option(help="Port of the local AWS (DynamoDB, SQS, SSM, Secrets Manager).")
    ] = 4566,
    sink_port: Annotated[int, typer.Option(help="Port of the local Segment sink.")] = 3001,
    fme_port: Annotated[int, typer.Option(help="Port of the local FME sink (delivery's target).")] = 3002,
) -> None:
    """Run the bridge locally: local AWS, webhook API, SQS and stream pollers, Segment and FME sinks."""
    # The local AWS logs every request; the stack logs what matters (invocations, failures).
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    stack = LocalStack(
        LocalSettings(host, port, aws_port, sink_port, fme_port),
        log=_log,
        sink_factory=make_sink,
        fme_sink_factory=make_fme_sink,
    )
    # Both set explicitly, before anything starts: a shell starting this in the background may
    # have left SIGINT ignored, and a Ctrl-C while starting must still stop cleanly.
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        stack.start()
    except (PortInUse, NotLoopback, InvalidPort) as exc:
        stack.stop()
        raise CliError(str(exc)) from None

    try:
        _print_banner(stack)
        if demo and not stopping.is_set():
            from fme_bridge.local.demo import run_demo

            run_demo(stack, out)
        out.print("[bold]Serving.[/bold] Ctrl-C to stop.")
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        out.print("stopped")
        # The local AWS leaves millions of objects; collecting them at exit would take seconds.
        gc.freeze()


def _print_banner(stack: LocalStack) -> None:
    info = stack.info()
    rows = [
        ("webhook", f"{info['webhookUrl']}{{connectionId}}"),
        ("impressions webhook", f"{info['impressionsWebhookUrl']}{{token}}"),
        ("profile API", f"{info['profilesApiUrl']}/{{environment}}/{{trafficType}}/{{key}}"),
        ("info", f"{stack.api_url}/_local/info"),
        ("AWS endpoint", info["awsEndpointUrl"]),
    ]
    if info["sinkUrl"]:
        rows.append(("Segment sink", info["sinkUrl"]))
    if info.get("fmeEventsEndpoint"):
        rows.append(("FME sink", f"{info['fmeEventsEndpoint']} · {info['fmeIdentitiesEndpoint']}"))
    rows.append(("config prefix", info["configPrefix"]))
    rows += list(info["queueUrls"].items()) + list(info["tableNames"].items())
    # Lines the terminal wraps rather than a table that folds or cuts: the URLs stay whole to copy.
    width = max(len(label) for label, _ in rows)
    out.print("[bold]fme-bridge local[/bold]")
    for label, value in rows:
        out.print(f"  {escape(label):<{width}}  {escape(value)}", soft_wrap=True)
    export = f"export AWS_ENDPOINT_URL={info['awsEndpointUrl']}"
    out.print(f"CLI against this stack: [bold]{export}[/bold]", soft_wrap=True)
