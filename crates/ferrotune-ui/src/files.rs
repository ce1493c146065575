//! The server-side file picker: folders and files under the `--dir` root, never above it,
//! each marked with what ferrotune can do with it (a model folder, a GGUF file, a dataset
//! folder, a data file, a run's output).

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What an entry is, for the page's pickers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A folder with config.json and weights or an adapter.
    Model,
    /// A LoRA adapter folder (adapter_config.json), e.g. a run's output.
    Adapter,
    Gguf,
    /// A folder with dataset_info.json.
    DatasetDir,
    /// A .json / .jsonl / .csv / .parquet / .txt file.
    DataFile,
    Yaml,
    Folder,
    File,
}

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub name: String,
    /// Relative to the root, with `/`.
    pub path: String,
    pub kind: Kind,
    pub size: Option<u64>,
}

/// Resolves `relative` under `root`, refusing anything that leaves it (`..`, an absolute
/// path, a link pointing out).
pub fn resolve(root: &Path, relative: &str) -> Result<PathBuf, String> {
    let rel = Path::new(relative.trim_start_matches("./"));
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "{relative}: only paths inside the served folder are allowed"
        ));
    }
    let root = root
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root.display()))?;
    let path = root.join(rel);
    let real = path
        .canonicalize()
        .map_err(|e| format!("{relative}: {e}"))?;
    if !real.starts_with(&root) {
        return Err(format!("{relative}: leads outside the served folder"));
    }
    Ok(real)
}

pub fn kind_of(path: &Path) -> Kind {
    if path.is_dir() {
        if path.join("adapter_config.json").is_file() {
            Kind::Adapter
        } else if path.join("config.json").is_file() {
            Kind::Model
        } else if path.join("dataset_info.json").is_file() {
            Kind::DatasetDir
        } else {
            Kind::Folder
        }
    } else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let ext = name.rsplit('.').next().unwrap_or("");
        match ext {
            "gguf" => Kind::Gguf,
            "yaml" | "yml" => Kind::Yaml,
            "json" | "jsonl" | "csv" | "parquet" | "txt" | "arrow" => Kind::DataFile,
            _ => Kind::File,
        }
    }
}

/// The entries of folder `relative` under `root`, folders first, hidden ones left out.
pub fn list(root: &Path, relative: &str) -> Result<Vec<Entry>, String> {
    let dir = resolve(root, relative)?;
    let read = std::fs::read_dir(&dir).map_err(|e| format!("{relative}: {e}"))?;
    let prefix = relative.trim_matches('/');
    let mut entries: Vec<Entry> = read
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                return None;
            }
            let path = e.path();
            let meta = std::fs::metadata(&path).ok()?;
            Some(Entry {
                path: if prefix.is_empty() || prefix == "." {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                },
                kind: kind_of(&path),
                size: meta.is_file().then_some(meta.len()),
                name,
            })
        })
        .collect();
    entries.sort_by(|a, b| {
        (a.size.is_some(), a.name.to_lowercase()).cmp(&(b.size.is_some(), b.name.to_lowercase()))
    });
    Ok(entries)
}

/// Folders and files up to `depth` levels below the root whose kind is in `kinds` (the
/// pickers' suggestions), in path order.
pub fn find(root: &Path, kinds: &[Kind], depth: usize) -> Vec<Entry> {
    let mut found = Vec::new();
    let mut stack = vec![(String::new(), 0usize)];
    while let Some((rel, level)) = stack.pop() {
        let Ok(entries) = list(root, if rel.is_empty() { "." } else { &rel }) else {
            continue;
        };
        for e in entries {
            if kinds.contains(&e.kind) {
                found.push(e.clone());
            }
            // Model and adapter folders hold no further models worth listing.
            if e.size.is_none()
                && level + 1 < depth
                && !matches!(e.kind, Kind::Model | Kind::Adapter)
            {
                stack.push((e.path.clone(), level + 1));
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_under_the_root() {
        let root = ferrotune_testing::TempDir::new("ui-files");
        std::fs::create_dir_all(root.path().join("m")).unwrap();
        root.write("m/config.json", "{}");
        root.write("d/dataset_info.json", "{}");
        root.write("d/a.json", "[]");
        root.write("x.gguf", "");
        assert!(resolve(root.path(), "../").is_err());
        assert!(resolve(root.path(), "/etc").is_err());
        assert!(resolve(root.path(), "m/../..").is_err());
        let top = list(root.path(), ".").unwrap();
        let kinds: Vec<(String, Kind)> = top.iter().map(|e| (e.path.clone(), e.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("d".to_string(), Kind::DatasetDir),
                ("m".to_string(), Kind::Model),
                ("x.gguf".to_string(), Kind::Gguf)
            ]
        );
        let data = find(root.path(), &[Kind::DataFile], 3);
        assert_eq!(data[0].path, "d/a.json");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/", root.path().join("out")).unwrap();
            assert!(resolve(root.path(), "out/etc").is_err());
        }
    }
}
