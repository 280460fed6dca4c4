"""Plain HTTP facts the SDKs rely on: health, readiness, auth headers, error shapes, the
served-by header on every response."""

import httpx

from harness import API_KEY

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def test_liveness_at_once_health_and_ready(server):
    assert server.livez_status_at_listen == 200, "GET /livez was not 200 right after listening"
    # /health is readiness-like, as llama-server's: 200 once loaded, 503 while loading.
    assert server.health_status_at_listen in (200, 503), server.health_status_at_listen
    assert server.ready_response.status_code == 200
    for r in server.loading_responses:
        assert r.status_code == 503, (r.status_code, r.text)
        assert r.headers.get("retry-after"), "503 from /ready without Retry-After"
    assert any("ready" in line for line in server.lines), "no 'ready' line on stderr:\n" + server.log()


def test_health_ready_need_no_key(server):
    with httpx.Client(base_url=server.url, trust_env=False) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/livez").status_code == 200
        assert c.get("/ready").status_code == 200


def test_missing_key_openai_shape(server):
    with httpx.Client(base_url=server.url, trust_env=False) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert r.headers.get("x-backstop-served-by")


def test_missing_key_anthropic_shape(server):
    with httpx.Client(base_url=server.url, trust_env=False) as c:
        r = c.post("/v1/messages", json={**CHAT, "max_tokens": 2})
    assert r.status_code == 401, r.text
    j = r.json()
    assert j["type"] == "error" and j["error"]["type"] == "authentication_error", j


def test_x_api_key_on_openai_route(server):
    with httpx.Client(base_url=server.url, trust_env=False, timeout=60) as c:
        r = c.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": API_KEY})
    assert r.status_code == 200, r.text


def test_served_by_on_errors(http):
    r = http.post("/v1/chat/completions", json={**CHAT, "n": 2})
    assert r.status_code == 400
    assert r.headers.get("x-backstop-served-by")
    r = http.post("/v1/messages", json={"model": "x", "messages": []})
    assert r.status_code == 400
    assert r.headers.get("x-backstop-served-by")
