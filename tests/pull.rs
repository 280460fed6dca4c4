//! `backstop pull` against a fake Hugging Face hub on loopback: the parts of the hub's API that
//! a download uses (the repository listing, `resolve` with redirects to a file server, ETags,
//! `x-linked-*` headers and Range requests), with switches to cut a transfer short or corrupt
//! it. The real binary runs with HF_ENDPOINT pointed at it and HF_HOME in a temp folder.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use backstop_engine::gguf::writer::GgufWriter;
use sha2::{Digest, Sha256};

const COMMIT: &str = "4f1d0c3b2a6e8d7c9b0a1f2e3d4c5b6a7f8e9d0c";

#[derive(Clone)]
struct HubFile {
    data: Vec<u8>,
    sha256: String,
}

#[derive(Clone, Debug)]
struct Logged {
    method: String,
    path: String,
    range: Option<String>,
}

#[derive(Default)]
struct State {
    /// repo id -> file name -> file.
    repos: HashMap<String, Vec<(String, HubFile)>>,
    /// Repos that answer 401 without `Authorization: Bearer secret`.
    gated: HashSet<String>,
    /// sha256 -> bytes to send before dropping the connection (once).
    cut: HashMap<String, usize>,
    /// sha256s served with one byte flipped.
    corrupt: HashSet<String>,
    log: Vec<Logged>,
}

struct FakeHub {
    url: String,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let (st, base) = (Arc::clone(&state), url.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let (st, base) = (Arc::clone(&st), base.clone());
                std::thread::spawn(move || {
                    let _ = serve_one(conn, &st, &base);
                });
            }
        });
        Self { url, state }
    }

    fn add(&self, repo: &str, name: &str, data: Vec<u8>) -> String {
        let sha256 = hex(&Sha256::digest(&data));
        let f = HubFile {
            data,
            sha256: sha256.clone(),
        };
        self.state
            .lock()
            .unwrap()
            .repos
            .entry(repo.to_owned())
            .or_default()
            .push((name.to_owned(), f));
        sha256
    }

    fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    fn downloads(&self) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.method == "GET" && l.path.starts_with("/cdn/"))
            .collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

fn serve_one(mut s: TcpStream, st: &Mutex<State>, base: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let range = headers.get("range").cloned();
    let authorized = headers.get("authorization").map(String::as_str) == Some("Bearer secret");
    let mut state = st.lock().unwrap();
    state.log.push(Logged {
        method: method.clone(),
        path: path.to_owned(),
        range: range.clone(),
    });
    let len = |n: usize| ("content-length".to_owned(), n.to_string());

    // Listing: /api/models/OWNER/NAME/revision/main?blobs=true
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let repo = rest.strip_suffix("/revision/main").unwrap_or(rest);
        if state.gated.contains(repo) && !authorized {
            drop(state);
            respond(&mut s, "401 Unauthorized", &[len(0)], b"");
            return Ok(());
        }
        let Some(files) = state.repos.get(repo) else {
            drop(state);
            respond(&mut s, "404 Not Found", &[len(0)], b"");
            return Ok(());
        };
        assert!(
            query.contains("blobs=true"),
            "listing without blobs: {query}"
        );
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|(n, f)| {
                serde_json::json!({"rfilename": n, "size": f.data.len(),
                    "lfs": {"sha256": f.sha256, "size": f.data.len()}})
            })
            .collect();
        let body = serde_json::json!({"id": repo, "sha": COMMIT, "siblings": siblings}).to_string();
        drop(state);
        respond(
            &mut s,
            "200 OK",
            &[
                len(body.len()),
                ("content-type".into(), "application/json".into()),
            ],
            body.as_bytes(),
        );
        return Ok(());
    }
    // Resolve: /OWNER/NAME/resolve/main/FILE -> 302 to the file server, with the metadata.
    if let Some((repo, file)) = path.split_once("/resolve/main/") {
        let repo = repo.trim_start_matches('/');
        // A renamed repository: a relative redirect inside the hub.
        if let Some(new) = repo.strip_suffix("-old") {
            drop(state);
            let loc = format!("/{new}/resolve/main/{file}");
            respond(
                &mut s,
                "307 Temporary Redirect",
                &[("location".into(), loc), len(0)],
                b"",
            );
            return Ok(());
        }
        if state.gated.contains(repo) && !authorized {
            drop(state);
            respond(&mut s, "401 Unauthorized", &[len(0)], b"");
            return Ok(());
        }
        let found = state
            .repos
            .get(repo)
            .and_then(|fs| fs.iter().find(|(n, _)| n == file))
            .map(|(_, f)| f.clone());
        drop(state);
        let Some(f) = found else {
            respond(&mut s, "404 Not Found", &[len(0)], b"");
            return Ok(());
        };
        let h = vec![
            ("location".to_owned(), format!("{base}/cdn/{}", f.sha256)),
            ("x-repo-commit".to_owned(), COMMIT.to_owned()),
            ("x-linked-etag".to_owned(), format!("\"{}\"", f.sha256)),
            ("x-linked-size".to_owned(), f.data.len().to_string()),
            ("etag".to_owned(), "\"0123abcd-git-oid\"".to_owned()),
            len(0),
        ];
        respond(&mut s, "302 Found", &h, b"");
        return Ok(());
    }
    // The file server: whole file or a Range from an offset.
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let found = state
            .repos
            .values()
            .flatten()
            .find(|(_, f)| f.sha256 == sha)
            .map(|(_, f)| f.clone());
        let cut = state.cut.remove(sha);
        let corrupt = state.corrupt.contains(sha);
        drop(state);
        let Some(f) = found else {
            respond(&mut s, "404 Not Found", &[len(0)], b"");
            return Ok(());
        };
        let mut data = f.data.clone();
        if corrupt {
            let mid = data.len() / 2;
            data[mid] ^= 0xff;
        }
        let total = data.len();
        let from = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|r| r.parse::<usize>().ok());
        let (status, body, mut h) = match from {
            Some(from) if from < total => (
                "206 Partial Content",
                &data[from..],
                vec![(
                    "content-range".to_owned(),
                    format!("bytes {from}-{}/{total}", total - 1),
                )],
            ),
            Some(_) => {
                respond(&mut s, "416 Range Not Satisfiable", &[len(0)], b"");
                return Ok(());
            }
            None => ("200 OK", &data[..], vec![]),
        };
        h.push(len(body.len()));
        h.push(("etag".to_owned(), format!("\"cdn-{}\"", &f.sha256[..8])));
        h.push(("accept-ranges".to_owned(), "bytes".to_owned()));
        match cut {
            // Promise the whole body, send part of it, hang up.
            Some(n) => respond(&mut s, status, &h, &body[..n.min(body.len())]),
            None => respond(&mut s, status, &h, body),
        }
        let _ = s.flush();
        return Ok(());
    }
    drop(state);
    respond(&mut s, "404 Not Found", &[len(0)], b"");
    Ok(())
}

/// A small valid GGUF: `n` f32 values of one tensor, llama metadata, a file type.
fn gguf(n: usize, file_type: u32, ctx: u32, seed: f32) -> Vec<u8> {
    let values: Vec<f32> = (0..n).map(|i| seed + i as f32 * 0.001).collect();
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama")
        .add("general.file_type", file_type)
        .add("llama.context_length", ctx);
    w.add_f32_tensor("token_embd.weight", &[256, (n / 256) as u64], &values)
        .unwrap();
    w.to_bytes().unwrap()
}

struct Env {
    hub: FakeHub,
    home: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            hub: FakeHub::start(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn hub_cache(&self) -> PathBuf {
        self.home.path().join("hf/hub")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_backstop"));
        c.args(args)
            .current_dir(self.home.path())
            .env("HF_HOME", self.home.path().join("hf"))
            .env("HF_ENDPOINT", &self.hub.url)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("BACKSTOP_MODELS")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout)
}

/// A failure ends with one `error:` line naming `needle`, and no panic.
fn failed(out: &Output, needle: &str) -> String {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: "),
        "last line is not the error: {err}"
    );
    assert!(
        last.contains(needle),
        "{last:?} does not mention {needle:?}"
    );
    last.to_owned()
}

fn repo_dir(env: &Env, repo: &str) -> PathBuf {
    env.hub_cache()
        .join(format!("models--{}", repo.replace('/', "--")))
}

fn ls_json(env: &Env) -> Vec<serde_json::Value> {
    let out = env.run(&["ls", "--json"]);
    serde_json::from_str::<serde_json::Value>(&ok(&out))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn tiny_repo(env: &Env) -> (Vec<u8>, String) {
    let q4 = gguf(256 * 512, 15, 256, 0.5);
    let sha = env
        .hub
        .add("owner/tiny-GGUF", "tiny-Q4_K_M.gguf", q4.clone());
    env.hub.add(
        "owner/tiny-GGUF",
        "tiny-Q8_0.gguf",
        gguf(256 * 64, 7, 512, 1.5),
    );
    env.hub.add(
        "owner/tiny-GGUF",
        "mmproj-tiny-f16.gguf",
        gguf(256, 1, 512, 2.5),
    );
    env.hub
        .add("owner/tiny-GGUF", "README.md", b"# tiny\n".to_vec());
    (q4, sha)
}

#[test]
fn pull_by_repo_picks_q4_k_m_into_the_hf_cache_then_everything_works_offline() {
    let env = Env::new();
    let (q4, sha) = tiny_repo(&env);
    let out = env.run(&["pull", "owner/tiny-GGUF"]);
    let stdout = ok(&out);
    let err = text(&out.stderr);
    assert!(err.contains("sha256 verified"), "{err}");
    assert!(
        err.contains("backstop run -m owner/tiny-GGUF:Q4_K_M"),
        "{err}"
    );

    // huggingface_hub's layout: blob named by its etag (the LFS sha256), a relative link in
    // the snapshot, refs/main holding the commit.
    let repo = repo_dir(&env, "owner/tiny-GGUF");
    let pointer = repo.join("snapshots").join(COMMIT).join("tiny-Q4_K_M.gguf");
    assert_eq!(stdout.trim(), pointer.display().to_string());
    assert_eq!(
        std::fs::read_link(&pointer).unwrap(),
        Path::new("../../blobs").join(&sha)
    );
    assert_eq!(std::fs::read(repo.join("blobs").join(&sha)).unwrap(), q4);
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    // Only the chosen file was fetched: not Q8_0, not the projector.
    let got: Vec<String> = env.hub.downloads().iter().map(|l| l.path.clone()).collect();
    assert_eq!(got, [format!("/cdn/{sha}")]);

    // Offline from here: a second pull finds it, ls and info read it, run resolves the name.
    env.hub.clear_log();
    let again = env.run(&["pull", "owner/tiny-GGUF:Q4_K_M"]);
    ok(&again);
    assert!(text(&again.stderr).contains("already downloaded"));
    assert!(env.hub.downloads().is_empty());

    env.hub.clear_log();
    let list = ls_json(&env);
    assert_eq!(list.len(), 1, "{list:?}");
    let m = &list[0];
    assert_eq!(m["name"], "owner/tiny-GGUF:Q4_K_M");
    assert_eq!(m["architecture"], "llama");
    assert_eq!(m["parameters"], 256 * 512);
    assert_eq!(m["quant"], "Q4_K_M");
    assert_eq!(m["size"], q4.len());
    assert_eq!(m["context_length"], 256);
    assert_eq!(m["chat_template"], false);
    assert_eq!(m["source"], "cache");
    let info = env.run(&["info", "owner/tiny-GGUF"]);
    assert!(ok(&info).contains("architecture:  llama"));
    assert!(
        env.hub.log().is_empty(),
        "offline commands hit the hub: {:?}",
        env.hub.log()
    );
}

#[test]
fn pull_by_quant_and_by_file_name_then_rm() {
    let env = Env::new();
    tiny_repo(&env);
    ok(&env.run(&["pull", "owner/tiny-GGUF:q8_0"]));
    ok(&env.run(&["pull", "owner/tiny-GGUF", "tiny-Q4_K_M.gguf"]));
    let names: Vec<String> = ls_json(&env)
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["owner/tiny-GGUF:Q4_K_M", "owner/tiny-GGUF:Q8_0"]);

    let table = ok(&env.run(&["ls"]));
    assert!(table.lines().any(|l| l.starts_with("owner/tiny-GGUF:Q8_0")
        && l.contains("llama")
        && l.contains("Q8_0")
        && l.contains("512")));

    let rm = env.run(&["rm", "owner/tiny-GGUF:Q8_0"]);
    assert!(ok(&rm).contains("removed owner/tiny-GGUF:Q8_0"));
    let names: Vec<String> = ls_json(&env)
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["owner/tiny-GGUF:Q4_K_M"]);
    let blobs = std::fs::read_dir(repo_dir(&env, "owner/tiny-GGUF").join("blobs"))
        .unwrap()
        .count();
    assert_eq!(blobs, 1, "the Q8_0 blob is still there");
    ok(&env.run(&["rm", "owner/tiny-GGUF"]));
    assert!(!repo_dir(&env, "owner/tiny-GGUF").exists());
    failed(
        &env.run(&["rm", "owner/tiny-GGUF"]),
        "backstop pull owner/tiny-GGUF",
    );
    // A missing quant on the hub lists what there is.
    failed(
        &env.run(&["pull", "owner/tiny-GGUF:Q2_K"]),
        "tiny-Q8_0.gguf",
    );
    failed(&env.run(&["pull", "owner/nothing-GGUF"]), "404");
}

#[test]
fn an_interrupted_transfer_resumes_where_it_stopped() {
    let env = Env::new();
    let (q4, sha) = tiny_repo(&env);
    let cut_at = 200_000;
    env.hub
        .state
        .lock()
        .unwrap()
        .cut
        .insert(sha.clone(), cut_at);
    let first = env.run(&["pull", "owner/tiny-GGUF"]);
    failed(&first, "run the same command again to resume");
    let partial = repo_dir(&env, "owner/tiny-GGUF")
        .join("blobs")
        .join(format!("{sha}.incomplete"));
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept <= cut_at as u64, "kept {kept}");

    env.hub.clear_log();
    let second = env.run(&["pull", "owner/tiny-GGUF"]);
    ok(&second);
    assert!(text(&second.stderr).contains("resuming at"));
    let dl = env.hub.downloads();
    assert_eq!(dl.len(), 1);
    assert_eq!(
        dl[0].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    let blob = repo_dir(&env, "owner/tiny-GGUF").join("blobs").join(&sha);
    assert_eq!(std::fs::read(blob).unwrap(), q4);
    assert!(!partial.exists());
}

#[test]
fn a_corrupted_transfer_is_detected_and_deleted() {
    let env = Env::new();
    let (q4, sha) = tiny_repo(&env);
    env.hub.state.lock().unwrap().corrupt.insert(sha.clone());
    failed(&env.run(&["pull", "owner/tiny-GGUF"]), "sha256");
    let repo = repo_dir(&env, "owner/tiny-GGUF");
    let blobs: Vec<_> = std::fs::read_dir(repo.join("blobs")).unwrap().collect();
    assert!(blobs.is_empty(), "corrupt bytes kept: {blobs:?}");
    assert!(!repo.join("snapshots").exists());
    assert!(ls_json(&env).is_empty());

    // Once the server sends the right bytes, the same command succeeds from scratch.
    env.hub.state.lock().unwrap().corrupt.clear();
    env.hub.clear_log();
    ok(&env.run(&["pull", "owner/tiny-GGUF"]));
    assert_eq!(env.hub.downloads()[0].range, None);
    assert_eq!(std::fs::read(repo.join("blobs").join(&sha)).unwrap(), q4);
}

#[test]
fn a_split_model_downloads_every_part() {
    let env = Env::new();
    let mut sizes = 0;
    for i in 1..=3 {
        let part = gguf(256 * 32 * i, 15, 1024, i as f32);
        sizes += part.len();
        env.hub.add(
            "owner/big-GGUF",
            &format!("big-Q4_K_M-{i:05}-of-00003.gguf"),
            part,
        );
    }
    env.hub
        .add("owner/big-GGUF", "big-Q8_0.gguf", gguf(256, 7, 1024, 9.0));
    ok(&env.run(&["pull", "owner/big-GGUF"]));
    let snap = repo_dir(&env, "owner/big-GGUF")
        .join("snapshots")
        .join(COMMIT);
    for i in 1..=3 {
        assert!(snap
            .join(format!("big-Q4_K_M-{i:05}-of-00003.gguf"))
            .is_file());
    }
    assert!(!snap.join("big-Q8_0.gguf").exists());
    let list = ls_json(&env);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "owner/big-GGUF:Q4_K_M");
    assert_eq!(list[0]["files"].as_array().unwrap().len(), 3);
    assert_eq!(list[0]["size"], sizes);
    assert_eq!(list[0]["parameters"], 256 * 32 * 6);
}

#[test]
fn offline_mode_refuses_to_pull_without_touching_the_network() {
    let env = Env::new();
    tiny_repo(&env);
    for v in ["1", "true", "ON"] {
        let out = env
            .cmd(&["pull", "owner/tiny-GGUF"])
            .env("HF_HUB_OFFLINE", v)
            .output()
            .unwrap();
        failed(&out, "HF_HUB_OFFLINE");
    }
    failed(
        &env.run(&["pull", "--offline", "owner/tiny-GGUF"]),
        "offline",
    );
    assert!(env.hub.log().is_empty(), "{:?}", env.hub.log());
    assert!(!env.hub_cache().exists());
}

#[test]
fn a_name_not_downloaded_says_which_pull_to_run_and_stays_offline() {
    let env = Env::new();
    tiny_repo(&env);
    for cmd in [
        vec!["run", "-m", "owner/tiny-GGUF:Q8_0", "hi"],
        vec!["info", "owner/tiny-GGUF:Q8_0"],
        vec!["bench", "-m", "owner/tiny-GGUF:Q8_0"],
        vec!["serve", "-m", "owner/tiny-GGUF:Q8_0", "--port", "0"],
    ] {
        failed(&env.run(&cmd), "backstop pull owner/tiny-GGUF:Q8_0");
    }
    assert!(env.hub.log().is_empty(), "{:?}", env.hub.log());
}

#[test]
fn gated_repos_need_hf_token_and_renamed_repos_follow_the_hub_redirect() {
    let env = Env::new();
    let q4 = gguf(256 * 16, 15, 256, 3.0);
    env.hub.add("owner/gated-GGUF", "g-Q4_K_M.gguf", q4.clone());
    env.hub
        .state
        .lock()
        .unwrap()
        .gated
        .insert("owner/gated-GGUF".into());
    failed(&env.run(&["pull", "owner/gated-GGUF"]), "HF_TOKEN");
    let out = env
        .cmd(&["pull", "owner/gated-GGUF"])
        .env("HF_TOKEN", "secret")
        .output()
        .unwrap();
    ok(&out);

    // The listing answers under the old name; resolve redirects (relative) to the new one.
    tiny_repo(&env);
    let files = env.hub.state.lock().unwrap().repos["owner/tiny-GGUF"].clone();
    env.hub
        .state
        .lock()
        .unwrap()
        .repos
        .insert("owner/tiny-GGUF-old".into(), files);
    ok(&env.run(&["pull", "owner/tiny-GGUF-old"]));
    assert!(env
        .hub
        .log()
        .iter()
        .any(|l| l.method == "HEAD" && l.path == "/owner/tiny-GGUF/resolve/main/tiny-Q4_K_M.gguf"));
    let names: Vec<String> = ls_json(&env)
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["owner/gated-GGUF:Q4_K_M", "owner/tiny-GGUF-old:Q4_K_M"]
    );
}
