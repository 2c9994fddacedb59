"""Starts a real chatgate (built by cargo) in front of its bundled mock
upstream, on a free loopback port, for the official `openai` SDK to talk to.

The binary comes from CHATGATE_BIN, or target/debug/chatgate at the
repository root (`.ci/run` builds it before running these tests)."""

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MESSAGES_PER_MINUTE = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    binary = Path(os.environ.get("CHATGATE_BIN", ROOT / "target" / "debug" / "chatgate"))
    if not binary.exists():
        pytest.fail(f"{binary} not found: build it with `cargo build -p chatgate`")
    work = tmp_path_factory.mktemp("gateway")
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CHATGATE_SERVER__BIND": f"127.0.0.1:{port}",
        "CHATGATE_STORAGE__PATH": str(work / "chat.db"),
        "CHATGATE_LOG__FILE": str(work / "app.log"),
        "CHATGATE_RATE_LIMIT__MESSAGES_PER_MINUTE": str(MESSAGES_PER_MINUTE),
        # The whole suite is one client address: its quotas are not under test.
        "CHATGATE_RATE_LIMIT__ADDRESS_MESSAGES_PER_MINUTE": "1000000",
        "CHATGATE_RATE_LIMIT__SESSIONS_PER_HOUR": "1000000",
        "CHATGATE_OPENAI__MODELS": '["gpt-3.5-turbo", "mock-large", "gpt-4o-mini"]',
    }
    proc = subprocess.Popen(
        [str(binary), "--mock-upstream"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"chatgate exited: {proc.stderr.read().decode(errors='replace')}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("chatgate did not become healthy within 30 s")
        time.sleep(0.05)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log = (work / "app.log").read_text(errors="replace")
    assert "sk-" not in log, "a key-like string reached app.log"


@pytest.fixture()
def client(gateway):
    from openai import OpenAI

    return OpenAI(base_url=f"{gateway}/v1", api_key="unused-by-chatgate", max_retries=0)


@pytest.fixture()
def session_id(gateway):
    req = urllib.request.Request(f"{gateway}/session/initialize_session", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=5) as r:
        import json

        return json.load(r)["session_id"]


SECRET_KEY = "sdk-signing-secret-Vq3Lm8Xr2Kp7Tz9Wd4Hs6"


@pytest.fixture(scope="session")
def required_gateway(tmp_path_factory):
    """A second chatgate, in `required` mode, and an API key made for it by
    `chatgate keys create` (another process, same database)."""
    binary = Path(os.environ.get("CHATGATE_BIN", ROOT / "target" / "debug" / "chatgate"))
    if not binary.exists():
        pytest.fail(f"{binary} not found: build it with `cargo build -p chatgate`")
    work = tmp_path_factory.mktemp("required")
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CHATGATE_SERVER__BIND": f"127.0.0.1:{port}",
        "CHATGATE_STORAGE__PATH": str(work / "chat.db"),
        "CHATGATE_LOG__FILE": str(work / "app.log"),
        "CHATGATE_AUTH__MODE": "required",
        "SECRET_KEY": SECRET_KEY,
    }
    proc = subprocess.Popen(
        [str(binary), "--mock-upstream"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"chatgate exited: {proc.stderr.read().decode(errors='replace')}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("chatgate did not become healthy within 30 s")
        time.sleep(0.05)
    made = subprocess.run(
        [str(binary), "keys", "create", "--name", "sdk"],
        cwd=work,
        env={**env, "CHATGATE_OPENAI__BASE_URL": "http://127.0.0.1:9/v1"},
        capture_output=True,
        timeout=30,
        check=True,
    )
    key = made.stdout.decode().strip()
    yield base, key
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log = (work / "app.log").read_text(errors="replace")
    assert key.split("_")[-1] not in log, "an API key reached app.log"
