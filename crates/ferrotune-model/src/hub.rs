//! `model_name_or_path` may be a folder or a Hub id (`Qwen/Qwen3-0.6B`), resolved from the
//! local Hugging Face cache (the `HF_HUB_CACHE` / `HF_HOME` layout) so LLaMA-Factory configs
//! work unchanged.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// The cache folders to search, in the order huggingface_hub uses them.
pub fn cache_dirs() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut dirs = Vec::new();
    if let Some(d) = env("HF_HUB_CACHE").or_else(|| env("HUGGINGFACE_HUB_CACHE")) {
        dirs.push(d);
    }
    if let Some(home) = env("HF_HOME") {
        dirs.push(home.join("hub"));
    }
    if let Some(xdg) = env("XDG_CACHE_HOME") {
        dirs.push(xdg.join("huggingface").join("hub"));
    }
    if let Some(home) = env("HOME") {
        dirs.push(home.join(".cache").join("huggingface").join("hub"));
    }
    dirs.dedup();
    dirs
}

fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with('.')
        })
}

/// The snapshot folder of `repo` in one cache folder: `refs/main`'s commit, else the
/// newest snapshot that has a config.json.
fn snapshot_in(cache: &Path, repo: &str) -> Option<PathBuf> {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    if let Ok(commit) = std::fs::read_to_string(root.join("refs").join("main")) {
        let dir = root.join("snapshots").join(commit.trim());
        if dir.join("config.json").is_file() {
            return Some(dir);
        }
    }
    let mut snapshots: Vec<(std::time::SystemTime, PathBuf)> =
        std::fs::read_dir(root.join("snapshots"))
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("config.json").is_file())
            .map(|p| {
                (
                    p.metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH),
                    p,
                )
            })
            .collect();
    snapshots.sort();
    snapshots.pop().map(|(_, p)| p)
}

/// Resolves a folder or Hub id to a model folder.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if !looks_like_hub_id(spec) {
        return Err(ModelError::file(path, "no such model folder"));
    }
    let caches = cache_dirs();
    for cache in &caches {
        if let Some(dir) = snapshot_in(cache, spec) {
            return Ok(dir);
        }
    }
    let looked: Vec<String> = caches.iter().map(|c| c.display().to_string()).collect();
    Err(ModelError::invalid(format!(
        "model {spec:?} is not a folder and is not in the Hugging Face cache (looked in {}); \
         ferrotune does not download: fetch it with `huggingface-cli download {spec}` where the Hub \
         is reachable, or set model_name_or_path to a model folder",
        if looked.is_empty() { "no cache folder: HOME is unset".to_string() } else { looked.join(", ") }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_resolve_from_the_cache_layout() {
        let cache = std::env::temp_dir().join(format!("ferrotune-hub-{}", std::process::id()));
        let snap = cache
            .join("models--Org--Tiny-Model")
            .join("snapshots")
            .join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::create_dir_all(cache.join("models--Org--Tiny-Model").join("refs")).unwrap();
        std::fs::write(
            cache
                .join("models--Org--Tiny-Model")
                .join("refs")
                .join("main"),
            "abc123\n",
        )
        .unwrap();
        assert_eq!(snapshot_in(&cache, "Org/Tiny-Model"), Some(snap));
        assert_eq!(snapshot_in(&cache, "Org/Other"), None);
        assert!(looks_like_hub_id("Qwen/Qwen3-0.6B"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("a/b/c"));
        let e = resolve_model("Nobody/Nothing-1B").unwrap_err().to_string();
        assert!(
            e.contains("not in the Hugging Face cache") && e.contains("huggingface-cli download"),
            "{e}"
        );
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
