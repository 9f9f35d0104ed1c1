"""Joining a Ray cluster: the cause of a failure in one line (manifests/ray_cluster.py).

The real cluster (token authentication, a driver without the token) is in
tests/extract/test_extract_ray_cluster.py (-m faults); here are the fast cases: nothing listening,
and the wording for each cause, from errors shaped as Ray 2.60 raises them.
"""

from __future__ import annotations

import socket

import pytest

from manifests import ray_cluster
from manifests.errors import UserError


def refused_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there


def test_addresses_that_are_probed():
    assert ray_cluster.host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert ray_cluster.host_port("[::1]:6380") == ("::1", 6380)
    assert ray_cluster.host_port("head.cluster:6379") == ("head.cluster", 6379)
    for resolved_by_ray in ("auto", "local", "ray://10.0.0.5:10001", "10.0.0.5"):
        assert ray_cluster.host_port(resolved_by_ray) is None


def test_nothing_listening_is_one_line_without_starting_ray():
    ray = pytest.importorskip("ray")
    address = refused_address()
    with pytest.raises(UserError) as info:
        ray_cluster.connect(address, "extract.ray_address", 1, "extract.runner=inprocess")
    message = str(info.value)
    assert message.startswith(f"extract.ray_address='{address}': nothing is listening there (connection refused)")
    assert "ray-head" in message and "\n" not in message
    assert not ray.is_initialized()


def test_a_listening_address_passes_the_probe():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        ray_cluster.check_listening(f"127.0.0.1:{server.getsockname()[1]}", "x.ray_address")


def test_an_unknown_host_is_named():
    with pytest.raises(UserError, match="cannot resolve the host 'no-such-host.invalid'"):
        ray_cluster.check_listening("no-such-host.invalid:6379", "train.ray_address")


def ray_style(inner: BaseException, address="10.0.0.5:6379") -> ConnectionError:
    """What ray.init raises: ConnectionError("Failed to connect ...") from the node's error."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise ConnectionError(f"Failed to connect to Ray cluster at {address}") from exc
    except ConnectionError as outer:
        return outer


def test_authentication_is_named_with_what_this_process_sent(monkeypatch):
    # Ray 2.60's text when a driver without RAY_AUTH_MODE=token meets a head with token auth
    inner = RuntimeError("Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
                         "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is "
                         "missing or incorrect.")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    message = ray_cluster.connect_failure("10.0.0.5:6379", "extract.ray_address", ray_style(inner))
    assert message.startswith("extract.ray_address='10.0.0.5:6379': the Ray cluster refused this process's "
                              "authentication token (RAY_AUTH_MODE is not set here, so no token was sent)")
    assert "RAY_AUTH_MODE=token with RAY_AUTH_TOKEN_PATH=" in message and "\n" not in message


def test_auth_state_says_which_token_was_sent(tmp_path):
    token = tmp_path / "auth_token"
    assert "which does not match" in ray_cluster.auth_state({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x"})
    assert f"RAY_AUTH_TOKEN_PATH={token} does not exist" == ray_cluster.auth_state(
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    token.write_text("abc")
    assert str(token) in ray_cluster.auth_state({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    assert "'disabled' here" in ray_cluster.auth_state({"RAY_AUTH_MODE": "disabled"})


def test_a_version_mismatch_names_both_versions():
    # the text of ray._private.utils.check_version_info
    inner = RuntimeError("Version mismatch: The cluster was started with:\n    Ray: 2.59.0\n    Python: 3.11.7\n"
                         "This process on node 10.0.0.7 was started with:\n    Ray: 2.60.0\n    Python: 3.11.7\n")
    message = ray_cluster.connect_failure("auto", "train.ray_address", ray_style(inner))
    assert message.startswith("train.ray_address='auto': Ray or Python version mismatch (The cluster was started "
                              "with: Ray: 2.59.0 Python: 3.11.7 This process on node 10.0.0.7 was started with: "
                              "Ray: 2.60.0 Python: 3.11.7)")
    assert "\n" not in message


def test_other_failures_keep_rays_reason():
    message = ray_cluster.connect_failure(None, "extract.ray_address", RuntimeError("raylet died\nmore"))
    assert message.startswith("extract.ray_address (a local Ray): cannot connect to a Ray cluster "
                              "(RuntimeError: raylet died)")
