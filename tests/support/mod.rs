//! Test support: a `backstop serve` process on a free loopback port, and a minimal HTTP/1.1
//! client over one TcpStream, so tests control connections exactly (reuse them, read a
//! stream half-way, drop them, send bytes that are not valid UTF-8).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn model() -> PathBuf {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "test model {} is missing: run scripts/fetch-models",
        p.display()
    );
    p
}

pub struct Server {
    pub child: Child,
    pub port: u16,
    /// stderr lines after the "listening" line.
    pub log: mpsc::Receiver<String>,
}

impl Server {
    /// Start `backstop serve -m MODEL --port 0 ARGS…` and wait until it listens.
    pub fn start(args: &[&str]) -> Server {
        Self::start_env(args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_backstop"));
        cmd.arg("serve")
            .arg("-m")
            .arg(model())
            .args(["--port", "0", "-t", "2"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn backstop serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("backstop serve did not print its listening line");
            // A text line ends with the address; a JSON line (`--log-format json`) goes on.
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                break addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        Server {
            child,
            port,
            log: rx,
        }
    }

    /// Start and wait for `/ready` to say 200.
    pub fn ready(args: &[&str]) -> Server {
        let s = Self::start(args);
        s.wait_ready();
        s
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.get("/ready").status == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server never became ready");
    }

    pub fn conn(&self) -> Conn {
        Conn::open(self.port)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.conn().request("GET", path, &[], b"")
    }

    pub fn post_json(&self, path: &str, body: &str) -> Resp {
        self.conn().request(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
    }

    /// SIGTERM, then the time it took to exit (panics after `limit`).
    pub fn terminate(&mut self, limit: Duration) -> (Duration, std::process::ExitStatus) {
        let t0 = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (t0.elapsed(), st);
            }
            assert!(
                t0.elapsed() < limit,
                "server did not exit within {limit:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("metric {name} missing"))
            .trim()
            .parse()
            .unwrap()
    }

    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// One keep-alive connection.
pub struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            r: BufReader::new(s),
        }
    }

    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
        self.send_paused(method, path, headers, body, Duration::ZERO);
    }

    /// [`Self::send`] with a pause between the head and the body, as a slow client or a
    /// large body over a slow link gives the server.
    pub fn send_paused(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        pause: Duration,
    ) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let s = self.r.get_mut();
        s.write_all(req.as_bytes()).unwrap();
        if !pause.is_zero() {
            s.flush().unwrap();
            std::thread::sleep(pause);
        }
        s.write_all(body).unwrap();
    }

    /// Status line and headers.
    pub fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 "), "bad status line {line:?}");
        let status = line[9..12].parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        (status, headers)
    }

    /// The next chunk of a chunked body (None at the end).
    pub fn read_chunk(&mut self) -> Option<Vec<u8>> {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let n = usize::from_str_radix(line.trim(), 16).expect("chunk size");
        let mut buf = vec![0; n + 2];
        self.r.read_exact(&mut buf).unwrap();
        buf.truncate(n);
        (n > 0).then_some(buf)
    }

    pub fn read_body(&mut self, headers: &[(String, String)]) -> Vec<u8> {
        let get = |k: &str| headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.clone());
        if let Some(n) = get("content-length") {
            let mut buf = vec![0; n.parse().unwrap()];
            self.r.read_exact(&mut buf).unwrap();
            buf
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            while let Some(c) = self.read_chunk() {
                body.extend(c);
            }
            body
        } else {
            let mut body = Vec::new();
            self.r.read_to_end(&mut body).unwrap();
            body
        }
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        self.send(method, path, headers, body);
        let (status, headers) = self.read_head();
        let body = self.read_body(&headers);
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn post_json(&mut self, path: &str, body: &str) -> Resp {
        self.request(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
    }
}

/// SSE `data:` payloads of a complete body.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

/// (event name, data) pairs of a complete body.
pub fn sse_events(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body).into_owned();
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for l in block.lines() {
                if let Some(n) = l.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = l.strip_prefix("data: ") {
                    data = Some(d.to_owned());
                }
            }
            Some((name?, data?))
        })
        .collect()
}

/// The scripted fake cloud (crates/server/examples/fake_cloud.rs), built by `cargo test`.
pub struct FakeCloud {
    child: Child,
    pub port: u16,
}

impl FakeCloud {
    pub fn start() -> FakeCloud {
        Self::start_with(&[])
    }

    /// Start with extra flags (`--key KEY`).
    pub fn start_with(args: &[&str]) -> FakeCloud {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test> -> target/<profile>/examples/fake_cloud
        let path = exe
            .parent()
            .and_then(|d| d.parent())
            .map(|d| d.join("examples/fake_cloud"))
            .unwrap();
        assert!(
            path.exists(),
            "{} is missing: build it with `cargo test --workspace --no-run` or \
             `cargo build -p backstop-server --example fake_cloud`",
            path.display()
        );
        let mut child = Command::new(path)
            .args(["--port", "0"])
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("fake cloud said {line:?}"));
        FakeCloud { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn scenario(&self, s: &str) {
        let r = Conn::open(self.port).request(
            "POST",
            &format!("/_control?scenario={s}&reset=1"),
            &[],
            b"",
        );
        assert_eq!(r.status, 200);
    }

    /// Requests seen since the last `scenario` call, and what the last one carried.
    pub fn report(&self) -> serde_json::Value {
        Conn::open(self.port)
            .request("GET", "/_control", &[], b"")
            .json()
    }

    pub fn requests(&self) -> u64 {
        self.report()["requests"].as_u64().unwrap()
    }

    /// Health checks seen since the last `scenario` call.
    pub fn probes(&self) -> u64 {
        self.report()["probes"].as_u64().unwrap()
    }
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
