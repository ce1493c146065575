//! The records a quality finding names, as they are in their files: the page's findings
//! link here. Records are streamed in file order (the order the report numbers them in)
//! and reading stops after the last one asked for, so a finding early in a big file costs
//! little.

use std::path::Path;

use ferrotune_data::quality::load::specs;
use ferrotune_data::source;
use ferrotune_data::stream::{Position, RecordStream};
use ferrotune_train::config::file::ConfigFile;
use ferrotune_train::recipe::Run;
use serde_json::{json, Value};

/// Records read a chunk at a time.
const CHUNK: usize = 1024;

/// Records `wanted` (0-based, as the report numbers them) of dataset `name` of the config
/// at `config`: `{"record", "at", "value"}` each, or `{"record", "at", "problem"}` for a
/// line that is not a record.
pub fn read(config: &Path, name: &str, wanted: &[usize]) -> Result<Vec<Value>, String> {
    let config = ConfigFile::load(config).map_err(|e| e.to_string())?;
    let run = Run::from_config(&config).map_err(|e| e.to_string())?;
    let specs = specs(&run.data).map_err(|e| e.to_string())?;
    let spec = specs.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        format!(
            "no dataset {name:?} in the config (it has: {})",
            names.join(", ")
        )
    })?;
    let Some(&last) = wanted.iter().max() else {
        return Ok(Vec::new());
    };
    let files = source::resolve_files(&spec.path).map_err(|e| e.to_string())?;
    let mut stream = RecordStream::open(files, Position::default()).map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    let mut index = 0usize;
    while index <= last {
        let chunk = stream.next_chunk(CHUNK).map_err(|e| e.to_string())?;
        if chunk.is_empty() {
            break;
        }
        for pending in chunk {
            if wanted.contains(&index) {
                let at = pending.at.to_string();
                found.push(match pending.parse() {
                    Ok(raw) => json!({"record": index, "at": at, "value": raw.value}),
                    Err(e) => json!({"record": index, "at": at, "problem": e.to_string()}),
                });
            }
            index += 1;
        }
    }
    Ok(found)
}
