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

/// A folder of ferrotune's cache: `sub` beside `$FERROTUNE_CACHE_DIR` (the data cache)
/// when that is set, else `$XDG_CACHE_HOME/ferrotune/sub`, else `~/.cache/ferrotune/sub`.
pub fn ferrotune_cache(sub: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FERROTUNE_CACHE_DIR") {
        let dir = PathBuf::from(dir);
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        return Some(parent.unwrap_or(Path::new(".")).join(sub));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ferrotune").join(sub))
}

/// The folder standing for a GGUF file (`gguf::gguf_folder`), in the ferrotune cache.
fn gguf_model(file: &Path) -> Result<PathBuf> {
    let cache = crate::gguf::gguf_cache().ok_or_else(|| {
        ModelError::file(file, "no cache folder for the GGUF's config and tokenizer: HOME is unset (set FERROTUNE_CACHE_DIR)")
    })?;
    crate::gguf::gguf_folder(file, &cache)
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
/// The Hub ids with a usable snapshot in the local caches (what `resolve_model` would
/// find offline), sorted, each once.
pub fn cached_models() -> Vec<String> {
    let mut ids: Vec<String> = cache_dirs()
        .iter()
        .flat_map(|cache| {
            let entries = std::fs::read_dir(cache).into_iter().flatten().flatten();
            entries.filter_map(move |e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let repo = name.strip_prefix("models--")?.replacen("--", "/", 1);
                snapshot_in(cache, &repo).map(|_| repo)
            })
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

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

/// Where and whether to look for Hub models; [`HubOptions::from_env`] reads the
/// variables huggingface_hub uses.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub caches: Vec<PathBuf>,
    /// `HF_ENDPOINT`, else the public Hub.
    pub endpoint: String,
    /// `HF_HUB_OFFLINE=1`: never download.
    pub offline: bool,
    /// `HF_TOKEN`, for gated or private models.
    pub token: Option<String>,
}

impl HubOptions {
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        HubOptions {
            caches: cache_dirs(),
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| v != "0" && v.to_lowercase() != "false"),
            token: var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")),
        }
    }
}

/// Resolves a folder or Hub id to a model folder, downloading into the cache when the
/// model is not there yet and the Hub is reachable.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    resolve_model_with(spec, &HubOptions::from_env())
}

pub fn resolve_model_with(spec: &str, options: &HubOptions) -> Result<PathBuf> {
    let path = Path::new(spec);
    if crate::gguf::is_gguf_file(path) {
        return gguf_model(path);
    }
    if let Some(file) = crate::gguf::gguf_in_folder(path)? {
        return gguf_model(&file);
    }
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if !looks_like_hub_id(spec) {
        return Err(ModelError::file(path, "no such model folder"));
    }
    for cache in &options.caches {
        if let Some(dir) = snapshot_in(cache, spec) {
            return Ok(dir);
        }
    }
    let looked: Vec<String> = options
        .caches
        .iter()
        .map(|c| c.display().to_string())
        .collect();
    let looked = if looked.is_empty() {
        "no cache folder: HOME is unset".to_string()
    } else {
        looked.join(", ")
    };
    let why = match (options.offline, options.caches.first()) {
        (true, _) => "HF_HUB_OFFLINE is set".to_string(),
        (false, None) => "there is no cache folder to download into".to_string(),
        (false, Some(cache)) => match download(spec, cache, options) {
            Ok(dir) => return Ok(dir),
            Err(e) => format!("downloading from {} failed: {e}", options.endpoint),
        },
    };
    Err(ModelError::invalid(format!(
        "model {spec:?} is not a folder and not in the Hugging Face cache (looked in {looked}), and {why}; \
         download it where the Hub is reachable (`huggingface-cli download {spec}`) or set \
         model_name_or_path to a model folder"
    )))
}

/// The files of a model repository ferrotune needs.
fn wanted(file: &str) -> bool {
    const FILES: [&str; 8] = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "model.safetensors",
        "model.safetensors.index.json",
    ];
    FILES.contains(&file)
        || (file.starts_with("model-") && file.ends_with(".safetensors") && !file.contains('/'))
}

/// Downloads `repo` at its `main` revision into `cache` in huggingface_hub's layout
/// (`models--org--name/snapshots/<commit>/`, `refs/main`).
fn download(repo: &str, cache: &Path, options: &HubOptions) -> Result<PathBuf, String> {
    use std::io::Read;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let get = |url: &str| {
        let mut request = agent.get(url);
        if let Some(token) = &options.token {
            request = request.header("Authorization", &format!("Bearer {token}"));
        }
        request.call().map_err(|e| format!("{url}: {e}"))
    };
    let endpoint = options.endpoint.trim_end_matches('/');
    let info_url = format!("{endpoint}/api/models/{repo}/revision/main");
    let info: serde_json::Value = {
        let mut response = get(&info_url)?;
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{info_url}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("{info_url}: not JSON: {e}"))?
    };
    let sha = info["sha"]
        .as_str()
        .ok_or_else(|| format!("{info_url}: no commit sha"))?
        .to_string();
    let files: Vec<String> = info["siblings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["rfilename"].as_str())
        .filter(|f| wanted(f))
        .map(String::from)
        .collect();
    if !files.iter().any(|f| f == "config.json") {
        return Err(format!(
            "{repo} has no config.json (is it a transformers model?)"
        ));
    }
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = root.join("snapshots").join(&sha);
    std::fs::create_dir_all(&snapshot).map_err(|e| format!("{}: {e}", snapshot.display()))?;
    for file in &files {
        let target = snapshot.join(file);
        if target.is_file() {
            continue;
        }
        let url = format!("{endpoint}/{repo}/resolve/{sha}/{file}");
        let mut response = get(&url)?;
        let size = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string();
        eprintln!(
            "downloading {repo}/{file} ({size} bytes) into {}",
            snapshot.display()
        );
        let partial = snapshot.join(format!("{file}.incomplete"));
        let mut out =
            std::fs::File::create(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(|e| format!("{url}: {e}"))?;
            if n == 0 {
                break;
            }
            std::io::Write::write_all(&mut out, &buf[..n])
                .map_err(|e| format!("{}: {e}", partial.display()))?;
        }
        std::fs::rename(&partial, &target).map_err(|e| format!("{}: {e}", target.display()))?;
    }
    std::fs::create_dir_all(root.join("refs")).map_err(|e| e.to_string())?;
    std::fs::write(root.join("refs").join("main"), &sha).map_err(|e| e.to_string())?;
    Ok(snapshot)
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
