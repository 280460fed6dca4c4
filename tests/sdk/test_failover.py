"""The failover front: `backstop serve --upstream anthropic=URL --upstream openai=URL/v1` forwards
to a cloud (here the scripted fake_cloud example) and answers with the local model when the cloud
fails before its first byte; a per-upstream circuit breaker; a cloud stream that breaks midway
continued locally in the same stream. Driven with the official openai and anthropic SDKs, which
must see nothing but well-formed answers (or the cloud's own client errors)."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import openai
import pytest

from harness import Backstop, FakeCloud, closed_port, model_path, sse_events

MODEL = "claude-sonnet-4-5"
OAI_MODEL = "gpt-4o"
KEY = "cloud-key"  # the client's key: for the cloud, passed through untouched
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CLOUD_TEXT = "Hello from the cloud, all is well."  # every healthy fake_cloud answer
# What fake_cloud streams before `break:6` cuts the connection: Anthropic's message_start,
# content_block_start, ping and three text deltas; OpenAI's role chunk and five content chunks.
BREAK = "break:6"
ANT_BEFORE_BREAK = "Hello from the"
OAI_BEFORE_BREAK = "Hello from the cloud,"
WEIGHTS = model_path().name
# Short deadlines so that hangs and slow clouds cost a second each.
TIMEOUTS = ("--connect-timeout", "1", "--first-byte-timeout", "1", "--stream-first-byte-timeout", "1")
# A breaker that never keeps a request from the cloud, for the servers shared by many tests
# (the breaker has a test of its own): besides K consecutive failures it also opens when most of
# its last 20 outcomes failed, so with no cooldown every request after it opens is a probe.
NO_BREAKER = ("--breaker-failures", "1000000", "--breaker-cooldown", "0")


def _fail_to_start(e):
    pytest.fail(str(e), pytrace=False)


def start_cloud():
    try:
        return FakeCloud()
    except RuntimeError as e:  # no binary: a failure, never a skip
        _fail_to_start(e)


def start_front(anthropic_url, openai_url, *extra):
    try:
        return Backstop(
            "--upstream", f"anthropic={anthropic_url}", "--upstream", f"openai={openai_url}",
            # These tests count the cloud's requests and breaker changes themselves.
            "--probe-interval", "0", *extra
        )
    except RuntimeError as e:
        _fail_to_start(e)


@pytest.fixture(scope="module")
def cloud():
    c = start_cloud()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def front(cloud):
    """Forwards to `cloud`; a breaker that never opens here (the breaker has its own test)."""
    s = start_front(cloud.url, cloud.url + "/v1", *TIMEOUTS, *NO_BREAKER)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def front429(cloud):
    """As `front`, with --fallback-on-429."""
    s = start_front(cloud.url, cloud.url + "/v1", *TIMEOUTS, *NO_BREAKER, "--fallback-on-429")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def refused():
    """Upstreams on a loopback port nothing listens on."""
    url = f"http://127.0.0.1:{closed_port()}"
    s = start_front(url, url + "/v1", *TIMEOUTS, *NO_BREAKER)
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _healthy_cloud(cloud):
    cloud.set("healthy", reset=True)


class Wire:
    """The requests an SDK client put on the wire (an httpx event hook), to compare with what
    the cloud received."""

    def __init__(self):
        self.sent = []

    def hook(self, request):
        self.sent.append(request)

    @property
    def last(self):
        return self.sent[-1]


def ant_client(server, wire=None, timeout=60):
    kw = {}
    if wire is not None:
        kw["http_client"] = anthropic.DefaultHttpxClient(event_hooks={"request": [wire.hook]}, trust_env=False)
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=timeout, **kw)


def oai_client(server, wire=None, timeout=60):
    kw = {}
    if wire is not None:
        kw["http_client"] = openai.DefaultHttpxClient(event_hooks={"request": [wire.hook]}, trust_env=False)
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=timeout, **kw)


def status(server):
    r = httpx.get(server.url + "/backstop/status", timeout=10, trust_env=False)
    assert r.status_code == 200, r.text
    ups = {u["name"]: u for u in r.json()["upstreams"]}
    assert set(ups) == {"anthropic", "openai"}, r.json()
    return ups


def ant_text(msg):
    assert msg.type == "message" and msg.role == "assistant", msg
    assert all(b.type == "text" for b in msg.content), msg.content
    return "".join(b.text for b in msg.content)


# One request through each SDK, stream or not: (text, response headers, model echoed).


def ask_anthropic(ant, stream, max_tokens=16):
    if stream:
        with ant.messages.stream(model=MODEL, messages=QUESTION, max_tokens=max_tokens) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
            headers = s.response.headers
        assert ant_text(final) == text
        assert final.stop_reason in ("end_turn", "max_tokens", "stop_sequence"), final
        return text, headers, final.model
    raw = ant.messages.with_raw_response.create(model=MODEL, messages=QUESTION, max_tokens=max_tokens)
    msg = raw.parse()
    assert msg.stop_reason in ("end_turn", "max_tokens", "stop_sequence"), msg
    return ant_text(msg), raw.headers, msg.model


def ask_openai(oai, stream, max_tokens=16):
    raw = oai.chat.completions.with_raw_response.create(
        model=OAI_MODEL, messages=QUESTION, max_tokens=max_tokens, stream=stream
    )
    if stream:
        chunks = list(raw.parse())
        assert chunks, "empty stream"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(finishes) == 1 and finishes[0] in ("stop", "length"), finishes
        return text, raw.headers, chunks[0].model
    r = raw.parse()
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length"), r
    return r.choices[0].message.content or "", raw.headers, r.model


def ask(server, sdk, stream, wire=None, max_tokens=16):
    if sdk == "anthropic":
        return ask_anthropic(ant_client(server, wire), stream, max_tokens)
    return ask_openai(oai_client(server, wire), stream, max_tokens)


def assert_cloud(headers, upstream):
    assert headers.get("x-backstop-served-by") == f"cloud; upstream={upstream}", dict(headers)
    assert "x-backstop-fallback-reason" not in headers, dict(headers)


def assert_local(headers, reason_part):
    served = headers.get("x-backstop-served-by") or ""
    assert served.startswith("local") and f"weights={WEIGHTS}" in served, dict(headers)
    reason = headers.get("x-backstop-fallback-reason") or ""
    assert reason_part in reason, dict(headers)


SDKS = ["anthropic", "openai"]
STREAM = pytest.mark.parametrize("stream", [False, True], ids=["nonstream", "stream"])
UPSTREAM_OF = {"anthropic": "anthropic", "openai": "openai"}
MODEL_OF = {"anthropic": MODEL, "openai": OAI_MODEL}


# ---- 1. healthy cloud: its answer, unchanged, with the client's key and body ----


@STREAM
@pytest.mark.parametrize("sdk", SDKS)
def test_healthy_cloud_answers(front, cloud, sdk, stream):
    wire = Wire()
    text, headers, model = ask(front, sdk, stream, wire)
    assert text == CLOUD_TEXT
    assert model == MODEL_OF[sdk]
    assert_cloud(headers, UPSTREAM_OF[sdk])
    seen = cloud.report()
    assert seen["requests"] == 1, seen
    sent = wire.last
    # The body byte for byte, the client's own credentials and version header.
    assert seen["body"] == sent.content.decode(), (seen, sent.content)
    assert json.loads(seen["body"]).get("stream", False) is stream
    assert seen["authorization"] == sent.headers.get("authorization"), seen
    assert seen["x_api_key"] == sent.headers.get("x-api-key"), seen
    if sdk == "anthropic":
        assert seen["path"] == "/v1/messages", seen
        # anthropic 2.x sends api_key as `Authorization: Bearer`, older ones as `x-api-key`
        assert KEY in (seen["x_api_key"], (seen["authorization"] or "").removeprefix("Bearer ")), seen
        assert sent.headers.get("anthropic-version"), sent.headers
        assert seen["anthropic_version"] == sent.headers["anthropic-version"], seen
    else:
        assert seen["path"] == "/v1/chat/completions", seen
        assert seen["authorization"] == f"Bearer {KEY}", seen


def test_x_api_key_passes_through(front, cloud):
    body = {"model": MODEL, "max_tokens": 8, "messages": QUESTION}
    r = httpx.post(
        front.url + "/v1/messages",
        json=body,
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        timeout=60,
        trust_env=False,
    )
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == CLOUD_TEXT
    assert_cloud(r.headers, "anthropic")
    seen = cloud.report()
    assert seen["x_api_key"] == KEY and seen["authorization"] is None, seen
    assert seen["anthropic_version"] == "2023-06-01", seen


def test_healthy_completions_and_models(front, cloud):
    oai = oai_client(front)
    raw = oai.completions.with_raw_response.create(model=OAI_MODEL, prompt="Say hello", max_tokens=8)
    assert raw.parse().choices[0].text == CLOUD_TEXT
    assert_cloud(raw.headers, "openai")
    assert cloud.report()["path"] == "/v1/completions"
    raw = oai.models.with_raw_response.list()
    assert [m.id for m in raw.parse().data] == ["gpt-4o"]  # the cloud's list, not the local model
    assert_cloud(raw.headers, "openai")
    seen = cloud.report()
    assert seen["path"] == "/v1/models" and seen["authorization"] == f"Bearer {KEY}", seen
    assert seen["requests"] == 2, seen


# ---- 2. cloud failures before the first byte: a local answer in the same format ----

FAILURES = {
    "500": "upstream returned 500",
    "529": "upstream returned 529",
    "hang": "timed out",
    "slow:3": "timed out",  # slower than --first-byte-timeout 1
}


@STREAM
@pytest.mark.parametrize("sdk", SDKS)
@pytest.mark.parametrize("scenario", list(FAILURES))
def test_cloud_failure_answered_locally(front, cloud, scenario, sdk, stream):
    cloud.set(scenario)
    t0 = time.monotonic()
    text, headers, model = ask(front, sdk, stream)
    elapsed = time.monotonic() - t0
    assert_local(headers, FAILURES[scenario])
    assert text.strip() and text != CLOUD_TEXT, text
    assert model == MODEL_OF[sdk]
    assert cloud.requests == 1  # one attempt (--upstream-retries 0), no retry behind the client's back
    assert elapsed < 30, elapsed  # the hang cost the first-byte deadline, not the cloud's 3600 s
    up = status(front)[UPSTREAM_OF[sdk]]
    assert up["local_fallbacks"] >= 1, up
    assert FAILURES[scenario] in (up["last_error"] or ""), up


@STREAM
@pytest.mark.parametrize("sdk", SDKS)
def test_refused_connection_answered_locally(refused, sdk, stream):
    text, headers, model = ask(refused, sdk, stream)
    assert_local(headers, "unreachable")
    assert text.strip() and text != CLOUD_TEXT, text
    assert model == MODEL_OF[sdk]


# ---- 3. 429: the cloud's rate limit passes through, unless --fallback-on-429 ----


@STREAM
@pytest.mark.parametrize("sdk", SDKS)
def test_429_passes_through(front, cloud, sdk, stream):
    cloud.set("429")
    exc = anthropic.RateLimitError if sdk == "anthropic" else openai.RateLimitError
    with pytest.raises(exc) as e:
        ask(front, sdk, stream)
    err = e.value
    assert err.status_code == 429
    assert err.response.headers.get("retry-after") == "1", dict(err.response.headers)
    assert_cloud(err.response.headers, UPSTREAM_OF[sdk])
    body = err.body
    assert isinstance(body, dict), body
    if sdk == "anthropic":
        assert body["error"]["type"] == "rate_limit_error", body
    else:
        assert body.get("type") == "rate_limit_error" and body.get("message") == "Rate limited", body
    assert cloud.requests == 1


@STREAM
@pytest.mark.parametrize("sdk", SDKS)
def test_429_answered_locally_with_flag(front429, cloud, sdk, stream):
    cloud.set("429")
    text, headers, model = ask(front429, sdk, stream)
    assert_local(headers, "upstream returned 429")
    assert text.strip() and text != CLOUD_TEXT, text
    assert cloud.requests == 1


# ---- 4. client faults pass through: the cloud's own 401, never a local answer ----


@STREAM
@pytest.mark.parametrize("sdk", SDKS)
def test_401_passes_through(front, cloud, sdk, stream):
    cloud.set("401")
    fallbacks = status(front)[UPSTREAM_OF[sdk]]["local_fallbacks"]
    exc = anthropic.AuthenticationError if sdk == "anthropic" else openai.AuthenticationError
    with pytest.raises(exc) as e:
        ask(front, sdk, stream)
    err = e.value
    assert err.status_code == 401
    assert_cloud(err.response.headers, UPSTREAM_OF[sdk])
    body = err.body
    assert isinstance(body, dict), body
    if sdk == "anthropic":
        assert body == {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    else:
        assert body.get("type") == "authentication_error" and body.get("message") == "invalid x-api-key", body
    assert cloud.requests == 1
    assert status(front)[UPSTREAM_OF[sdk]]["local_fallbacks"] == fallbacks


# ---- 5. circuit breaker ----


def test_circuit_breaker():
    c = start_cloud()
    try:
        s = start_front(
            c.url, c.url + "/v1", *TIMEOUTS, "--breaker-failures", "3", "--breaker-cooldown", "2"
        )
    except BaseException:
        c.stop()
        raise
    try:
        _breaker_scenario(c, s)
    finally:
        s.stop()
        c.stop()


def _ant_raw(ant):
    raw = ant.messages.with_raw_response.create(model=MODEL, messages=QUESTION, max_tokens=4)
    ant_text(raw.parse())
    return raw.headers


def _wait_until_probe_allowed(s, cooldown=2.0):
    """Sleep past the cooldown (retry_in_s counts it down)."""
    left = status(s)["anthropic"]["retry_in_s"]
    time.sleep((left if left is not None else cooldown) + 0.3)


def _breaker_scenario(c, s):
    ant = ant_client(s)
    c.set("500", reset=True)

    # Three consecutive failures, each tried at the cloud, open the breaker.
    for i in range(3):
        assert_local(_ant_raw(ant), "upstream returned 500")
    assert c.requests == 3
    up = status(s)["anthropic"]
    assert up["breaker"] == "open", up
    assert up["consecutive_failures"] >= 3 and up["failures"] == 3, up
    assert "500" in (up["last_error"] or ""), up

    # While open: answered locally, no attempt at the cloud.
    for i in range(4):
        assert_local(_ant_raw(ant), "circuit open")
    assert c.requests == 3
    up = status(s)["anthropic"]
    assert up["breaker"] == "open" and up["short_circuited"] == 4, up
    # The other upstream has a breaker of its own.
    assert status(s)["openai"]["breaker"] == "closed"

    # After the cooldown exactly one request probes the cloud, here one that hangs: while the
    # probe waits, the breaker is half-open and everything else still goes local.
    c.set("hang")
    _wait_until_probe_allowed(s)
    probe = {}

    def run_probe():
        try:
            probe["headers"] = _ant_raw(ant)
        except BaseException as e:  # reported below
            probe["error"] = e

    t = threading.Thread(target=run_probe)
    t.start()
    deadline = time.monotonic() + 5
    while c.requests < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert c.requests == 4, "the probe did not reach the cloud"
    assert status(s)["anthropic"]["breaker"] == "half_open"
    with ThreadPoolExecutor(3) as pool:
        for h in pool.map(lambda _: _ant_raw(ant), range(3)):
            assert_local(h, "circuit open")
    t.join(30)
    assert not t.is_alive()
    assert "error" not in probe, probe.get("error")
    assert_local(probe["headers"], "timed out")
    assert c.requests == 4  # the probe, nothing else
    up = status(s)["anthropic"]
    assert up["breaker"] == "open", up  # the failed probe opened it again

    # The cloud recovers: the next probe succeeds and closes the breaker.
    c.set("healthy")
    _wait_until_probe_allowed(s)
    h = _ant_raw(ant)
    assert_cloud(h, "anthropic")
    assert c.requests == 5
    up = status(s)["anthropic"]
    assert up["breaker"] == "closed" and up["consecutive_failures"] == 0, up
    assert up["successes"] >= 1 and up["cloud_answers"] == 1, up
    for i in range(3):
        assert_cloud(_ant_raw(ant), "anthropic")
    assert c.requests == 8


# ---- 6. a cloud stream that breaks midway is continued locally in the same stream ----


def _marker_ok(marker, after):
    assert isinstance(marker, dict), marker
    assert marker.get("continued_locally") is True, marker
    assert marker.get("continued_after_chars") == len(after), marker
    assert marker.get("reason"), marker
    assert marker.get("weights") == WEIGHTS, marker


def test_midstream_break_anthropic(front, cloud):
    cloud.set(BREAK)
    before = status(front)["anthropic"]["continued_midstream"]
    ant = ant_client(front)
    with ant.messages.stream(model=MODEL, messages=QUESTION, max_tokens=16) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
        headers = s.response.headers
    assert headers.get("x-backstop-served-by") == "cloud; upstream=anthropic", dict(headers)
    assert ant_text(final) == text
    assert text.startswith(ANT_BEFORE_BREAK) and len(text) > len(ANT_BEFORE_BREAK), text
    assert final.model == MODEL and final.id == "msg_cloud"  # still the cloud's message
    assert final.stop_reason in ("end_turn", "max_tokens"), final
    assert cloud.requests == 1

    # The raw stream: one message, its message_delta carries the marker, message_stop last.
    body = {"model": MODEL, "max_tokens": 16, "stream": True, "messages": QUESTION}
    hdrs = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", front.url + "/v1/messages", json=body, headers=hdrs, timeout=60, trust_env=False) as r:
        assert r.status_code == 200
        events = sse_events(r.iter_lines())
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names.count("message_start") == 1, names
    assert names[-1] == "message_stop" and names.count("message_stop") == 1, names
    assert names.count("message_delta") == 1, names
    data = {n: json.loads(d) for n, d in events if n == "message_delta"}
    _marker_ok(data["message_delta"].get("backstop"), ANT_BEFORE_BREAK)
    raw_text = "".join(
        json.loads(d)["delta"].get("text", "") for n, d in events if n == "content_block_delta"
    )
    assert raw_text.startswith(ANT_BEFORE_BREAK) and len(raw_text) > len(ANT_BEFORE_BREAK), raw_text
    assert status(front)["anthropic"]["continued_midstream"] == before + 2


def test_midstream_break_openai(front, cloud):
    cloud.set(BREAK)
    before = status(front)["openai"]["continued_midstream"]
    oai = oai_client(front)
    raw = oai.chat.completions.with_raw_response.create(
        model=OAI_MODEL, messages=QUESTION, max_tokens=16, stream=True
    )
    assert raw.headers.get("x-backstop-served-by") == "cloud; upstream=openai", dict(raw.headers)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(OAI_BEFORE_BREAK) and len(text) > len(OAI_BEFORE_BREAK), text
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].choices[0].finish_reason in ("stop", "length"), finished
    assert all(c.id == "chatcmpl-cloud" for c in chunks), {c.id for c in chunks}
    # the SDK keeps unknown fields (pydantic extra="allow")
    marker = (finished[0].model_extra or {}).get("backstop")
    _marker_ok(marker, OAI_BEFORE_BREAK)
    assert cloud.requests == 1

    # The raw stream: the marker on the chunk with finish_reason, then data: [DONE].
    body = {"model": OAI_MODEL, "max_tokens": 16, "stream": True, "messages": QUESTION}
    with httpx.stream(
        "POST",
        front.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {KEY}"},
        timeout=60,
        trust_env=False,
    ) as r:
        assert r.status_code == 200
        events = sse_events(r.iter_lines())
    datas = [d for _, d in events]
    assert datas[-1] == "[DONE]" and datas.count("[DONE]") == 1, datas
    objs = [json.loads(d) for d in datas[:-1]]
    fin = [o for o in objs if o.get("choices") and o["choices"][0].get("finish_reason")]
    assert len(fin) == 1, objs
    _marker_ok(fin[0].get("backstop"), OAI_BEFORE_BREAK)
    assert status(front)["openai"]["continued_midstream"] == before + 2


# ---- 7. load: 200 requests, 20 clients, a cloud flapping between healthy and 529 ----

LOAD_REQUESTS = 200
LOAD_CLIENTS = 20
LOAD_DEADLINE = 60  # seconds, per request
LOAD_MAX_TOKENS = 8  # local answers queue on one slot: keep them short on busy CI cores


def test_load_flapping_cloud():
    c = start_cloud()
    try:
        s = start_front(
            c.url, c.url + "/v1", *TIMEOUTS, "--parallel", "1", "--queue", "64",
            "--breaker-failures", "5", "--breaker-cooldown", "3",
        )
    except BaseException:
        c.stop()
        raise
    try:
        _load(c, s)
    finally:
        s.stop()
        c.stop()


def _load(c, s):
    # Overloaded first, so that local answers are part of the mix however fast the cloud is.
    c.set("529", reset=True)
    stop = threading.Event()
    flips = []

    def flapper():
        scenario = "529"
        while not stop.wait(2.0):
            scenario = "529" if scenario == "healthy" else "healthy"
            c.set(scenario)
            flips.append(scenario)

    ant = ant_client(s, timeout=LOAD_DEADLINE)
    oai = oai_client(s, timeout=LOAD_DEADLINE)

    def one(i):
        sdk = SDKS[i % 2]
        stream = (i // 2) % 2 == 1
        t0 = time.monotonic()
        if sdk == "anthropic":
            text, headers, model = ask_anthropic(ant, stream, LOAD_MAX_TOKENS)
        else:
            text, headers, model = ask_openai(oai, stream, LOAD_MAX_TOKENS)
        elapsed = time.monotonic() - t0
        served = headers.get("x-backstop-served-by") or ""
        assert model == MODEL_OF[sdk]
        if served.startswith("cloud"):
            assert text == CLOUD_TEXT, text
        else:
            assert_local(headers, "")
            assert headers.get("x-backstop-fallback-reason"), dict(headers)
            assert text != CLOUD_TEXT
        return served.split(";")[0], elapsed

    t = threading.Thread(target=flapper, daemon=True)
    t.start()
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
            futures = [pool.submit(one, i) for i in range(LOAD_REQUESTS)]
            results, errors = [], []
            for f in futures:
                try:
                    results.append(f.result())
                except Exception as e:  # collect them all, report below
                    errors.append(repr(e))
    finally:
        stop.set()
        t.join(5)
    wall = time.monotonic() - t0
    assert not errors, f"{len(errors)} of {LOAD_REQUESTS} requests failed, e.g. {errors[:3]}"
    by = {w: sum(1 for x, _ in results if x == w) for w in ("cloud", "local")}
    slowest = max(e for _, e in results)
    assert by["cloud"] + by["local"] == LOAD_REQUESTS, by
    assert slowest < LOAD_DEADLINE, slowest
    seen = c.requests
    assert seen <= LOAD_REQUESTS, f"the cloud saw {seen} requests for {LOAD_REQUESTS} (a retry storm)"
    assert by["cloud"] > 0 and by["local"] > 0, (by, flips)
    ups = status(s)
    print(f"load: {by} in {wall:.1f} s, slowest {slowest:.1f} s, cloud saw {seen}, flips {len(flips)}, "
          f"breakers {[(n, u['breaker'], u['short_circuited']) for n, u in ups.items()]}")
    # Every answer is accounted for, and every request the cloud saw was one client request's
    # single attempt (the rest were short-circuited by an open breaker).
    assert sum(u["cloud_answers"] for u in ups.values()) == by["cloud"], ups
    assert sum(u["local_fallbacks"] for u in ups.values()) == by["local"], ups
    attempts = sum(u["cloud_answers"] + u["local_fallbacks"] - u["short_circuited"] for u in ups.values())
    assert seen == attempts, (seen, ups)
