"""LiteLLM Router: a "cloud" deployment that fails, backstop as its fallback. Each failure a
gateway meets (nothing listening, 529/503 overloaded, a hang past the timeout) must end in a
completion served by backstop, streaming and not."""

import time

import litellm
import openai
import pytest

from harness import API_KEY, Stub, closed_port

litellm.suppress_debug_info = True
litellm.telemetry = False

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
MAX_TOKENS = 8
CLOUD_TIMEOUT = 2.0  # seconds, for the hanging cloud
FAILURES = ["closed_port", "anthropic_529", "openai_503", "hang"]


@pytest.fixture(scope="module")
def reference(server):
    """backstop's own greedy answer: what the fallback must return, word for word."""
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    r = c.chat.completions.create(model="backstop-local", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0)
    return r.choices[0].message.content


@pytest.fixture
def cloud(request):
    """(litellm_params of the failing cloud deployment, stub or None)."""
    kind = request.param
    common = {"api_key": "sk-cloud", "timeout": CLOUD_TIMEOUT, "stream_timeout": CLOUD_TIMEOUT, "max_retries": 0}
    if kind == "closed_port":
        yield {"model": "openai/gpt-4o", "api_base": f"http://127.0.0.1:{closed_port()}/v1", **common}, None
        return
    stub = Stub(kind)
    try:
        if kind == "anthropic_529":
            params = {"model": "anthropic/claude-3-5-sonnet-latest", "api_base": stub.url, **common}
        else:
            params = {"model": "openai/gpt-4o", "api_base": stub.url + "/v1", **common}
        yield params, stub
    finally:
        stub.close()


def make_router(cloud_params, local_params):
    return litellm.Router(
        model_list=[
            {"model_name": "cloud-model", "litellm_params": cloud_params},
            {"model_name": "local", "litellm_params": local_params},
        ],
        fallbacks=[{"cloud-model": ["local"]}],
        num_retries=0,
        retry_after=0,
        timeout=60,
    )


def local_openai(server):
    return {"model": "openai/backstop-local", "api_base": server.url + "/v1", "api_key": API_KEY, "max_retries": 0}


def complete(router, stream):
    t0 = time.monotonic()
    resp = router.completion(
        model="cloud-model", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stream=stream
    )
    if stream:
        chunks = list(resp)
        text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    else:
        text = resp.choices[0].message.content
    return text, time.monotonic() - t0


@pytest.mark.parametrize("stream", [False, True], ids=["nonstream", "stream"])
@pytest.mark.parametrize("cloud", FAILURES, indirect=True)
def test_router_falls_back_to_backstop(server, reference, cloud, stream):
    cloud_params, stub = cloud
    router = make_router(cloud_params, local_openai(server))
    text, elapsed = complete(router, stream)
    if stub is not None:
        assert stub.hits, "the cloud deployment was never tried"
    assert text == reference
    assert elapsed < CLOUD_TIMEOUT + 30


@pytest.mark.parametrize("stream", [False, True], ids=["nonstream", "stream"])
@pytest.mark.parametrize("cloud", ["anthropic_529"], indirect=True)
def test_router_falls_back_to_backstop_messages_api(server, cloud, stream):
    """The same fallback with backstop reached through LiteLLM's anthropic provider
    (POST /v1/messages), for gateways that keep one wire format."""
    cloud_params, stub = cloud
    local = {"model": "anthropic/claude-backstop", "api_base": server.url, "api_key": API_KEY, "max_retries": 0}
    text, _ = complete(make_router(cloud_params, local), stream)
    assert stub.hits
    assert isinstance(text, str) and text.strip()


def test_litellm_completion_direct(server, reference):
    """litellm.completion straight at backstop, with the usage LiteLLM reports."""
    r = litellm.completion(
        model="openai/backstop-local",
        api_base=server.url + "/v1",
        api_key=API_KEY,
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    assert r.choices[0].message.content == reference
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


@pytest.mark.parametrize("cloud", ["anthropic_529"], indirect=True)
def test_router_async_stream_fallback(server, reference, cloud):
    """router.acompletion, as LiteLLM's proxy calls it."""
    import asyncio

    cloud_params, stub = cloud
    router = make_router(cloud_params, local_openai(server))

    async def main():
        resp = await router.acompletion(
            model="cloud-model", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stream=True
        )
        return "".join([(c.choices[0].delta.content or "") async for c in resp if c.choices])

    assert asyncio.run(main()) == reference
    assert stub.hits


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize("via", ["openai", "anthropic"])
@pytest.mark.parametrize("cloud", ["anthropic_529"], indirect=True)
def test_router_falls_back_with_tools(server, cloud, via):
    """An agent's request with tools, forced to call one, fails over to backstop and comes back
    as a well-formed tool call, through either of LiteLLM's providers."""
    import json

    cloud_params, stub = cloud
    local = local_openai(server) if via == "openai" else {
        "model": "anthropic/claude-backstop", "api_base": server.url, "api_key": API_KEY, "max_retries": 0}
    router = make_router(cloud_params, local)
    r = router.completion(
        model="cloud-model",
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
    )
    assert stub.hits
    calls = r.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather", r
    args = json.loads(calls[0].function.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit"), args
