"""What a zero-downtime update needs from the runtime: the token read from a file, SO_REUSEPORT
with one worker, a new server taking every new connection, and a grace for idle keep-alive
connections at shutdown."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mlflow_deploy_plugins.serving.http import Request, Response, shutdown, start_server
from mlflow_deploy_plugins.serving.server import steer_new_connections
from mlflow_deploy_plugins.serving.settings import ServingSettings, SettingsError


def test_the_token_is_read_from_a_file(tmp_path):
    token = tmp_path / "token"
    token.write_text("  s3cret \n")
    env = {"MLFLOW_DEPLOY_AUTH_TOKEN_FILE": str(token)}
    settings = ServingSettings.resolve(env=env)
    assert settings.auth_token == "s3cret" and "s3cret" not in repr(settings)


def test_a_bad_token_file_is_an_error_naming_it(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SettingsError, match="MLFLOW_DEPLOY_AUTH_TOKEN_FILE.*empty"):
        ServingSettings.resolve(env={"MLFLOW_DEPLOY_AUTH_TOKEN_FILE": str(empty)})
    with pytest.raises(SettingsError, match="cannot read the token file"):
        ServingSettings.resolve(env={"MLFLOW_DEPLOY_AUTH_TOKEN_FILE": str(tmp_path / "none")})
    with pytest.raises(SettingsError, match="not both"):
        ServingSettings.resolve(
            env={"MLFLOW_DEPLOY_AUTH_TOKEN_FILE": str(empty), "MLFLOW_DEPLOY_AUTH_TOKEN": "x"}
        )


def test_reuse_port_settings_parse_from_the_environment():
    env = {"MLFLOW_DEPLOY_REUSE_PORT": "true", "MLFLOW_DEPLOY_REUSE_PORT_TAKEOVER": "2"}
    settings = ServingSettings.resolve(env=env)
    assert settings.reuse_port is True and settings.reuse_port_takeover == 2
    with pytest.raises(SettingsError, match="REUSE_PORT_TAKEOVER=0: must be >= 1"):
        ServingSettings.resolve(env={"MLFLOW_DEPLOY_REUSE_PORT_TAKEOVER": "0"})


def _answering(tag: str):
    def handler(request: Request) -> Response:
        return Response(200, tag.encode(), "text/plain")

    return handler


async def _get(port: int, reader=None, writer=None) -> tuple[bytes, asyncio.StreamReader, object]:
    if reader is None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[
            1
        ]
    )
    body = await reader.readexactly(length)
    return head + body, reader, writer


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT (Linux)")
def test_a_new_server_takes_every_new_connection_on_the_shared_port():
    async def scenario():
        old = await start_server(_answering("old"), "127.0.0.1", 0, reuse_port=True)
        port = old.sockets[0].getsockname()[1]
        new = await start_server(_answering("new"), "127.0.0.1", port, reuse_port=True)
        assert steer_new_connections(new, previous=1, workers=1)
        answers = []
        for _ in range(40):
            response, _, writer = await _get(port)
            answers.append(response.rsplit(b"\r\n\r\n", 1)[1])
            writer.close()
        await shutdown(old)
        after = []
        for _ in range(10):  # the program now points past the group: the kernel's hash decides
            response, _, writer = await _get(port)
            after.append(response.rsplit(b"\r\n\r\n", 1)[1])
            writer.close()
        await shutdown(new)
        return answers, after

    answers, after = asyncio.run(scenario())
    assert set(answers) == {b"new"} and set(after) == {b"new"}


def test_idle_keep_alive_connections_get_a_grace_at_shutdown():
    async def scenario():
        server = await start_server(_answering("ok"), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        first, reader, writer = await _get(port)
        assert b"Connection: close" not in first
        stopping = asyncio.ensure_future(shutdown(server, timeout=5, idle_grace_s=2.0))
        await asyncio.sleep(0.2)  # idle, shutting down: still open
        last, reader, writer = await _get(port, reader, writer)
        eof = await asyncio.wait_for(reader.read(), 2)
        await stopping
        writer.close()
        return last, eof

    last, eof = asyncio.run(scenario())
    assert last.endswith(b"ok") and b"Connection: close" in last and eof == b""
