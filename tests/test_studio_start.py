"""`python app.py`: it serves in seconds, and a missing base model is said, not crashed on."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port

from studio.context import Studio, StudioError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_app_py_serves_with_login_and_without_a_base_model(tmp_path):
    port = free_port()
    cmd = [sys.executable, "app.py", "--port", str(port), "--workspace", str(tmp_path / "ws"),
           "--base-model", str(tmp_path / "no-model")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLM_STUDIO_AUTH": "ann:secret"}  # not in the process list
    log = open(tmp_path / "app.log", "w")
    start = time.time()
    app = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while time.time() - start < 60:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/config", timeout=2)
                break
            except httpx.TransportError:
                assert app.poll() is None, (tmp_path / "app.log").read_text()
                time.sleep(0.2)
        else:
            raise AssertionError("the studio did not answer within 60 s")
        print(f"studio ready in {time.time() - start:.1f} s")
        assert "Not authenticated" in response.text, "a login: nothing is served before it"
        wrong = httpx.post(f"http://127.0.0.1:{port}/login", data={"username": "ann", "password": "guess"})
        assert "Incorrect credentials" in wrong.text
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as browser:
            assert browser.post("/login", data={"username": "ann", "password": "secret"}).json()["success"]
            assert browser.get("/config").json()["version"]
        assert (tmp_path / "ws" / "studio.db").is_file()
    finally:
        app.terminate()
        app.wait(10)
    assert "Traceback" not in (tmp_path / "app.log").read_text()


def test_a_missing_base_model_is_explained(tmp_path):
    studio = Studio(tmp_path / "ws", tmp_path / "no-model")
    assert "base model is missing" in studio.base_missing()
    assert studio.base_choices() == [] and studio.model_choices() == []
    with pytest.raises(StudioError, match="base model is missing"):
        studio.model_dir("base:base")


@pytest.mark.slow
def test_a_port_in_use_is_said_and_left_out_the_next_free_one_is_taken(tmp_path):
    """A second studio (or any program) on the port: --port N in use is a clear error, not a traceback; without
    --port the studio takes the next free port and prints its address."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "app.py", "--workspace", str(tmp_path / "ws")]
        refused = subprocess.run([*cmd, "--port", str(port)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and f"--port {port}: cannot serve on 127.0.0.1" in refused.stderr
        assert "Traceback" not in refused.stderr
        env = {**os.environ, "GRADIO_SERVER_PORT": str(port)}  # where Gradio's scan starts (7860 otherwise)
        app = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            served = None
            for line in app.stdout:
                if found := re.search(r"Running on local URL:\s+http://127\.0\.0\.1:(\d+)", line):
                    served = int(found.group(1))
                    break
            assert served is not None and served != port
            assert httpx.get(f"http://127.0.0.1:{served}/config", timeout=10).json()["version"]
        finally:
            app.terminate()
            app.wait(10)


def test_bad_app_flags_are_refused():
    result = subprocess.run(
        [sys.executable, "app.py", "--auth", "nopassword"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2 and "user:password" in result.stderr


def test_a_login_comes_from_a_file_an_environment_variable_or_the_flag(tmp_path, monkeypatch):
    import argparse

    import app

    parser = argparse.ArgumentParser()
    secret = tmp_path / "login"
    secret.write_text("ann:from file\n")
    args = lambda **kw: argparse.Namespace(**{"auth": None, "auth_file": None, **kw})  # noqa: E731
    monkeypatch.setenv(app.AUTH_VARIABLE, "ann:from env")
    assert app.login(parser, args(auth_file=str(secret))) == ("ann", "from file")
    assert app.login(parser, args(auth="ann:flag")) == ("ann", "flag")
    assert app.login(parser, args()) == ("ann", "from env")
    monkeypatch.delenv(app.AUTH_VARIABLE)
    assert app.login(parser, args()) is None
    with pytest.raises(SystemExit):
        app.login(parser, args(auth_file=str(tmp_path / "missing")))


def test_an_unknown_base_model_ref_is_named_with_the_known_ones(tmp_path, tiny_model_dir):
    studio = Studio(tmp_path / "ws", tiny_model_dir)
    with pytest.raises(StudioError, match=r"Unknown model 'base': the base models are base:\w+"):
        studio.model_dir("base")
