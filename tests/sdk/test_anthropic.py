"""The official anthropic SDK against backstop's Anthropic-compatible routes."""

import json
import time

import anthropic
import httpx
import openai
import pytest

from harness import API_KEY, sse_events

MODEL = "claude-sonnet-4-5"  # any name is accepted and echoed back
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who lives in a castle."}]
SYSTEM = "You are a helpful assistant who answers in one short sentence."
LONGER = " Be polite, precise and never mention that you are a language model."


# anthropic 2.x no longer types temperature/top_p/top_k (newer Claude models fix them), so the
# SDK sends them through extra_body: the same JSON fields as before, which backstop honours.
GREEDY = {"extra_body": {"temperature": 0}}


def greedy(ant, messages=QUESTION, max_tokens=16, **kw):
    return ant.messages.create(model=MODEL, messages=messages, max_tokens=max_tokens, **GREEDY, **kw)


def prompt_tokens(usage):
    """The whole prompt: Anthropic's input_tokens leaves out the tokens read from or written to
    the prompt cache, which backstop reports for its prefix cache."""
    return usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)


def text_of(msg):
    assert all(b.type == "text" for b in msg.content), msg.content
    return "".join(b.text for b in msg.content)


def test_messages_create(ant):
    m = greedy(ant)
    assert m.type == "message"
    assert m.id
    assert m.role == "assistant"
    assert m.model == MODEL
    assert len(m.content) == 1 and m.content[0].type == "text"
    assert m.content[0].text.strip()
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.stop_sequence is None
    assert prompt_tokens(m.usage) > 0
    assert 0 < m.usage.output_tokens <= 16


def test_max_tokens_stop_reason(ant):
    m = ant.messages.create(model=MODEL, messages=STORY, max_tokens=5, **GREEDY)
    assert m.stop_reason == "max_tokens"
    assert m.usage.output_tokens == 5


def test_stream_helper_equals_greedy(ant):
    ref = greedy(ant)
    with ant.messages.stream(model=MODEL, messages=QUESTION, max_tokens=16, **GREEDY) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == text_of(ref)
    assert text_of(final) == text
    assert final.model == MODEL
    assert final.stop_reason == ref.stop_reason
    assert prompt_tokens(final.usage) == prompt_tokens(ref.usage)
    assert final.usage.output_tokens == ref.usage.output_tokens


def test_stream_event_sequence(server, http):
    """The raw SSE: message_start, content_block_start, ping, content_block_delta (text_delta)...,
    content_block_stop, message_delta (stop_reason, usage.output_tokens), message_stop."""
    body = {"model": MODEL, "max_tokens": 8, "stream": True, "messages": QUESTION}
    with http.stream("POST", "/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers.get("x-backstop-served-by")
        events = sse_events(r.iter_lines())
    parsed = []
    for name, data in events:
        d = json.loads(data)
        assert name == d["type"], (name, d)
        parsed.append(d)
    types = [d["type"] for d in parsed if d["type"] != "ping"]
    assert types[0] == "message_start", types
    assert types[1] == "content_block_start", types
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"], types
    assert set(types[2:-3]) <= {"content_block_delta"}, types
    assert "ping" in [d["type"] for d in parsed]
    start = parsed[0]["message"]
    assert start["role"] == "assistant" and start["model"] == MODEL and start["content"] == []
    u = start["usage"]
    assert u["input_tokens"] + u.get("cache_read_input_tokens", 0) + u.get("cache_creation_input_tokens", 0) > 0
    block = next(d for d in parsed if d["type"] == "content_block_start")
    assert block["index"] == 0 and block["content_block"]["type"] == "text"
    deltas = [d for d in parsed if d["type"] == "content_block_delta"]
    assert deltas and all(d["delta"]["type"] == "text_delta" and d["index"] == 0 for d in deltas)
    md = next(d for d in parsed if d["type"] == "message_delta")
    assert md["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert 0 < md["usage"]["output_tokens"] <= 8


def test_system_prompt(ant):
    with_sys = greedy(ant, system=SYSTEM)
    assert text_of(with_sys).strip()
    # (no system prompt is no test of length: SmolLM2's template then inserts a default one)
    longer = greedy(ant, system=SYSTEM + LONGER)
    assert prompt_tokens(longer.usage) > prompt_tokens(with_sys.usage)
    blocks = greedy(ant, system=[{"type": "text", "text": SYSTEM}])
    assert prompt_tokens(blocks.usage) == prompt_tokens(with_sys.usage)
    assert text_of(blocks) == text_of(with_sys)


def test_text_block_content_and_multi_turn(ant):
    as_string = greedy(ant)
    as_blocks = greedy(ant, [{"role": "user", "content": [{"type": "text", "text": QUESTION[0]["content"]}]}])
    assert prompt_tokens(as_blocks.usage) == prompt_tokens(as_string.usage)
    assert text_of(as_blocks) == text_of(as_string)
    turns = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": [{"type": "text", "text": "Nice to meet you, Ada."}]},
        {"role": "user", "content": "What is my name?"},
    ]
    assert text_of(greedy(ant, turns, max_tokens=8)).strip()


def test_stop_sequences(ant):
    ref = text_of(greedy(ant, STORY))
    words = ref.split()
    assert len(words) >= 4, ref
    stop = words[3]
    cut = ref.index(stop)
    m = greedy(ant, STORY, stop_sequences=[stop])
    assert m.stop_reason == "stop_sequence"
    assert m.stop_sequence == stop
    assert text_of(m) == ref[:cut], (ref, stop)


def test_sampling_params_accepted(ant):
    m = ant.messages.create(
        model=MODEL, messages=QUESTION, max_tokens=8, extra_body={"temperature": 0.7, "top_p": 0.9, "top_k": 40}
    )
    assert text_of(m).strip()


def test_count_tokens(ant):
    n = ant.messages.count_tokens(model=MODEL, messages=QUESTION).input_tokens
    assert n > 0
    assert n == prompt_tokens(greedy(ant, max_tokens=1).usage)
    with_sys = ant.messages.count_tokens(model=MODEL, messages=QUESTION, system=SYSTEM).input_tokens
    assert with_sys == prompt_tokens(greedy(ant, max_tokens=1, system=SYSTEM).usage)
    longer = ant.messages.count_tokens(model=MODEL, messages=QUESTION, system=SYSTEM + LONGER).input_tokens
    assert longer > with_sys


def test_served_by_header(ant):
    raw = ant.messages.with_raw_response.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert "smollm2" in (raw.headers.get("x-backstop-served-by") or "").lower(), dict(raw.headers)
    assert raw.parse().type == "message"


# ---- errors ----


def _anthropic_error(e, status, etype):
    err = e.value
    assert err.status_code == status
    assert isinstance(err.body, dict), err.body
    assert err.body.get("type") == "error", err.body
    assert err.body["error"]["type"] == etype, err.body
    assert err.body["error"]["message"]
    return err.body["error"]["message"]


def test_error_prompt_too_long(ant):
    with pytest.raises(anthropic.BadRequestError) as e:
        ant.messages.create(model=MODEL, messages=[{"role": "user", "content": "hello " * 3000}], max_tokens=4)
    assert "prompt is too long" in _anthropic_error(e, 400, "invalid_request_error")


def test_error_missing_max_tokens(http):
    r = http.post("/v1/messages", json={"model": MODEL, "messages": QUESTION})
    assert r.status_code == 400, r.text
    j = r.json()
    assert j["type"] == "error" and j["error"]["type"] == "invalid_request_error", j


def test_error_wrong_api_key(server):
    c = anthropic.Anthropic(base_url=server.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        c.messages.create(model=MODEL, messages=QUESTION, max_tokens=4)
    _anthropic_error(e, 401, "authentication_error")
    with pytest.raises(anthropic.AuthenticationError):
        c.messages.count_tokens(model=MODEL, messages=QUESTION)


def test_bearer_auth_token_accepted(server):
    # Anthropic(auth_token=...) sends Authorization: Bearer instead of x-api-key
    c = anthropic.Anthropic(base_url=server.url, auth_token=API_KEY, max_retries=0)
    assert c.messages.create(model=MODEL, messages=QUESTION, max_tokens=4).content


# ---- overload: --parallel 1 --queue 0 ----


def _hold_slot(h, url):
    """Start a long streaming generation and return once its first text arrives. The caller
    keeps the line iterator too: when it is garbage-collected, httpx closes the stream."""
    body = {"model": MODEL, "max_tokens": 1500, "stream": True, "messages": STORY}
    deadline = time.monotonic() + 10  # a previous test's stream may still be letting go of the slot
    while True:
        cm = h.stream("POST", url + "/v1/messages", json=body)
        r = cm.__enter__()
        if r.status_code != 529 or time.monotonic() > deadline:
            break
        cm.__exit__(None, None, None)
        time.sleep(0.1)
    assert r.status_code == 200, r.read()
    lines = r.iter_lines()
    for line in lines:
        if line.startswith("event: content_block_delta"):
            break
    else:
        raise AssertionError("held stream ended before its first delta")
    return cm, lines


def test_overload_529_and_503(overload_server):
    url = overload_server.url
    a = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=30)
    o = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
    with httpx.Client(timeout=60, trust_env=False) as h:
        cm, _held = _hold_slot(h, url)
        try:
            with pytest.raises(anthropic.APIStatusError) as e:
                a.messages.create(model=MODEL, messages=QUESTION, max_tokens=4)
            assert isinstance(e.value, anthropic.InternalServerError)
            _anthropic_error(e, 529, "overloaded_error")
            assert e.value.response.headers.get("retry-after"), dict(e.value.response.headers)

            with pytest.raises(openai.InternalServerError) as e2:
                o.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=4)
            assert e2.value.status_code == 503
            assert e2.value.response.headers.get("retry-after"), dict(e2.value.response.headers)
            assert isinstance(e2.value.body, dict) and e2.value.body.get("message"), e2.value.body
        finally:
            cm.__exit__(None, None, None)


def test_disconnect_frees_the_slot(overload_server):
    """A client that goes away mid-stream must not keep the only slot busy to max_tokens."""
    url = overload_server.url
    a = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=30)
    with httpx.Client(timeout=60, trust_env=False) as h:
        cm, held = _hold_slot(h, url)
        del held
        cm.__exit__(None, None, None)
    deadline = time.monotonic() + 5
    while True:
        try:
            a.messages.create(model=MODEL, messages=QUESTION, max_tokens=4)
            return
        except anthropic.InternalServerError as e:
            if e.status_code != 529 or time.monotonic() > deadline:
                raise AssertionError("slot still busy 5 s after the streaming client disconnected") from e
            time.sleep(0.2)


def test_error_before_stream_starts(ant):
    with pytest.raises(anthropic.BadRequestError) as e:
        with ant.messages.stream(
            model=MODEL, messages=[{"role": "user", "content": "hello " * 3000}], max_tokens=4
        ) as s:
            s.get_final_message()
    assert "prompt is too long" in _anthropic_error(e, 400, "invalid_request_error")


def test_async_client_stream(server):
    import asyncio

    async def main():
        c = anthropic.AsyncAnthropic(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=120)
        ref = await c.messages.create(model=MODEL, messages=QUESTION, max_tokens=8, **GREEDY)
        async with c.messages.stream(model=MODEL, messages=QUESTION, max_tokens=8, **GREEDY) as s:
            text = "".join([t async for t in s.text_stream])
        await c.close()
        return text_of(ref), text

    ref, text = asyncio.run(main())
    assert text == ref
