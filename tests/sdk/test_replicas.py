"""Replicas behind a gateway (docs/failover.md): a LiteLLM Router with the cloud first and two
`backstop serve` replicas as a load-balanced fallback group. A load test stops one replica
midway as Kubernetes does (SIGTERM: it stops admitting, finishes what it holds within
--shutdown-grace, and exits); no request may be lost: each is answered by that replica before
it goes, by the other replica (the Router retries a refused or failed deployment on the next
and cools the failed one down), or by the fallback."""

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import litellm
import pytest

from harness import API_KEY, Backstop, closed_port

litellm.suppress_debug_info = True
litellm.telemetry = False

CLIENTS = 6
REQUESTS = 30
MESSAGES = [{"role": "user", "content": "Name a colour."}]


def start():
    try:
        return Backstop("--api-key", API_KEY, "--parallel", "2")
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


# SIGTERM is how Kubernetes stops a pod: the replica drains, so streams in flight finish too.
# SIGKILL is a crash: whole requests in flight are retried on the other replica; a stream
# already under way cannot be (its bytes went out), so that case sends whole requests only.
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_replica_killed_midway_loses_no_request(how):
    streams = how == "sigterm"
    a, b = start(), start()
    try:
        replica = lambda s: {"model_name": "local", "litellm_params": {
            "model": "openai/backstop", "api_base": s.url + "/v1", "api_key": API_KEY,
            "timeout": 60, "max_retries": 0}}
        router = litellm.Router(
            model_list=[
                # The cloud is down: nothing listens there.
                {"model_name": "cloud", "litellm_params": {
                    "model": "openai/gpt-4o", "api_base": f"http://127.0.0.1:{closed_port()}/v1",
                    "api_key": "sk-cloud", "timeout": 5, "max_retries": 0}},
                replica(a), replica(b),
            ],
            fallbacks=[{"cloud": ["local"]}],
            num_retries=3,
            retry_after=0,
            # One failure cools a deployment down, so retries go to the replica still up.
            allowed_fails=0,
            cooldown_time=120,
            timeout=120,
        )
        done = []
        errors = []
        lock = threading.Lock()

        def one(i):
            try:
                stream = streams and i % 2 == 1
                r = router.completion(model="cloud", messages=MESSAGES, max_tokens=6, temperature=0,
                                      stream=stream)
                if stream:
                    text = "".join((c.choices[0].delta.content or "") for c in r if c.choices)
                else:
                    text = r.choices[0].message.content
                with lock:
                    done.append((i, text))
            except Exception as e:  # a lost request
                with lock:
                    errors.append((i, repr(e)))

        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(one, i) for i in range(REQUESTS)]
            # Stop replica a once a few requests have been answered and others are in flight.
            deadline = time.monotonic() + 120
            while len(done) < REQUESTS // 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            a.proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
            killed_after = len(done)
            for f in futures:
                f.result()
        assert not errors, errors
        assert len(done) == REQUESTS
        assert all(t for _, t in done), done
        assert killed_after < REQUESTS, "the stop came after the load test ended"
        code = a.proc.wait(30)
        assert code == (0 if how == "sigterm" else -signal.SIGKILL), code
    finally:
        a.stop(check=False)
        b.stop()
