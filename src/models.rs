//! Local models: where they live and how a name on the command line becomes a file, from local
//! files only (nothing here opens a network connection).
//!
//! A model argument is, in this order:
//! 1. a path to an existing file;
//! 2. `OWNER/REPO[:QUANT]` or `OWNER/REPO:FILE.gguf`: a download in the Hugging Face cache
//!    (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`), in the layout the
//!    Python `huggingface_hub` writes (`models--OWNER--REPO/{refs,snapshots,blobs}`);
//! 3. a file name (with or without `.gguf`) in `./models/` or a folder of `BACKSTOP_MODELS`.
//!
//! QUANT picks the `.gguf` whose name carries that tag (case-insensitive), `Q4_K_M` when none
//! is given, as llama.cpp's `-hf` does. A model split into `-00001-of-0000N.gguf` parts is
//! named by its first part.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

/// The quant tag picked when a name gives none (llama.cpp's default for `-hf`).
pub const DEFAULT_QUANT: &str = "Q4_K_M";

/// Where local models are looked for.
#[derive(Clone, Debug)]
pub struct Places {
    /// The Hugging Face hub cache folder (holds `models--OWNER--REPO`).
    pub hub_cache: PathBuf,
    /// `./models` and the `BACKSTOP_MODELS` folders, in search order.
    pub dirs: Vec<PathBuf>,
}

impl Places {
    /// From the environment: `HF_HUB_CACHE`, `HF_HOME`, `HOME`, `BACKSTOP_MODELS`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let hub_cache = if let Some(c) = var("HF_HUB_CACHE") {
            PathBuf::from(c)
        } else if let Some(h) = var("HF_HOME") {
            PathBuf::from(h).join("hub")
        } else if let Some(home) = var("HOME") {
            PathBuf::from(home).join(".cache/huggingface/hub")
        } else {
            PathBuf::from(".cache/huggingface/hub")
        };
        let mut dirs = vec![PathBuf::from("models")];
        if let Some(extra) = var("BACKSTOP_MODELS") {
            dirs.extend(std::env::split_paths(&extra).filter(|p| !p.as_os_str().is_empty()));
        }
        Self { hub_cache, dirs }
    }

    /// The cache folder of one repository.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.hub_cache
            .join(format!("models--{}", repo.replace('/', "--")))
    }
}

/// `OWNER/REPO` with an optional `:QUANT` or `:FILE.gguf`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoRef {
    pub repo: String,
    /// A quant tag or an exact file name; None means the default quant.
    pub pick: Option<String>,
}

impl RepoRef {
    /// Parse `OWNER/REPO[:QUANT]`; None when `s` does not have that shape.
    pub fn parse(s: &str) -> Option<Self> {
        let (repo, pick) = match s.split_once(':') {
            Some((r, p)) => (r, Some(p)),
            None => (s, None),
        };
        let (owner, name) = repo.split_once('/')?;
        let ok = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !ok(owner) || !ok(name) || name.ends_with(".gguf") {
            return None;
        }
        let pick = match pick {
            Some(p) if p.is_empty() || p.contains('/') || p.contains('\\') => return None,
            Some(p) => Some(p.to_owned()),
            None => None,
        };
        Some(Self {
            repo: repo.to_owned(),
            pick,
        })
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pick {
            Some(p) => write!(f, "{}:{p}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// Why a name did not resolve to a local file.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("model file {0} does not exist")]
    NoSuchFile(String),
    #[error(
        "{name} is not downloaded (looked in {cache}); while online, run: backstop pull {name}"
    )]
    NotInCache { name: String, cache: String },
    #[error("{name}: {repo} is downloaded but has no {what}; it has: {have}")]
    NoMatch {
        name: String,
        repo: String,
        what: String,
        have: String,
    },
    #[error("{name} is ambiguous: {files}; name one as {repo}:FILE")]
    Ambiguous {
        name: String,
        repo: String,
        files: String,
    },
    #[error(
        "no model named {name} in {dirs}; give a path, a downloaded OWNER/REPO[:QUANT] (see \
         backstop ls), or download one while online with: backstop pull OWNER/REPO[:QUANT]"
    )]
    NotFound { name: String, dirs: String },
}

/// The first part of a split model: `(stem before -00001, part count)`, or None.
pub fn split_part(file: &str) -> Option<(&str, u32, u32)> {
    let stem = file.strip_suffix(".gguf")?;
    // ...-00001-of-00003
    let (head, total) = stem.rsplit_once("-of-")?;
    let (base, index) = head.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(total) {
        return None;
    }
    let (i, n) = (index.parse().ok()?, total.parse().ok()?);
    (i >= 1 && i <= n).then_some((base, i, n))
}

/// The file names of every part of the split model whose first part is `first`.
pub fn split_parts(first: &str) -> Option<Vec<String>> {
    let (base, 1, n) = split_part(first)? else {
        return None;
    };
    Some(
        (1..=n)
            .map(|i| format!("{base}-{i:05}-of-{n:05}.gguf"))
            .collect(),
    )
}

/// Whether `file` carries the quant `tag`: the tag appears case-insensitively, with no letter or
/// digit before it and `.`, `-` or the end after it (so `Q4_K` does not match `Q4_K_M`).
pub fn has_quant(file: &str, tag: &str) -> bool {
    let name = file.to_ascii_lowercase();
    let tag = tag.to_ascii_lowercase();
    if tag.is_empty() {
        return false;
    }
    let bytes = name.as_bytes();
    let mut from = 0;
    while let Some(i) = name[from..].find(&tag) {
        let start = from + i;
        let end = start + tag.len();
        let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after_ok = end == bytes.len() || matches!(bytes[end], b'.' | b'-');
        if before_ok && after_ok {
            return true;
        }
        from = start + 1;
    }
    false
}

/// Quant tags as llama.cpp's tools name files, longest first so the most specific wins.
const KNOWN_QUANTS: &[&str] = &[
    "IQ2_XXS", "IQ3_XXS", "IQ1_S", "IQ1_M", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XS", "IQ3_S", "IQ3_M",
    "IQ4_XS", "IQ4_NL", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S",
    "Q5_K_M", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "BF16", "F16", "F32",
];

/// The quant tag a file name carries, upper-cased, if it carries a known one.
pub fn quant_in_name(file: &str) -> Option<&'static str> {
    KNOWN_QUANTS.iter().copied().find(|q| has_quant(file, q))
}

/// Whether a file is a model (a `.gguf` that is not a projector, and not a later split part).
pub fn is_model_file(file: &str) -> bool {
    let lower = file.to_ascii_lowercase();
    lower.ends_with(".gguf")
        && !lower.contains("mmproj")
        && split_part(file).is_none_or(|(_, i, _)| i == 1)
}

/// Pick the model files among `files` (names in one repository) that `pick` asks for. Returns
/// the chosen first file name.
pub fn choose<'a>(
    name: &str,
    repo: &str,
    files: &'a [String],
    pick: Option<&str>,
) -> Result<&'a str, ResolveError> {
    let models: Vec<&String> = files.iter().filter(|f| is_model_file(f)).collect();
    let have = || {
        if models.is_empty() {
            "no .gguf models".to_owned()
        } else {
            models
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    if let Some(p) = pick.filter(|p| p.to_ascii_lowercase().ends_with(".gguf")) {
        return files
            .iter()
            .find(|f| f.as_str() == p || f.rsplit('/').next() == Some(p))
            .map(String::as_str)
            .ok_or_else(|| ResolveError::NoMatch {
                name: name.to_owned(),
                repo: repo.to_owned(),
                what: format!("file {p}"),
                have: have(),
            });
    }
    let tag = pick.unwrap_or(DEFAULT_QUANT);
    let matching: Vec<&String> = models
        .iter()
        .copied()
        .filter(|f| has_quant(f, tag))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.as_str()),
        [] if pick.is_none() && models.len() == 1 => Ok(models[0].as_str()),
        [] => Err(ResolveError::NoMatch {
            name: name.to_owned(),
            repo: repo.to_owned(),
            what: format!("{tag} file"),
            have: have(),
        }),
        many => Err(ResolveError::Ambiguous {
            name: name.to_owned(),
            repo: repo.to_owned(),
            files: many
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The snapshot folder a cached repository's `refs/main` points at, else its newest snapshot.
pub fn snapshot_dir(repo_dir: &Path) -> Option<PathBuf> {
    let snapshots = repo_dir.join("snapshots");
    if let Ok(commit) = std::fs::read_to_string(repo_dir.join("refs/main")) {
        let dir = snapshots.join(commit.trim());
        if !commit.trim().is_empty() && dir.is_dir() {
            return Some(dir);
        }
    }
    let newest = std::fs::read_dir(&snapshots)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())?;
    Some(newest.path())
}

/// Files present in a snapshot (relative names; broken links left out).
pub fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            walk(root, &path, out);
        } else if path.is_file() {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
}

/// Resolve a model argument to a local file (the first part of a split model).
pub fn resolve(arg: &str, places: &Places) -> Result<PathBuf, ResolveError> {
    let as_path = Path::new(arg);
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    if let Some(r) = RepoRef::parse(arg) {
        let repo_dir = places.repo_dir(&r.repo);
        let not_cached = || ResolveError::NotInCache {
            name: arg.to_owned(),
            cache: places.hub_cache.display().to_string(),
        };
        let snap = snapshot_dir(&repo_dir).ok_or_else(not_cached)?;
        let files = snapshot_files(&snap);
        let file = choose(arg, &r.repo, &files, r.pick.as_deref()).map_err(|e| match e {
            // Nothing of what was asked is here: the fix is the same pull.
            ResolveError::NoMatch { .. } => not_cached(),
            other => other,
        })?;
        return Ok(snap.join(file));
    }
    // A bare file name in the model folders.
    let looks_like_name = !arg.contains('/') && !arg.contains('\\') && !arg.is_empty();
    if looks_like_name {
        for dir in &places.dirs {
            for candidate in [dir.join(arg), dir.join(format!("{arg}.gguf"))] {
                if candidate.is_file() {
                    return Ok(candidate);
                }
            }
        }
        if !arg.ends_with(".gguf") {
            return Err(ResolveError::NotFound {
                name: arg.to_owned(),
                dirs: places
                    .dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Err(ResolveError::NoSuchFile(arg.to_owned()))
}

/// One model found on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalModel {
    /// The name that resolves to it (`OWNER/REPO:QUANT`, or the file name in a models folder).
    pub name: String,
    /// Every file of the model (one, or each part of a split model), first part first.
    pub files: Vec<PathBuf>,
    /// Whether it lives in the hub cache (so `backstop rm` may remove it).
    pub cached: bool,
}

/// Every model in the cache and the model folders.
pub fn list(places: &Places) -> Vec<LocalModel> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&places.hub_cache) {
        let mut repos: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(OsStr::to_str)
                    .is_some_and(|n| n.starts_with("models--"))
            })
            .collect();
        repos.sort();
        for repo_dir in repos {
            let Some(folder) = repo_dir.file_name().and_then(OsStr::to_str) else {
                continue;
            };
            let repo = folder.trim_start_matches("models--").replacen("--", "/", 1);
            let Some(snap) = snapshot_dir(&repo_dir) else {
                continue;
            };
            let files = snapshot_files(&snap);
            for file in files.iter().filter(|f| is_model_file(f)) {
                let name = cache_name(&repo, file, &files);
                out.push(LocalModel {
                    name,
                    files: model_files(&snap, file),
                    cached: true,
                });
            }
        }
    }
    for dir in &places.dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| is_model_file(n))
            .collect();
        names.sort();
        for n in names {
            let files = model_files(dir, &n);
            if out.iter().any(|m| m.files == files) {
                continue;
            }
            out.push(LocalModel {
                name: n,
                files,
                cached: false,
            });
        }
    }
    out
}

/// The shortest name that resolves back to `file` in a repository holding `files`.
fn cache_name(repo: &str, file: &str, files: &[String]) -> String {
    if let Some(q) = quant_in_name(file) {
        if choose("", repo, files, Some(q)).ok() == Some(file) {
            return format!("{repo}:{q}");
        }
    }
    format!("{repo}:{}", file.rsplit('/').next().unwrap_or(file))
}

/// The files of one model in `dir`: the file itself, or every part of a split model that is
/// present.
fn model_files(dir: &Path, first: &str) -> Vec<PathBuf> {
    match split_parts(first) {
        Some(parts) => parts
            .iter()
            .map(|p| dir.join(p))
            .filter(|p| p.is_file())
            .collect(),
        None => vec![dir.join(first)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn repo_refs_parse() {
        let r = RepoRef::parse("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q4_K_M").unwrap();
        assert_eq!(r.repo, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF");
        assert_eq!(r.pick.as_deref(), Some("Q4_K_M"));
        assert_eq!(RepoRef::parse("a/b").unwrap().pick, None);
        assert_eq!(
            RepoRef::parse("a/b:x.gguf").unwrap().pick.as_deref(),
            Some("x.gguf")
        );
        for bad in [
            "plain",
            "a/b/c",
            "/abs/path",
            "./x/y",
            "a/",
            "a/b:",
            "models/x.gguf",
            "../a",
        ] {
            assert_eq!(RepoRef::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn quant_tags_match_whole_tags_only() {
        assert!(has_quant("SmolLM2-135M-Instruct-Q4_K_M.gguf", "q4_k_m"));
        assert!(has_quant("smollm2-135m-instruct-q4_k_m.gguf", "Q4_K_M"));
        assert!(!has_quant("model-Q4_K_M.gguf", "Q4_K"));
        assert!(has_quant("model.Q4_K.gguf", "Q4_K"));
        assert!(!has_quant("model-IQ4_XS.gguf", "Q4_XS"));
        assert!(has_quant("m-Q8_0-00001-of-00002.gguf", "Q8_0"));
        assert_eq!(quant_in_name("gemma-3-270m-q4_k_m.gguf"), Some("Q4_K_M"));
        assert_eq!(
            quant_in_name("SmolLM2-135M-Instruct.Q4_1.gguf"),
            Some("Q4_1")
        );
        assert_eq!(quant_in_name("model.gguf"), None);
    }

    #[test]
    fn split_names() {
        assert_eq!(
            split_part("big-Q4_K_M-00002-of-00003.gguf"),
            Some(("big-Q4_K_M", 2, 3))
        );
        assert_eq!(split_part("big-Q4_K_M.gguf"), None);
        assert_eq!(split_part("x-00004-of-00003.gguf"), None);
        assert_eq!(
            split_parts("b-00001-of-00002.gguf").unwrap(),
            s(&["b-00001-of-00002.gguf", "b-00002-of-00002.gguf"])
        );
        assert_eq!(split_parts("b-00002-of-00002.gguf"), None);
    }

    #[test]
    fn choosing_files() {
        let files = s(&[
            "README.md",
            "m-Q4_K_M.gguf",
            "m-Q8_0.gguf",
            "mmproj-m-f16.gguf",
            "big/m-F16-00001-of-00002.gguf",
            "big/m-F16-00002-of-00002.gguf",
        ]);
        assert_eq!(choose("n", "o/r", &files, None).unwrap(), "m-Q4_K_M.gguf");
        assert_eq!(
            choose("n", "o/r", &files, Some("q8_0")).unwrap(),
            "m-Q8_0.gguf"
        );
        assert_eq!(
            choose("n", "o/r", &files, Some("F16")).unwrap(),
            "big/m-F16-00001-of-00002.gguf"
        );
        assert_eq!(
            choose("n", "o/r", &files, Some("m-Q8_0.gguf")).unwrap(),
            "m-Q8_0.gguf"
        );
        let e = choose("n", "o/r", &files, Some("Q2_K")).unwrap_err();
        assert!(e.to_string().contains("m-Q8_0.gguf"), "{e}");
        // One model and no quant asked: that one.
        assert_eq!(
            choose("n", "o/r", &s(&["only-Q8_0.gguf"]), None).unwrap(),
            "only-Q8_0.gguf"
        );
        let two = s(&["a-Q4_K_M.gguf", "b-Q4_K_M.gguf"]);
        assert!(matches!(
            choose("n", "o/r", &two, None),
            Err(ResolveError::Ambiguous { .. })
        ));
    }

    /// A cache laid out as huggingface_hub writes it, plus a models folder.
    fn fixture() -> (tempfile::TempDir, Places) {
        let t = tempfile::tempdir().unwrap();
        let hub = t.path().join("hub");
        let repo = hub.join("models--owner--tiny-GGUF");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        for (i, f) in ["tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"].iter().enumerate() {
            let blob = repo.join("blobs").join(format!("blob{i}"));
            std::fs::write(&blob, b"GGUF").unwrap();
            #[cfg(unix)]
            std::os::unix::fs::symlink(format!("../../blobs/blob{i}"), snap.join(f)).unwrap();
            #[cfg(not(unix))]
            std::fs::copy(&blob, snap.join(f)).unwrap();
        }
        let dir = t.path().join("models");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("local.Q4_1.gguf"), b"GGUF").unwrap();
        let places = Places {
            hub_cache: hub,
            dirs: vec![dir],
        };
        (t, places)
    }

    #[test]
    fn resolves_paths_cache_names_and_folder_names() {
        let (t, p) = fixture();
        let local = t.path().join("models/local.Q4_1.gguf");
        assert_eq!(resolve(local.to_str().unwrap(), &p).unwrap(), local);
        assert_eq!(resolve("local.Q4_1.gguf", &p).unwrap(), local);
        assert_eq!(resolve("local.Q4_1", &p).unwrap(), local);
        let q4 = resolve("owner/tiny-GGUF", &p).unwrap();
        assert!(q4.ends_with("tiny-Q4_K_M.gguf"), "{}", q4.display());
        assert_eq!(std::fs::read(&q4).unwrap(), b"GGUF");
        let q8 = resolve("owner/tiny-GGUF:q8_0", &p).unwrap();
        assert!(q8.ends_with("tiny-Q8_0.gguf"));
        let by_file = resolve("owner/tiny-GGUF:tiny-Q8_0.gguf", &p).unwrap();
        assert_eq!(by_file, q8);
    }

    #[test]
    fn missing_names_say_what_to_pull() {
        let (_t, p) = fixture();
        let e = resolve("owner/other-GGUF:Q4_K_M", &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("backstop pull owner/other-GGUF:Q4_K_M"), "{e}");
        let e = resolve("owner/tiny-GGUF:Q2_K", &p).unwrap_err().to_string();
        assert!(e.contains("backstop pull owner/tiny-GGUF:Q2_K"), "{e}");
        let e = resolve("nothing-here", &p).unwrap_err().to_string();
        assert!(e.contains("no model named nothing-here"), "{e}");
        assert!(e.contains("backstop pull"), "{e}");
        let e = resolve("/nonexistent/model.gguf", &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn lists_cache_and_folders_with_names_that_resolve() {
        let (_t, p) = fixture();
        let all = list(&p);
        let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "owner/tiny-GGUF:Q4_K_M",
                "owner/tiny-GGUF:Q8_0",
                "local.Q4_1.gguf"
            ]
        );
        for m in &all {
            assert_eq!(resolve(&m.name, &p).unwrap(), m.files[0], "{}", m.name);
        }
        assert!(all[0].cached && !all[2].cached);
    }
}
