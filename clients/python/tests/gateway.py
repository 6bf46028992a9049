"""Starts the mock upstream and LiteLLM proxy processes (no database: master key
only) for the hook's tests and the benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

from reckon_server import free_port

HERE = Path(__file__).resolve().parent
MASTER_KEY = "sk-reckon-test-master"
MODEL = "mock-gpt"
MODELS_PRICED_BY_CARD = ("mock-small", "mock-large")
"""Two more names for the mock model, which one service prices per model (rate card)."""


def quiet_env(**extra: str) -> dict:
    """The proxies' environment: offline model cost map, no database, quiet logs."""
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR",
               LITELLM_TELEMETRY="False", DISABLE_SCHEMA_UPDATE="True",
               NO_DOCS="True", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float,
               headers: Optional[dict] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited:\n{log.read_text()[-3000:]}")
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=1):
                return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {timeout} s:\n{log.read_text()[-3000:]}")


class Processes:
    """Processes started for a test module; all stopped by ``stop``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    def spawn(self, args: list, log_name: str, env: dict) -> tuple[subprocess.Popen, Path]:
        log = self.workdir / log_name
        with open(log, "ab") as f:
            proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    cwd=self.workdir)
        self.procs.append(proc)
        return proc, log

    def mock_upstream(self) -> int:
        port = free_port()
        proc, log = self.spawn([sys.executable, str(HERE / "mock_openai.py"), str(port)],
                               f"mock-{port}.log", quiet_env())
        _wait_http(f"http://127.0.0.1:{port}/v1/models", proc, log, 60)
        return port

    def proxy_config(self, upstream_port: int, hook_config: Optional[dict]) -> Path:
        """A LiteLLM config: one mock model, the hook when ``hook_config`` is given."""
        name = "with-hook" if hook_config else "no-hook"
        cfg = {
            "model_list": [{"model_name": name, "litellm_params": {
                "model": f"openai/{name}", "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                "api_key": "mock-upstream-key"}} for name in (MODEL, *MODELS_PRICED_BY_CARD)],
            # A client that leaves cancels the upstream call, so the hook releases.
            "general_settings": {"master_key": MASTER_KEY, "cancel_on_disconnect": True},
            "litellm_settings": {"request_timeout": 30, "num_retries": 0},
        }
        if hook_config:
            (self.workdir / "reckon_hook.json").write_text(json.dumps(hook_config))
            (self.workdir / "reckon_callbacks.py").write_text(
                "from reckon_client.litellm_hook import ReckonBudget\n"
                "reckon_budget = ReckonBudget()\n")
            cfg["litellm_settings"]["callbacks"] = "reckon_callbacks.reckon_budget"
        path = self.workdir / f"litellm-{name}.json"
        path.write_text(json.dumps(cfg))
        return path

    def proxies(self, config: Path, count: int, timeout: float = 180) -> list[int]:
        """Starts ``count`` proxy processes on the config; returns their ports."""
        env = quiet_env(RECKON_HOOK_CONFIG=str(self.workdir / "reckon_hook.json"))
        litellm_bin = Path(sys.executable).with_name("litellm")
        started = []
        for _ in range(count):
            port = free_port()
            proc, log = self.spawn([str(litellm_bin), "--config", str(config), "--host",
                                    "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                                   f"proxy-{port}.log", env)
            started.append((port, proc, log))
        for port, proc, log in started:
            _wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, log, timeout)
        return [p for p, _, _ in started]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
