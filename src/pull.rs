//! `backstop pull`: the one command that uses the network. It downloads a GGUF model from the
//! Hugging Face hub (or the mirror `HF_ENDPOINT` names) into the standard hub cache, so that
//! every other command finds it offline.
//!
//! The repository listing and the cache layout come from the `hf-hub` crate; the transfer is
//! ours, because it must resume a broken download byte for byte (`blobs/<etag>.incomplete`,
//! continued with a `Range` request, as the Python `huggingface_hub` does), check the size and
//! the LFS sha256, and show progress with rate and ETA. The cache is the one the Python
//! library writes (`models--OWNER--REPO/{blobs/<etag>, snapshots/<commit>/<file>, refs/main}`),
//! so the two share downloads.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use hf_hub::api::tokio::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::models::{self, Places, RepoRef};

#[derive(Args)]
pub struct PullArgs {
    /// OWNER/REPO[:QUANT] (QUANT picks the .gguf whose name carries it; default Q4_K_M).
    #[arg(value_name = "REPO[:QUANT]")]
    pub name: String,
    /// A file of the repository to download instead of picking one by quant.
    #[arg(value_name = "FILE")]
    pub file: Option<String>,
    /// Refuse to touch the network (as HF_HUB_OFFLINE=1 does).
    #[arg(long)]
    pub offline: bool,
}

/// Whether `HF_HUB_OFFLINE` asks for offline mode (the Python library's truthy spellings).
pub fn env_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "on" | "yes" | "true"
        )
    })
}

pub fn pull(a: PullArgs) -> Result<()> {
    if a.offline || env_offline() {
        let why = if a.offline {
            "--offline"
        } else {
            "HF_HUB_OFFLINE is set"
        };
        bail!(
            "offline mode ({why}): backstop pull downloads, so it will not run; unset it to \
             download while online, or use a model already here (backstop ls)"
        );
    }
    let r =
        RepoRef::parse(&a.name).ok_or_else(|| anyhow!("{:?} is not OWNER/REPO[:QUANT]", a.name))?;
    if a.file.is_some() && r.pick.is_some() {
        bail!("give either REPO:QUANT or REPO FILE, not both");
    }
    let places = Places::from_env();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(pull_repo(&r, a.file.as_deref(), &places))
}

/// The hub's description of one file of the listing.
struct RemoteFile {
    name: String,
    size: Option<u64>,
    sha256: Option<String>,
}

struct Hub {
    api: Api,
    /// Does not follow redirects: the hub's answer to a HEAD carries the file's metadata.
    head_client: reqwest::Client,
    /// Follows redirects, with no default credentials: a token is added only for the hub's own
    /// URLs, and reqwest drops it on a redirect to another host.
    get_client: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    repo: Repo,
    repo_id: String,
}

/// `HF_TOKEN`, else the token file `huggingface-cli login` writes (`HF_TOKEN_PATH`, else
/// `HF_HOME/token`, else `~/.cache/huggingface/token`).
fn token() -> Option<String> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(t) = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Some(t.trim().to_owned());
    }
    let path = var("HF_TOKEN_PATH").map(PathBuf::from).or_else(|| {
        var("HF_HOME")
            .map(|h| PathBuf::from(h).join("token"))
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/token")))
    })?;
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

async fn pull_repo(r: &RepoRef, file: Option<&str>, places: &Places) -> Result<()> {
    let endpoint = std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "https://huggingface.co".to_owned())
        .trim_end_matches('/')
        .to_owned();
    let cache = Cache::new(places.hub_cache.clone());
    let token = token();
    let api = ApiBuilder::from_cache(cache)
        .with_endpoint(endpoint.clone())
        .with_token(token.clone())
        .with_progress(false)
        .build()
        .context("cannot set up the HTTP client")?;
    let head_client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("backstop/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up the HTTP client")?;
    let get_client = reqwest::Client::builder()
        .user_agent(concat!("backstop/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up the HTTP client")?;
    let repo = Repo::with_revision(r.repo.clone(), RepoType::Model, "main".to_owned());
    let hub = Hub {
        api,
        head_client,
        get_client,
        endpoint,
        token,
        repo,
        repo_id: r.repo.clone(),
    };

    let (commit, listing) = hub.listing().await?;
    let names: Vec<String> = listing.iter().map(|f| f.name.clone()).collect();
    let pick = file.or(r.pick.as_deref());
    let display = r.to_string();
    let first = match file {
        Some(f) => names
            .iter()
            .find(|n| n.as_str() == f)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("{} has no file {f}", r.repo))?,
        None => models::choose(&display, &r.repo, &names, pick)?,
    };
    let wanted: Vec<String> = match models::split_part(first) {
        Some((_, 1, _)) => models::split_parts(first).unwrap_or_default(),
        Some(_) => bail!("{first} is a later part of a split model: pull its -00001- part"),
        None => vec![first.to_owned()],
    };
    let mut paths = Vec::new();
    for (i, name) in wanted.iter().enumerate() {
        let remote = listing.iter().find(|f| &f.name == name).ok_or_else(|| {
            anyhow!(
                "{} lists no {name} (part {} of a split model)",
                r.repo,
                i + 1
            )
        })?;
        paths.push(hub.download(remote, &commit, places).await?);
    }
    let local_name = match (file, &r.pick) {
        (Some(f), _) => format!("{}:{}", r.repo, f.rsplit('/').next().unwrap_or(f)),
        (None, Some(_)) => display.clone(),
        (None, None) => format!(
            "{}:{}",
            r.repo,
            models::quant_in_name(first).unwrap_or(models::DEFAULT_QUANT)
        ),
    };
    if let Some(p) = paths.first() {
        println!("{}", p.display());
    }
    eprintln!("ready for offline use: backstop run -m {local_name} \"...\"");
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// A path of the repository with each segment percent-encoded for a URL.
fn url_path(file: &str) -> String {
    file.split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl Hub {
    fn status_error(&self, status: reqwest::StatusCode, what: &str) -> anyhow::Error {
        match status.as_u16() {
            401 if self.token.is_none() => anyhow!(
                "{what}: {status}: {} is gated or private; set HF_TOKEN to a token that may read it",
                self.repo_id
            ),
            401 => anyhow!("{what}: {status}: the token in HF_TOKEN is not accepted"),
            403 => anyhow!(
                "{what}: {status}: access to {} is not granted; accept its terms on the hub with \
                 the account of HF_TOKEN",
                self.repo_id
            ),
            404 => anyhow!("{what}: {status}: {} has no such repository or file", self.endpoint),
            _ => anyhow!("{what}: the hub answered {status}"),
        }
    }

    /// The repository's commit and files (`api/models/OWNER/REPO/revision/main?blobs=true`).
    async fn listing(&self) -> Result<(String, Vec<RemoteFile>)> {
        let what = format!("cannot list {}", self.repo_id);
        let resp = self
            .api
            .repo(self.repo.clone())
            .info_request()
            .query(&[("blobs", "true")])
            .send()
            .await
            .with_context(|| format!("{what}: cannot reach {}", self.endpoint))?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp.status(), &what));
        }
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("{what}: the listing is not JSON"))?;
        let commit = body
            .get("sha")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let siblings = body
            .get("siblings")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("{what}: the listing has no siblings"))?;
        let files = siblings
            .iter()
            .filter_map(|s| {
                let name = s.get("rfilename")?.as_str()?.to_owned();
                let lfs = s.get("lfs");
                let size = lfs
                    .and_then(|l| l.get("size"))
                    .or_else(|| s.get("size"))
                    .and_then(Value::as_u64);
                let sha256 = lfs
                    .and_then(|l| l.get("sha256"))
                    .and_then(Value::as_str)
                    .filter(|h| is_sha256(h))
                    .map(str::to_ascii_lowercase);
                Some(RemoteFile { name, size, sha256 })
            })
            .collect();
        Ok((commit, files))
    }

    fn with_auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Download one file into the cache (or find it there) and return its snapshot path.
    async fn download(&self, f: &RemoteFile, commit: &str, places: &Places) -> Result<PathBuf> {
        let what = format!("cannot download {}", f.name);
        // Metadata: HEAD the resolve URL, following only redirects inside the hub (a renamed
        // repository); a redirect elsewhere (a CDN) is where the bytes are.
        let mut url = format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            self.repo.url(),
            self.repo.url_revision(),
            url_path(&f.name)
        );
        let mut hops = 0;
        let (headers, download_url) = loop {
            let resp = self
                .with_auth(self.head_client.head(&url))
                .send()
                .await
                .with_context(|| format!("{what}: cannot reach {}", self.endpoint))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            if status.is_redirection() {
                let loc = header(&headers, "location")
                    .ok_or_else(|| anyhow!("{what}: a redirect without a location"))?
                    .to_owned();
                if loc.starts_with('/') && hops < 10 {
                    url = format!("{}{loc}", self.endpoint);
                    hops += 1;
                    continue;
                }
                break (headers, loc);
            }
            if !status.is_success() {
                return Err(self.status_error(status, &what));
            }
            break (headers, url.clone());
        };
        let commit = header(&headers, "x-repo-commit")
            .filter(|c| !c.is_empty())
            .unwrap_or(commit)
            .to_owned();
        if commit.is_empty() || commit.contains(['/', '\\', '.']) {
            bail!("{what}: the hub named no usable commit");
        }
        let etag = header(&headers, "x-linked-etag")
            .or_else(|| header(&headers, "etag"))
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_owned())
            .filter(|e| !e.is_empty() && !e.contains(['/', '\\']) && e != "." && e != "..")
            .ok_or_else(|| anyhow!("{what}: the hub sent no ETag"))?;
        let size = header(&headers, "x-linked-size")
            .and_then(|s| s.parse::<u64>().ok())
            .or(f.size)
            .or_else(|| {
                (download_url == url)
                    .then(|| header(&headers, "content-length")?.parse().ok())
                    .flatten()
            })
            .ok_or_else(|| anyhow!("{what}: the hub did not say how large it is"))?;
        let sha256 = f
            .sha256
            .clone()
            .or_else(|| is_sha256(&etag).then(|| etag.to_ascii_lowercase()));

        let repo_dir = places.repo_dir(&self.repo_id);
        let blobs = repo_dir.join("blobs");
        std::fs::create_dir_all(&blobs)
            .with_context(|| format!("cannot create {}", blobs.display()))?;
        let blob = blobs.join(&etag);
        let have_blob = std::fs::metadata(&blob).is_ok_and(|m| m.len() == size);
        if have_blob {
            eprintln!("{}: already downloaded", f.name);
        } else {
            let partial = blobs.join(format!("{etag}.incomplete"));
            self.transfer(f, &download_url, &partial, size, sha256.as_deref())
                .await?;
            std::fs::rename(&partial, &blob)
                .with_context(|| format!("cannot move the download to {}", blob.display()))?;
        }
        let pointer = repo_dir.join("snapshots").join(&commit).join(&f.name);
        link(&blob, &pointer)?;
        if self.repo.revision() == "main" {
            hf_hub::Cache::new(places.hub_cache.clone())
                .repo(self.repo.clone())
                .create_ref(&commit)
                .with_context(|| format!("cannot write {}", repo_dir.join("refs").display()))?;
        }
        Ok(pointer)
    }

    /// Bring `partial` up to `size` bytes from `url`, continuing what is there, then check it.
    async fn transfer(
        &self,
        f: &RemoteFile,
        url: &str,
        partial: &Path,
        size: u64,
        sha256: Option<&str>,
    ) -> Result<()> {
        let mut have = std::fs::metadata(partial).map_or(0, |m| m.len());
        if have > size {
            have = 0;
        }
        let mut hasher = Sha256::new();
        if have > 0 {
            // The bytes already here count toward the checksum.
            let mut file = File::open(partial)
                .with_context(|| format!("cannot read {}", partial.display()))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut left = have;
            while left > 0 {
                let n = file.read(&mut buf[..(left.min(1 << 20)) as usize])?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
        }
        if have < size {
            let mut req = self.get_client.get(url);
            if url.starts_with(&self.endpoint) {
                req = self.with_auth(req);
            }
            if have > 0 {
                req = req.header("range", format!("bytes={have}-"));
            }
            let mut resp = req
                .send()
                .await
                .with_context(|| format!("cannot download {}", f.name))?;
            let status = resp.status();
            let append = match status.as_u16() {
                206 if have > 0 => {
                    let from = header(resp.headers(), "content-range")
                        .and_then(|c| c.strip_prefix("bytes "))
                        .and_then(|c| c.split('-').next())
                        .and_then(|s| s.parse::<u64>().ok());
                    if from != Some(have) {
                        bail!(
                            "cannot resume {}: the server sent a different range",
                            f.name
                        );
                    }
                    eprintln!("{}: resuming at {} of {}", f.name, human(have), human(size));
                    true
                }
                200 => {
                    if have > 0 {
                        eprintln!("{}: the server cannot resume; starting over", f.name);
                    }
                    false
                }
                _ => return Err(self.status_error(status, &format!("cannot download {}", f.name))),
            };
            if !append {
                have = 0;
                hasher = Sha256::new();
            }
            let mut out = OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(partial)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            let mut progress = Progress::new(&f.name, have, size);
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        progress.abandon();
                        return Err(anyhow!(
                            "download of {} broke off at {} of {} ({e}); run the same command \
                             again to resume",
                            f.name,
                            human(have),
                            human(size)
                        ));
                    }
                };
                if have + chunk.len() as u64 > size {
                    progress.abandon();
                    drop(out);
                    let _ = std::fs::remove_file(partial);
                    bail!(
                        "{} is larger than the hub says ({} bytes): the transfer is corrupt and \
                         was deleted; run the command again",
                        f.name,
                        size
                    );
                }
                out.write_all(&chunk)
                    .with_context(|| format!("cannot write {}", partial.display()))?;
                hasher.update(&chunk);
                have += chunk.len() as u64;
                progress.update(have);
            }
            out.flush()?;
            progress.finish(have == size);
        }
        if have != size {
            bail!(
                "download of {} ended at {} of {}; run the same command again to resume",
                f.name,
                human(have),
                human(size)
            );
        }
        if let Some(expected) = sha256 {
            let got = hex(&hasher.finalize());
            if got != expected {
                let _ = std::fs::remove_file(partial);
                bail!(
                    "{} is corrupt: sha256 {got} where the hub says {expected}; the download was \
                     deleted, run the command again",
                    f.name
                );
            }
            eprintln!("{}: size and sha256 verified", f.name);
        } else {
            eprintln!("{}: size verified (the hub gives no sha256 for it)", f.name);
        }
        Ok(())
    }
}

/// Point `pointer` (in a snapshot) at `blob` with a relative link, as huggingface_hub does.
fn link(blob: &Path, pointer: &Path) -> Result<()> {
    let dir = pointer
        .parent()
        .ok_or_else(|| anyhow!("bad snapshot path {}", pointer.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if pointer.symlink_metadata().is_ok() {
        std::fs::remove_file(pointer)
            .with_context(|| format!("cannot replace {}", pointer.display()))?;
    }
    #[cfg(unix)]
    {
        // From snapshots/<commit>/<sub/dirs/>file up to the repo folder, then blobs/<etag>.
        let repo_dir = blob
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| anyhow!("bad blob path {}", blob.display()))?;
        let depth = pointer
            .strip_prefix(repo_dir)
            .map(|p| p.components().count() - 1)
            .unwrap_or(2);
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(&target, pointer)
            .with_context(|| format!("cannot link {}", pointer.display()))?;
    }
    #[cfg(not(unix))]
    std::fs::copy(blob, pointer)
        .with_context(|| format!("cannot copy to {}", pointer.display()))?;
    Ok(())
}

pub fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// Byte progress with rate and ETA. On a terminal an `indicatif` bar on stderr; otherwise (a
/// log, a pipe) no bar and no escape codes, only a plain line every tenth (or every 10 seconds).
/// Either way a summary line at the end of a complete transfer.
pub struct Progress {
    label: String,
    start: u64,
    total: u64,
    t0: Instant,
    /// The bar, when stderr is a terminal.
    bar: Option<ProgressBar>,
    /// When the last plain line was printed (no bar).
    last: Instant,
    last_tenth: u64,
}

/// The bar's layout: name, bar, bytes done / total, rate and ETA.
const BAR_TEMPLATE: &str =
    "{prefix}: [{wide_bar}] {bytes} / {total_bytes} {binary_bytes_per_sec} ETA {eta}";

/// A byte bar at `start` of `total` drawing to `target`; its rate counts only bytes after `start`.
fn byte_bar(label: &str, start: u64, total: u64, target: ProgressDrawTarget) -> ProgressBar {
    let style = ProgressStyle::with_template(BAR_TEMPLATE)
        .expect("the progress template is valid")
        .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
        .with_style(style)
        .with_prefix(label.to_owned())
        .with_position(start);
    // Let the estimator see the bytes already present (a resumed download), then forget the
    // rate of that first jump, so the rate and ETA reflect this transfer only. This happens
    // before the bar is shown, so the jump is never drawn.
    bar.tick();
    bar.reset_eta();
    bar.set_draw_target(target);
    bar
}

/// The plain (non-terminal) progress line: `label: pct% done / total rate/s ETA eta`, where the
/// rate counts the bytes moved since `start` in `secs` seconds.
fn plain_line(label: &str, start: u64, total: u64, done: u64, secs: f64) -> String {
    let rate = done.saturating_sub(start) as f64 / secs.max(1e-3);
    let pct = done as f64 * 100.0 / total.max(1) as f64;
    let eta = if rate > 0.0 {
        duration(total.saturating_sub(done) as f64 / rate)
    } else {
        "?".to_owned()
    };
    format!(
        "{label}: {pct:5.1}% {} / {} {}/s ETA {eta}",
        human(done),
        human(total),
        human(rate as u64)
    )
}

/// The closing line of a complete transfer: `label: total in time (rate/s)`.
fn summary_line(label: &str, start: u64, total: u64, secs: f64) -> String {
    let got = total.saturating_sub(start);
    format!(
        "{label}: {} in {} ({}/s)",
        human(total),
        duration(secs),
        human((got as f64 / secs.max(1e-3)) as u64)
    )
}

impl Progress {
    pub fn new(label: &str, start: u64, total: u64) -> Self {
        let bar = std::io::stderr()
            .is_terminal()
            .then(|| byte_bar(label, start, total, ProgressDrawTarget::stderr()));
        let now = Instant::now();
        Self {
            label: label.to_owned(),
            start,
            total,
            t0: now,
            bar,
            last: now,
            last_tenth: start * 10 / total.max(1),
        }
    }

    pub fn update(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let now = Instant::now();
        let tenth = done * 10 / self.total.max(1);
        if tenth > self.last_tenth || now.duration_since(self.last) >= Duration::from_secs(10) {
            if tenth < 10 {
                let secs = self.t0.elapsed().as_secs_f64();
                eprintln!(
                    "{}",
                    plain_line(&self.label, self.start, self.total, done, secs)
                );
            }
            self.last_tenth = tenth;
            self.last = now;
        }
    }

    /// Remove the bar and, when the transfer is `complete`, print a summary line.
    pub fn finish(&mut self, complete: bool) {
        self.clear();
        if complete {
            let secs = self.t0.elapsed().as_secs_f64();
            eprintln!(
                "{}",
                summary_line(&self.label, self.start, self.total, secs)
            );
        }
    }

    /// Remove the progress bar (on a terminal), printing nothing more.
    pub fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Leave the bar where it stopped (on a terminal), so that what follows starts on a new line.
    fn abandon(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths_are_percent_encoded_per_segment() {
        assert_eq!(url_path("a b/c+d.gguf"), "a%20b/c%2Bd.gguf");
        assert_eq!(url_path("m-Q4_K_M.gguf"), "m-Q4_K_M.gguf");
    }

    #[test]
    fn sha256_shape() {
        assert!(is_sha256(&"a".repeat(64)));
        assert!(!is_sha256(&"a".repeat(40)));
        assert!(!is_sha256(&"g".repeat(64)));
    }

    #[test]
    fn progress_line_has_rate_and_eta() {
        // 50 MiB of 100 MiB in 5 s: 10 MiB/s, 5 s to go.
        let l = plain_line("f.gguf", 0, 100 << 20, 50 << 20, 5.0);
        assert_eq!(l, "f.gguf:  50.0% 50.0 MiB / 100.0 MiB 10.0 MiB/s ETA 5s");
        // Resumed at 40 MiB: only the 10 MiB moved in this run count toward the rate.
        let l = plain_line("f.gguf", 40 << 20, 100 << 20, 50 << 20, 2.0);
        assert!(l.contains("50.0%"), "{l}");
        assert!(l.contains("50.0 MiB / 100.0 MiB 5.0 MiB/s ETA 10s"), "{l}");
        // Nothing moved yet: no rate, no ETA guess.
        let l = plain_line("f.gguf", 0, 100 << 20, 0, 1.0);
        assert!(l.ends_with("0 B/s ETA ?"), "{l}");
        let l = summary_line("f.gguf", 40 << 20, 100 << 20, 6.0);
        assert_eq!(l, "f.gguf: 100.0 MiB in 6s (10.0 MiB/s)");
    }

    #[test]
    fn progress_bar_starts_at_bytes_present() {
        let bar = byte_bar("f.gguf", 40 << 20, 100 << 20, ProgressDrawTarget::hidden());
        assert_eq!(bar.position(), 40 << 20);
        assert_eq!(bar.length(), Some(100 << 20));
        assert_eq!(bar.prefix(), "f.gguf");
        bar.set_position(50 << 20);
        assert_eq!(bar.position(), 50 << 20);
    }
}
