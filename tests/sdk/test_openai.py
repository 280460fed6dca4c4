"""The official openai SDK against backstop's OpenAI-compatible routes."""

import openai
import pytest

from harness import API_KEY

MODEL = "gpt-4o"  # any name is accepted and echoed back
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
STORY = [{"role": "user", "content": "Write a long story about a dragon who lives in a castle."}]
TOO_LONG = [{"role": "user", "content": "hello " * 3000}]  # well past -c 2048


def greedy(oai, messages=QUESTION, max_tokens=16, **kw):
    return oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0, **kw)


def test_chat_completion(oai):
    r = greedy(oai)
    assert r.object == "chat.completion"
    assert r.id
    assert isinstance(r.created, int) and r.created > 0
    assert r.model == MODEL
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content.strip()
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 0
    assert 0 < u.completion_tokens <= 16
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_chat_completion_other_model_name_echoed(oai):
    r = oai.chat.completions.create(model="claude-3-5-sonnet-latest", messages=QUESTION, max_tokens=4)
    assert r.model == "claude-3-5-sonnet-latest"


def test_chat_stream_equals_greedy(oai):
    ref = greedy(oai)
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks, "no chunks"
    for ch in chunks:
        assert ch.object == "chat.completion.chunk"
        assert ch.model == MODEL
        assert ch.id == chunks[0].id
    *body, last = chunks
    # include_usage: one final chunk with no choices and the usage; every other chunk's usage is null
    assert last.choices == [], f"last chunk has choices: {last}"
    assert last.usage is not None
    assert all(ch.usage is None for ch in body), [ch.usage for ch in body]
    assert all(len(ch.choices) == 1 for ch in body)
    text = "".join(ch.choices[0].delta.content or "" for ch in body)
    assert text == ref.choices[0].message.content
    assert any(ch.choices[0].delta.role == "assistant" for ch in body)
    reasons = [ch.choices[0].finish_reason for ch in body if ch.choices[0].finish_reason is not None]
    assert reasons == [ref.choices[0].finish_reason], reasons
    assert body[-1].choices[0].finish_reason is not None, "finish_reason is not on the last choice chunk"
    assert last.usage.prompt_tokens == ref.usage.prompt_tokens
    assert last.usage.completion_tokens == ref.usage.completion_tokens
    assert last.usage.total_tokens == ref.usage.total_tokens


def test_chat_stream_without_include_usage(oai):
    chunks = list(oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, stream=True))
    assert chunks
    assert all(ch.choices for ch in chunks), "a chunk without choices though include_usage was not asked"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks).strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_max_tokens_respected(oai):
    r = oai.chat.completions.create(model=MODEL, messages=STORY, max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_max_completion_tokens_respected(oai):
    # The newer name of max_tokens in the OpenAI API (the SDK and LiteLLM send it for o-series models).
    r = oai.chat.completions.create(model=MODEL, messages=STORY, max_completion_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_stop_sequence(oai):
    ref = greedy(oai, STORY, max_tokens=16).choices[0].message.content
    words = ref.split()
    assert len(words) >= 4, ref
    stop = words[3]
    cut = ref.index(stop)
    r = greedy(oai, STORY, max_tokens=16, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == ref[:cut], (ref, stop)


def test_multi_turn(oai):
    msgs = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    r = greedy(oai, msgs, max_tokens=8)
    assert r.choices[0].message.content.strip()


def test_sampling_params_accepted(oai):
    r = oai.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, temperature=0.8, top_p=0.9, seed=1,
        presence_penalty=0.0, frequency_penalty=0.0, user="sdk-test",
    )
    assert r.choices[0].message.content.strip()


def test_completions(oai):
    r = oai.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert r.object == "text_completion"
    assert r.model == "gpt-3.5-turbo-instruct"
    assert len(r.choices) == 1
    assert isinstance(r.choices[0].text, str) and r.choices[0].text.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8
    stream = oai.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
    )
    text = "".join(ch.choices[0].text for ch in stream if ch.choices)
    assert text == r.choices[0].text


def test_models_list(oai):
    models = oai.models.list()
    ids = [m.id for m in models]
    assert ids, "GET /v1/models lists no model"
    for m in models:
        assert m.object == "model"
        assert isinstance(m.id, str) and m.id


def test_models_retrieve(oai):
    # models.retrieve is GET /v1/models/{id}: any name is served, so any name is found.
    listed = next(iter(oai.models.list())).id
    m = oai.models.retrieve(listed)
    assert m.id == listed and m.object == "model"
    assert oai.models.retrieve("gpt-4o").id == "gpt-4o"


def test_served_by_header(oai):
    raw = oai.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, max_tokens=4)
    served_by = raw.headers.get("x-backstop-served-by")
    assert served_by, dict(raw.headers)
    assert "smollm2" in served_by.lower(), served_by
    assert raw.parse().choices[0].message.content is not None
    raw = oai.models.with_raw_response.list()
    assert raw.headers.get("x-backstop-served-by") == served_by


# ---- errors ----


def _bad_request(fn):
    with pytest.raises(openai.BadRequestError) as e:
        fn()
    err = e.value
    assert err.status_code == 400
    assert err.type == "invalid_request_error", err.body
    assert isinstance(err.body, dict) and {"message", "type", "param", "code"} <= set(err.body), err.body
    assert err.message
    return err


def test_error_n_2(oai):
    _bad_request(lambda: oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, n=2))


def test_error_temperature_5(oai):
    err = _bad_request(lambda: oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=5))
    assert "temperature" in f"{err.param} {err.body.get('message')}"


def test_error_empty_messages(oai):
    _bad_request(lambda: oai.chat.completions.create(model=MODEL, messages=[], max_tokens=4))


def test_error_unknown_role(oai):
    _bad_request(
        lambda: oai.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "hi"}], max_tokens=4)
    )


def test_error_context_length_exceeded(oai):
    err = _bad_request(lambda: oai.chat.completions.create(model=MODEL, messages=TOO_LONG, max_tokens=4))
    assert err.code == "context_length_exceeded", err.body


def test_error_context_length_exceeded_completions(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model=MODEL, prompt="hello " * 3000, max_tokens=4)
    assert e.value.code == "context_length_exceeded", e.value.body


@pytest.mark.parametrize(
    "field,extra",
    [
        ("response_format", {"response_format": {"type": "json_object"}}),
        ("logprobs", {"logprobs": True}),
        (
            "tool_choice",
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
                    }
                ],
                "tool_choice": "required",
            },
        ),
    ],
)
def test_unsupported_feature_refused_or_honoured(oai, field, extra):
    """Either honoured (200) or a 400 that names the field: never silently ignored into a 500."""
    try:
        r = oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, **extra)
    except openai.BadRequestError as e:
        assert e.type == "invalid_request_error"
        assert field in f"{e.param} {e.message}", e.body
        return
    if field == "logprobs":
        assert r.choices[0].logprobs is not None, "logprobs: true accepted but no logprobs returned"
    if field == "tool_choice":
        # Honoured: a call, or (a call does not fit in 8 tokens) the budget's end said as
        # "length" with no half call shown, as text or as a call.
        c = r.choices[0]
        assert c.message.tool_calls or (c.finish_reason == "length" and not c.message.content), c


def test_error_wrong_api_key(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        c.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert e.value.status_code == 401
    assert isinstance(e.value.body, dict) and e.value.body.get("message"), e.value.body
    with pytest.raises(openai.AuthenticationError):
        c.models.list()


def test_error_before_stream_starts(oai):
    """A refused streaming request is a plain 400 before any SSE, so clients and gateways see an
    error status (and can fall back) instead of a stream that breaks."""
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, messages=TOO_LONG, max_tokens=4, stream=True)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, n=2, stream=True)


def test_concurrent_requests_queue_and_agree(server, oai):
    """More requests than sequences at once: all are served (queued), each greedy answer the same
    as when run alone."""
    import concurrent.futures

    ref = greedy(oai, max_tokens=8).choices[0].message.content
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda _: greedy(oai, max_tokens=8).choices[0].message.content, range(4)))
    assert outs == [ref] * 4


def test_async_client_stream(server):
    import asyncio

    async def main():
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
        ref = await c.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0)
        stream = await c.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=8, temperature=0, stream=True
        )
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        await c.close()
        return ref.choices[0].message.content, text

    ref, text = asyncio.run(main())
    assert text == ref
