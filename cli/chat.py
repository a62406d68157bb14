"""`qnext chat`: a terminal client for humans. Streams the model's answer as it is generated;
keeps the conversation (each turn is sent with the whole history, so the server's prefix
cache reuses it). One-shot with `--prompt`, otherwise one turn per line of standard input.
A gRPC client only: never imports torch or the engine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from qnext.cli.app import app, fail
from qnext.cli.channels import open_channel


@app.command()
def chat(
    addr: Annotated[str, typer.Option(envvar="QNEXT_ADDR", help="The server's data port.")] =
    "127.0.0.1:50051",
    prompt: Annotated[Optional[str], typer.Option(help="One turn, then exit.")] = None,
    system: Annotated[Optional[str], typer.Option(help="A system message.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.7,
    reasoning: Annotated[bool, typer.Option(help="Show <think> text (dimmed) apart.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds per answer.")] = 600.0,
    tls_ca: Annotated[Optional[Path], typer.Option(
        help="PEM root certificate: connect with TLS.")] = None,
) -> None:
    """Chat with a running qnext server, streaming answers to the terminal."""
    import grpc

    from qnext.v1 import generation_pb2 as g, generation_pb2_grpc

    try:
        channel = open_channel(addr, tls_ca)
    except ValueError as err:  # an unreadable --tls-ca
        fail(str(err))
    stub = generation_pb2_grpc.GenerationStub(channel)
    history = [g.ChatMessage(role="system", content=system)] if system else []
    turns = [prompt] if prompt is not None else (line.rstrip("\n") for line in sys.stdin)
    params = g.SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    for text in turns:
        if not text.strip():
            continue
        history.append(g.ChatMessage(role="user", content=text))
        request = g.GenerateRequest(chat=g.Chat(messages=history), sampling=params,
                                    separate_reasoning=reasoning)
        try:
            answer = _stream(stub, request, timeout)
        except grpc.RpcError as err:
            fail(f"{err.code().name}: {err.details()}")
        history.append(g.ChatMessage(role="assistant", content=answer))


def _stream(stub, request, timeout: float) -> str:
    """Print the answer as it arrives; returns its text."""
    parts = []
    for msg in stub.Stream(request, timeout=timeout):
        if msg.WhichOneof("kind") != "chunk":
            continue
        if msg.chunk.reasoning_text:
            typer.secho(msg.chunk.reasoning_text, nl=False, dim=True)
        typer.echo(msg.chunk.text, nl=False)
        parts.append(msg.chunk.text)
    typer.echo("")
    return "".join(parts)
