"""Fixtures: backstop servers (started once, stopped with SIGTERM) and SDK clients."""

import os

# Before anything imports litellm: no fetch of the remote model cost map, no telemetry, no hub.
# (scripts/test-sdk sets these too; here they also hold for a bare `pytest tests/sdk`.)
for _k, _v in {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "NO_PROXY": "127.0.0.1,localhost,::1",
    "no_proxy": "127.0.0.1,localhost,::1",
}.items():
    os.environ.setdefault(_k, _v)

import anthropic  # noqa: E402
import httpx  # noqa: E402
import openai  # noqa: E402
import pytest  # noqa: E402

from harness import API_KEY, Backstop, backstop_bin, model_path  # noqa: E402


def pytest_report_header(config):
    return [f"backstop: {backstop_bin()}  model: {model_path()}"]


def _start(*args):
    try:
        return Backstop(*args)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def server():
    """The main server: --api-key set, default parallelism."""
    s = _start("--api-key", API_KEY)
    yield s
    s.stop()  # raises (an error in teardown) unless it exits within 5 s of SIGTERM


@pytest.fixture(scope="session")
def overload_server():
    """One slot, no queue, no API key: the second concurrent request is refused."""
    s = _start("--parallel", "1", "--queue", "0")
    yield s
    s.stop()


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture
def ant(server):
    return anthropic.Anthropic(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture
def http(server):
    """Raw httpx client with the key (Bearer) for requests the SDKs will not send."""
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120, trust_env=False
    ) as c:
        yield c
