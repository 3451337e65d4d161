"""The local Ray cluster's own state: token file, runtime paths, HAProxy isolation, auth env.

No cluster is started here (tests/integration/test_local_cluster.py starts real ones).
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving import local_cluster
from serving.local_cluster import ClusterError, ClusterLayout

# Ray Serve adds the node id (56 hex characters) as a directory below each HAProxy path, and
# HAProxy refuses socket paths longer than this.
NODE_ID_LENGTH = 56
HAPROXY_SOCKET_LIMIT = 97
PORTS = {"stats_port": 18404, "metrics_port": 19101, "fallback_port": 18500}


def test_token_is_created_once_random_and_private(tmp_path: Path) -> None:
    path = local_cluster.ensure_token(tmp_path / "serve" / "ray_auth_token")
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert local_cluster.ensure_token(path).read_text() == token  # kept, not regenerated
    other = local_cluster.ensure_token(tmp_path / "other" / "ray_auth_token").read_text()
    assert other != token


def test_an_existing_token_gets_a_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "ray_auth_token"
    path.write_text("a-token")
    path.chmod(0o644)
    local_cluster.ensure_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "a-token"


def test_an_empty_token_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "ray_auth_token"
    path.write_text("")
    with pytest.raises(ClusterError, match="ray_auth_token"):
        local_cluster.ensure_token(path)


def test_each_state_dir_has_its_own_short_runtime_dir(tmp_path: Path) -> None:
    first = ClusterLayout(tmp_path / "a" / "var" / "serve")
    second = ClusterLayout(tmp_path / "b" / "var" / "serve")
    assert first.runtime_dir != second.runtime_dir
    assert first.runtime_dir == ClusterLayout(tmp_path / "a" / "var" / "serve").runtime_dir
    env = local_cluster.haproxy_env(first.haproxy_dir, PORTS)
    longest = max(
        len(str(Path(value).parent / ("x" * NODE_ID_LENGTH) / Path(value).name))
        for name, value in env.items()
        if name.endswith(("_PATH", "_FILE", "_LOC"))
    )
    assert longest <= HAPROXY_SOCKET_LIMIT
    assert first.token.parent == first.state_dir  # the token stays with the checkout


def test_every_machine_wide_haproxy_default_is_overridden(tmp_path: Path) -> None:
    """Ray Serve's HAProxy defaults are machine-wide (/tmp/haproxy-serve/, ports 8404, 9101,
    8500). A Ray upgrade that adds another such path fails here, not in a collision."""
    from ray.serve._private import constants

    env = local_cluster.haproxy_env(tmp_path / "haproxy", PORTS)
    machine_wide = {
        name
        for name, value in vars(constants).items()
        if name.startswith("RAY_SERVE_HAPROXY_")
        and isinstance(value, str)
        and value.startswith("/tmp/haproxy-serve")
    }
    assert machine_wide and machine_wide <= set(env)
    assert all(str(tmp_path) in env[name] for name in machine_wide)
    # the fixed defaults we move away from, each to its own port
    assert constants.RAY_SERVE_HAPROXY_STATS_PORT == 8404
    assert constants.RAY_SERVE_HAPROXY_METRICS_PORT == 9101
    assert constants.RAY_SERVE_FALLBACK_PROXY_HTTP_PORT == 8500
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
    assert env["RAY_SERVE_HAPROXY_METRICS_PORT"] == "19101"
    assert env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] == "18500"


def test_an_inherited_ray_auth_token_is_not_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """RAY_AUTH_TOKEN takes precedence over RAY_AUTH_TOKEN_PATH in Ray: one left in a user's
    shell would make our cluster use someone else's token."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", "somebody-elses")
    env = local_cluster.child_env(local_cluster.auth_env(Path("/x/ray_auth_token")))
    assert "RAY_AUTH_TOKEN" not in env
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == "/x/ray_auth_token"


@pytest.fixture()
def ray_auth_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Ray's process-wide auth state as the environment had it, after the test."""
    yield monkeypatch
    monkeypatch.undo()
    local_cluster.reread_ray_auth()


def test_the_private_ray_auth_adapter_still_rereads_mode_and_token(
    tmp_path: Path, ray_auth_restored: pytest.MonkeyPatch
) -> None:
    """`reread_ray_auth` is the one place Ray's internals are touched for auth (no public API
    re-reads Ray's auth settings in a running process). After it, Ray must use the mode and
    token file now in the environment; an upgrade that moves or changes those internals fails
    here, loudly, rather than in `mlops serve` or a benchmark's second cluster."""
    from ray._raylet import (  # pylint: disable=no-name-in-module
        AuthenticationMode,
        AuthenticationTokenLoader,
        get_authentication_mode,
    )

    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("first-cluster-token")
    second.write_text("second-cluster-token")
    for name, value in local_cluster.auth_env(first).items():
        ray_auth_restored.setenv(name, value)
    ray_auth_restored.delenv("RAY_AUTH_TOKEN", raising=False)
    local_cluster.reread_ray_auth()
    loader = AuthenticationTokenLoader.instance()
    assert get_authentication_mode() == AuthenticationMode.TOKEN
    assert loader.get_raw_token() == "first-cluster-token"

    ray_auth_restored.setenv("RAY_AUTH_TOKEN_PATH", str(second))
    assert (
        loader.get_raw_token() == "first-cluster-token"
    ), "Ray now re-reads the token file by itself: reread_ray_auth may be unnecessary"
    local_cluster.reread_ray_auth()
    assert loader.get_raw_token() == "second-cluster-token"


def test_no_cluster_recorded_means_not_running(tmp_path: Path) -> None:
    assert local_cluster.local_cluster_address(tmp_path) is None
    (tmp_path / "cluster.json").write_text('{"gcs_port": 1}')
    assert not local_cluster.local_cluster_running(tmp_path)
    with pytest.raises(ClusterError, match="mlops serve"):
        local_cluster.connect(tmp_path)


def test_the_runtime_dir_is_private_and_a_planted_one_is_refused(tmp_path: Path) -> None:
    """/tmp/mlops-<hash> is a predictable name: another user's directory, or a link planted
    there, must not become our cluster's socket directory."""
    made = local_cluster.ensure_private_dir(tmp_path / "runtime")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert local_cluster.ensure_private_dir(made) == made  # ours already: fine
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = tmp_path / "planted"
    planted.symlink_to(elsewhere)
    with pytest.raises(ClusterError, match="planted"):
        local_cluster.ensure_private_dir(planted)


def test_ports_come_from_outside_the_ephemeral_range() -> None:
    """Listeners bind a while after their port is chosen; the OS hands ephemeral ports to
    outgoing connections meanwhile (a HAProxy stats port was taken that way)."""
    from ml.common import net

    ephemeral = net._ephemeral_range()  # pylint: disable=protected-access
    ports = local_cluster.free_ports(*local_cluster.CLUSTER_PORTS)
    assert all(port in net.LISTEN_PORTS and port not in ephemeral for port in ports.values())


def _sleeper(*args: str) -> subprocess.Popen[bytes]:
    """A real process whose command line carries `args`, as a leftover of a dead cluster."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *args])


def test_daemons_that_outlive_a_killed_gcs_are_not_a_running_cluster(tmp_path: Path) -> None:
    """Ray's dashboard and monitors carry `--gcs-address` and outlive a GCS killed with -9
    by minutes: they alone made `mlops serve` attach to a dead cluster and hang in ray.init."""
    port = local_cluster.free_port()
    (tmp_path / "cluster.json").write_text(json.dumps({"gcs_port": port}))
    leftover = _sleeper(f"--gcs-address=127.0.0.1:{port}")
    try:
        assert local_cluster.local_cluster_address(tmp_path) is None
    finally:
        leftover.kill()
        leftover.wait()


def test_stopping_ends_what_a_dead_cluster_left_behind(tmp_path: Path) -> None:
    """An orphaned HAProxy (its config under the runtime dir) kept the serving port."""
    layout = ClusterLayout(tmp_path / "var" / "serve")
    leftover = _sleeper("-f", str(layout.haproxy_dir / "node" / "haproxy.cfg"))
    stranger = _sleeper("-f", str(tmp_path / "elsewhere" / "haproxy.cfg"))
    try:
        found = [process.pid for process in local_cluster.cluster_processes(layout)]
        assert found == [leftover.pid]
        assert not local_cluster.stop_local_cluster(layout.state_dir, timeout_s=5)
        assert leftover.wait(timeout=10) is not None
        assert stranger.poll() is None
    finally:
        for process in (leftover, stranger):
            process.kill()
            process.wait()
