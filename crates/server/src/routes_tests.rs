//! `router()` in-process (`tower::ServiceExt::oneshot`): admission errors, probes and model
//! routes of a server whose model is not loaded, in both wire formats. No model file needed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

use crate::config::{FailoverConfig, ServeConfig};
use crate::names::ModelNames;
use crate::routes::{router, App};
use crate::state::AppState;
use crate::upstream::{Upstreams, SERVED_BY};

fn app(keys: &[&str], strict: bool) -> Router {
    let config = ServeConfig {
        model_path: "/nonexistent/tiny.gguf".into(),
        engine: Default::default(),
        n_ctx: 0,
        host: "127.0.0.1".parse().unwrap(),
        port: 0,
        parallel: 1,
        queue: 1,
        kv_budget: 0,
        api_keys: keys.iter().map(|k| k.to_string()).collect(),
        names: ModelNames {
            served: "tiny".into(),
            aliases: vec!["claude-*".into()],
            strict,
        },
        max_body_bytes: 1024,
        shutdown_grace: Duration::from_secs(1),
        failover: FailoverConfig::default(),
    };
    let upstreams = Upstreams::new(FailoverConfig::default()).unwrap();
    router(Arc::new(App {
        state: Arc::new(AppState::new(config)),
        upstreams: Arc::new(upstreams),
    }))
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    json: Value,
}

fn call(app: &Router, req: Request<Body>) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            json,
        }
    })
}

fn post(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
const MSG: &str =
    r#"{"model":"claude-x","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn while_loading_requests_get_503_or_529_with_retry_after() {
    let a = app(&[], false);
    let r = call(&a, post("/v1/chat/completions", CHAT));
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.json["error"]["type"], "server_error");
    assert!(r.headers[SERVED_BY].to_str().unwrap().starts_with("local"));
    let r = call(&a, post("/v1/messages", MSG));
    assert_eq!(r.status.as_u16(), 529);
    assert_eq!(r.json["type"], "error");
    assert_eq!(r.json["error"]["type"], "overloaded_error");
    assert_eq!(r.headers["retry-after"], "1");
}

#[test]
fn probes_while_loading() {
    let a = app(&["k"], false);
    let h = call(&a, get("/health"));
    assert_eq!(
        h.status, 503,
        "llama-server's /health says 503 while loading"
    );
    assert_eq!(h.json["error"]["message"], "Loading model");
    assert_eq!(call(&a, get("/livez")).status, 200);
    let r = call(&a, get("/ready"));
    assert_eq!(r.status, 503);
    assert_eq!(r.json["status"], "loading");
}

#[test]
fn bad_requests_are_4xx_in_the_routes_own_shape() {
    let a = app(&[], false);
    let cases: &[(&str, &str, u16, &str)] = &[
        ("/v1/chat/completions", "{", 400, "invalid_request_error"),
        (
            "/v1/chat/completions",
            r#"{"messages":[]}"#,
            400,
            "invalid_request_error",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x"}],"n":3}"#,
            400,
            "invalid_request_error",
        ),
        (
            "/v1/completions",
            r#"{"prompt":"x","temperature":9}"#,
            400,
            "invalid_request_error",
        ),
        (
            "/v1/messages",
            r#"{"model":"c","messages":[{"role":"user","content":"x"}]}"#,
            400,
            "invalid_request_error",
        ),
        ("/v1/messages", "[]", 400, "invalid_request_error"),
    ];
    for (path, body, status, ty) in cases {
        let r = call(&a, post(path, body));
        assert_eq!(r.status.as_u16(), *status, "{path} {body}: {:?}", r.json);
        assert_eq!(r.json["error"]["type"], *ty, "{path} {body}");
        if path.starts_with("/v1/messages") {
            assert_eq!(r.json["type"], "error");
        } else {
            assert!(r.json["error"].get("param").is_some());
        }
    }
    let r = call(
        &a,
        post(
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x"}],"n":3}"#,
        ),
    );
    assert_eq!(r.json["error"]["param"], "n");
}

#[test]
fn oversized_bodies_are_413_with_or_without_a_length() {
    let a = app(&[], false);
    let big = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(4000));
    let r = call(&a, post("/v1/completions", &big));
    assert_eq!(r.status, 413);
    assert_eq!(r.json["error"]["code"], "request_too_large");
    // A streamed body with no Content-Length: found by the read limit, not the header.
    let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(big.clone())];
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    let req = Request::post("/v1/messages")
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let r = call(&a, req);
    assert_eq!(r.status, 413);
    assert_eq!(r.json["error"]["type"], "request_too_large");
}

#[test]
fn wrong_content_type_is_415() {
    let a = app(&[], false);
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "text/plain")
        .body(Body::from(CHAT))
        .unwrap();
    assert_eq!(call(&a, req).status, 415);
}

#[test]
fn keys_are_checked_in_each_shape() {
    let a = app(&["sekrit"], false);
    let r = call(&a, post("/v1/chat/completions", CHAT));
    assert_eq!(r.status, 401);
    assert_eq!(r.json["error"]["code"], "invalid_api_key");
    let r = call(&a, post("/v1/messages", MSG));
    assert_eq!(r.status, 401);
    assert_eq!(r.json["error"]["type"], "authentication_error");
    let req = Request::get("/v1/models")
        .header("x-api-key", "sekrit")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&a, req).status, 200);
}

#[test]
fn models_list_and_retrieve() {
    let a = app(&[], false);
    let r = call(&a, get("/v1/models"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json["object"], "list");
    assert_eq!(r.json["data"][0]["id"], "tiny");
    let r = call(&a, get("/v1/models/gpt-4o"));
    assert_eq!(r.status, 200, "any name is served by default");
    assert_eq!(r.json["id"], "gpt-4o");
    assert_eq!(r.json["object"], "model");
    let r = call(&a, get("/v1/models/HuggingFaceTB/SmolLM2"));
    assert_eq!(r.json["id"], "HuggingFaceTB/SmolLM2");

    let strict = app(&[], true);
    assert_eq!(call(&strict, get("/v1/models/tiny")).status, 200);
    assert_eq!(call(&strict, get("/v1/models/claude-haiku")).status, 200);
    let r = call(&strict, get("/v1/models/gpt-5"));
    assert_eq!(r.status, 404);
    assert_eq!(r.json["error"]["code"], "model_not_found");
    // Strict names are checked before the model is needed.
    let r = call(&strict, post("/v1/chat/completions", CHAT));
    assert_eq!(r.status, 404);
    let r = call(
        &strict,
        post("/v1/messages", &MSG.replace("claude-x", "gpt-4o")),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json["error"]["type"], "not_found_error");
}

#[test]
fn unknown_routes_and_methods() {
    let a = app(&[], false);
    let r = call(&a, get("/v2/nothing"));
    assert_eq!(r.status, 404);
    assert_eq!(r.json["error"]["code"], "unknown_url");
    let r = call(&a, get("/v1/messages"));
    assert_eq!(r.status, 405);
    assert_eq!(r.json["type"], "error");
}
