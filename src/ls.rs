//! `backstop ls` (every local model, facts read from GGUF headers only) and `backstop rm`
//! (remove a download from the hub cache).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use backstop_engine::gguf::{keys, GgufFile};
use clap::Args;
use serde_json::json;

use crate::models::{self, LocalModel, Places, RepoRef};
use crate::pull::human;

#[derive(Args)]
pub struct LsArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RmArgs {
    /// The downloaded model to remove, as `backstop ls` names it (OWNER/REPO[:QUANT]).
    #[arg(value_name = "REPO[:QUANT]")]
    pub name: String,
}

/// What `ls` shows of one model, read from the GGUF header(s).
#[derive(Debug, Default, PartialEq)]
pub struct Facts {
    pub architecture: String,
    pub parameters: u64,
    pub quant: String,
    pub size: u64,
    pub context_length: Option<u32>,
    pub chat_template: bool,
}

/// llama.cpp's `general.file_type` numbers and the names its tools print for them.
fn file_type_name(ft: u32) -> Option<&'static str> {
    Some(match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        _ => return None,
    })
}

/// Facts of a model from its files' headers (parameters and size summed over split parts).
pub fn facts(files: &[PathBuf]) -> Result<Facts> {
    if files.is_empty() {
        bail!("no files");
    }
    let mut f = Facts::default();
    for (i, path) in files.iter().enumerate() {
        let file =
            GgufFile::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        f.size += std::fs::metadata(path).map_or(0, |m| m.len());
        f.parameters += file.tensors.iter().map(|t| t.n_elements()).sum::<u64>();
        if i > 0 {
            continue;
        }
        f.architecture = file
            .get_str(keys::GENERAL_ARCHITECTURE)
            .unwrap_or("unknown")
            .to_owned();
        f.context_length = file
            .get_u32(&keys::arch_key(&f.architecture, "context_length"))
            .ok();
        f.chat_template = file.get(keys::TOKENIZER_CHAT_TEMPLATE).is_some();
        f.quant = file
            .get_u32("general.file_type")
            .ok()
            .and_then(file_type_name)
            .map(str::to_owned)
            .or_else(|| dominant_type(&file))
            .unwrap_or_else(|| "?".to_owned());
    }
    Ok(f)
}

/// The tensor type that holds the most bytes, for files without `general.file_type`.
fn dominant_type(file: &GgufFile) -> Option<String> {
    let mut by: Vec<(&str, u64)> = Vec::new();
    for t in &file.tensors {
        match by.iter_mut().find(|(n, _)| *n == t.ty.name()) {
            Some(e) => e.1 += t.n_bytes,
            None => by.push((t.ty.name(), t.n_bytes)),
        }
    }
    by.into_iter()
        .max_by_key(|(_, b)| *b)
        .map(|(n, _)| n.to_owned())
}

fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

pub fn ls(a: LsArgs) -> Result<()> {
    let places = Places::from_env();
    let all = models::list(&places);
    let rows: Vec<(&LocalModel, Result<Facts>)> =
        all.iter().map(|m| (m, facts(&m.files))).collect();
    if a.json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|(m, f)| {
                let mut v = json!({
                    "name": m.name,
                    "path": m.files[0],
                    "files": m.files,
                    "source": if m.cached { "cache" } else { "folder" },
                });
                match f {
                    Ok(f) => {
                        v["architecture"] = json!(f.architecture);
                        v["parameters"] = json!(f.parameters);
                        v["quant"] = json!(f.quant);
                        v["size"] = json!(f.size);
                        v["context_length"] = json!(f.context_length);
                        v["chat_template"] = json!(f.chat_template);
                    }
                    Err(e) => v["error"] = json!(crate::one_line(e)),
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    if rows.is_empty() {
        eprintln!(
            "no models in {} or {}; download one while online with: backstop pull OWNER/REPO[:QUANT]",
            places.hub_cache.display(),
            places
                .dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    let width = rows
        .iter()
        .map(|(m, _)| m.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<10} {:>8} {:<8} {:>10} {:>8}  TEMPLATE",
        "NAME", "ARCH", "PARAMS", "QUANT", "SIZE", "CONTEXT"
    );
    for (m, f) in &rows {
        match f {
            Ok(f) => println!(
                "{:<width$}  {:<10} {:>8} {:<8} {:>10} {:>8}  {}",
                m.name,
                f.architecture,
                count(f.parameters),
                f.quant,
                human(f.size),
                f.context_length.map_or("-".to_owned(), |c| c.to_string()),
                if f.chat_template { "yes" } else { "no" }
            ),
            Err(e) => println!("{:<width$}  unreadable: {}", m.name, crate::one_line(e)),
        }
    }
    Ok(())
}

pub fn rm(a: RmArgs) -> Result<()> {
    let places = Places::from_env();
    if RepoRef::parse(&a.name).is_none() {
        bail!(
            "{} is not a download (OWNER/REPO[:QUANT]); backstop rm removes only models in {}: \
             delete other files yourself",
            a.name,
            places.hub_cache.display()
        );
    }
    let path = models::resolve(&a.name, &places)?;
    let model = models::list(&places)
        .into_iter()
        .find(|m| m.cached && m.files.first() == Some(&path))
        .ok_or_else(|| anyhow!("{} is not in {}", a.name, places.hub_cache.display()))?;
    let freed = remove_cached(&model.files)?;
    println!("removed {} ({})", model.name, human(freed));
    Ok(())
}

/// Remove snapshot entries and the blobs no other snapshot still points at; then empty
/// snapshot folders, and the repository folder when no snapshot is left. Returns bytes freed.
fn remove_cached(files: &[PathBuf]) -> Result<u64> {
    let mut freed = 0;
    let mut repo_dir: Option<PathBuf> = None;
    for pointer in files {
        let snap_root = pointer
            .ancestors()
            .find(|p| p.parent().and_then(Path::file_name) == Some(OsStr::new("snapshots")))
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("{} is not in a cache snapshot", pointer.display()))?;
        let repo = snap_root
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| anyhow!("{} is not in a cache snapshot", pointer.display()))?
            .to_path_buf();
        let blob = std::fs::canonicalize(pointer).ok();
        std::fs::remove_file(pointer)
            .with_context(|| format!("cannot remove {}", pointer.display()))?;
        // The blob a link pointed at goes too, unless another snapshot still uses it. (Where
        // the entry was a copy, not a link, removing it freed the space already.)
        let blob = blob.filter(|b| {
            b.parent().and_then(Path::file_name) == Some(OsStr::new("blobs")) && b != pointer
        });
        if let Some(blob) = blob {
            if !still_linked(&repo.join("snapshots"), &blob) {
                freed += std::fs::metadata(&blob).map_or(0, |m| m.len());
                std::fs::remove_file(&blob)
                    .with_context(|| format!("cannot remove {}", blob.display()))?;
            }
        }
        // Empty folders left behind, up to the snapshot folder itself.
        for dir in pointer.ancestors().skip(1) {
            if dir == repo.join("snapshots") || std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
        repo_dir = Some(repo);
    }
    if let Some(repo) = repo_dir {
        let empty =
            std::fs::read_dir(repo.join("snapshots")).map_or(true, |mut d| d.next().is_none());
        if empty {
            std::fs::remove_dir_all(&repo)
                .with_context(|| format!("cannot remove {}", repo.display()))?;
        }
    }
    Ok(freed)
}

/// Whether any file under `snapshots` still resolves to `blob`.
fn still_linked(snapshots: &Path, blob: &Path) -> bool {
    let Ok(commits) = std::fs::read_dir(snapshots) else {
        return false;
    };
    commits.flatten().any(|c| {
        models::snapshot_files(&c.path())
            .iter()
            .any(|f| std::fs::canonicalize(c.path().join(f)).ok().as_deref() == Some(blob))
    })
}
