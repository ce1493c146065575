//! Training while preparation runs (LLaMA-Factory's `streaming: true`): a thread fills
//! the datasets' cache entries chunk by chunk (as `data prepare` does), and the trainer
//! reads examples as they land, from the partial entry (up to its last complete chunk)
//! or, once published, from the entry. The datasets are taken one after the other. The
//! order is LLaMA-Factory's (the `datasets` library's) shuffle buffer over the arrival
//! order: a buffer of `buffer_size` examples, each next one taking the place of a
//! randomly drawn one, which is emitted; it depends only on the seed and the data, so a
//! run from a warm cache trains the same rows, and a resumed run finds its place.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::config::DataArgs;
use crate::encode::Encoded;
use crate::error::{DataError, Result};
use crate::pipeline::{self, Prepared};
use crate::rng::SplitMix64;

/// What the preparing thread has done so far.
#[derive(Default)]
struct Status {
    /// Per dataset: the entry's key, once known.
    keys: Vec<String>,
    /// Datasets whose entry is published.
    finished: usize,
    failed: Option<String>,
}

/// The examples of a live preparation, in arrival order.
pub struct LiveData {
    root: PathBuf,
    datasets: usize,
    status: Arc<(Mutex<Status>, Condvar)>,
    /// Per dataset, its token files once opened, and its example count once published.
    opened: Mutex<Vec<Option<Opened>>>,
}

struct Opened {
    dir: PathBuf,
    ids: File,
    trained: File,
    weights: Option<File>,
    offsets: File,
    /// The complete examples and their tokens (all of them once published).
    examples: u64,
    tokens: u64,
    published: bool,
}

impl LiveData {
    /// Starts preparing the datasets of `args` into the cache under `root`, on a thread of
    /// its own.
    pub fn start(args: &DataArgs, root: &Path) -> Result<Arc<LiveData>> {
        let specs = pipeline::streaming_sources(args)?;
        let status = Arc::new((Mutex::new(Status::default()), Condvar::new()));
        let live = Arc::new(LiveData {
            root: root.to_path_buf(),
            datasets: specs.len(),
            status: status.clone(),
            opened: Mutex::new((0..specs.len()).map(|_| None).collect()),
        });
        let (args, root) = (args.clone(), root.to_path_buf());
        std::thread::spawn(move || {
            let fail = |e: String| {
                let (lock, wake) = &*status;
                lock.lock().expect("status").failed = Some(e);
                wake.notify_all();
            };
            let prepared = match Prepared::empty(&args) {
                Ok(p) => p,
                Err(e) => return fail(e.to_string()),
            };
            for (index, spec) in specs.iter().enumerate() {
                match pipeline::cache_key(&args, spec, &prepared) {
                    Ok(key) => {
                        let (lock, wake) = &*status;
                        lock.lock().expect("status").keys.push(key);
                        wake.notify_all();
                    }
                    Err(e) => return fail(e.to_string()),
                }
                if let Err(e) = pipeline::fill_cache_entry(&args, spec, index, &root, &prepared) {
                    return fail(e.to_string());
                }
                let (lock, wake) = &*status;
                lock.lock().expect("status").finished += 1;
                wake.notify_all();
                eprintln!("data: {}: prepared", spec.name);
            }
        });
        Ok(live)
    }

    /// Waits until dataset `d` has more than `k` examples or is published; returns its
    /// example count then. Errors of the preparing thread come out here.
    fn wait_for(&self, d: usize, k: u64) -> Result<u64> {
        if let Some(o) = &self.opened.lock().expect("opened")[d] {
            if o.examples > k || o.published {
                return Ok(o.examples);
            }
        }
        loop {
            let (key, finished) = {
                let (lock, _) = &*self.status;
                let s = lock.lock().expect("status");
                if let Some(e) = &s.failed {
                    return Err(DataError::config(format!("preparing the data: {e}")));
                }
                (s.keys.get(d).cloned(), s.finished > d)
            };
            if let Some(key) = key {
                let mut opened = self.opened.lock().expect("opened");
                if let Some(o) = refresh(&self.root, &key, &mut opened[d], finished)? {
                    if o.examples > k || o.published {
                        return Ok(o.examples);
                    }
                }
            }
            let (lock, wake) = &*self.status;
            let guard = lock.lock().expect("status");
            // Chunks land without a signal: look again after a short wait.
            let _ = wake
                .wait_timeout(guard, Duration::from_millis(50))
                .expect("status");
        }
    }

    /// Whether arrival `k` exists (waiting until it lands or the data is known to end).
    pub fn has(&self, mut k: u64) -> Result<bool> {
        for d in 0..self.datasets {
            let n = self.wait_for(d, k)?;
            if k < n {
                return Ok(true);
            }
            k -= n;
        }
        Ok(false)
    }

    /// Example `k` of the arrival order (the datasets one after the other), or `None`
    /// when the data holds fewer.
    pub fn example(&self, mut k: u64) -> Result<Option<Encoded>> {
        for d in 0..self.datasets {
            let n = self.wait_for(d, k)?;
            if k < n {
                let opened = self.opened.lock().expect("opened");
                return read_example(opened[d].as_ref().expect("opened"), k).map(Some);
            }
            k -= n;
        }
        Ok(None)
    }
}

impl Drop for LiveData {
    fn drop(&mut self) {
        let (lock, _) = &*self.status;
        let s = lock.lock().expect("status");
        if s.failed.is_none() && s.finished < self.datasets {
            eprintln!(
                "data: training ended before the preparation did; the next run resumes it from \
                 its last complete chunk"
            );
        }
    }
}

/// Opens (once) and re-reads how far entry `key` has got: published, or its partial
/// folder's last complete chunk.
fn refresh<'a>(
    root: &Path,
    key: &str,
    slot: &'a mut Option<Opened>,
    finished: bool,
) -> Result<Option<&'a Opened>> {
    if slot.as_ref().is_some_and(|o| o.published) {
        return Ok(slot.as_ref());
    }
    let published = root.join(key);
    let partial = crate::cache_build::partial_dir(root, key);
    let (dir, examples, tokens, weighted, is_published) =
        if finished || published.join("meta.json").is_file() {
            let entry = crate::cache::load_entry(&published)?;
            (
                published,
                entry.examples.len() as u64,
                entry.report.lengths.iter().sum::<usize>() as u64,
                entry.examples.weighted(),
                true,
            )
        } else {
            match crate::cache_build::read_progress(&partial) {
                Some(p) => (partial, p.examples, p.tokens, p.weighted, false),
                None => return Ok(None),
            }
        };
    let stale = slot
        .as_ref()
        .is_none_or(|o| o.dir != dir || (weighted && o.weights.is_none()));
    if stale {
        let open = |name: &str| {
            let path = dir.join(name);
            File::open(&path).map_err(|e| DataError::file(&path, format!("cannot open: {e}")))
        };
        *slot = Some(Opened {
            ids: open("ids.u32")?,
            trained: open("trained.u8")?,
            weights: if weighted {
                Some(open("weights.f32")?)
            } else {
                None
            },
            offsets: open("offsets.u64")?,
            dir: dir.clone(),
            examples,
            tokens,
            published: is_published,
        });
    }
    let o = slot.as_mut().expect("opened");
    o.examples = examples;
    o.tokens = tokens;
    o.published = is_published;
    Ok(slot.as_ref())
}

/// `len` bytes at `at` (the files are read under the `opened` lock, one reader at a time).
fn read_at(mut file: &File, at: u64, len: usize) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(at))
        .and_then(|_| file.read_exact(&mut buf))
        .map_err(|e| DataError::config(format!("reading the cache while it is written: {e}")))?;
    Ok(buf)
}

fn read_example(o: &Opened, k: u64) -> Result<Encoded> {
    let start = u64::from_le_bytes(read_at(&o.offsets, 8 * k, 8)?.try_into().expect("8"));
    let end = if k + 1 < o.examples {
        u64::from_le_bytes(read_at(&o.offsets, 8 * (k + 1), 8)?.try_into().expect("8"))
    } else {
        o.tokens
    };
    let n = (end - start) as usize;
    let words = |file: &File| -> Result<Vec<u32>> {
        Ok(read_at(file, 4 * start, 4 * n)?
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
            .collect())
    };
    let input_ids = words(&o.ids)?;
    let trained = read_at(&o.trained, start, n)?;
    Ok(Encoded {
        labels: crate::cache::labels_from_mask(&input_ids, &trained),
        input_ids,
        weights: match &o.weights {
            Some(w) => Some(words(w)?.into_iter().map(f32::from_bits).collect()),
            None => None,
        },
        truncated: false,
        second_start: None,
        desirable: None,
    })
}

/// The shuffle buffer's emitted order over arrival indices, grown on demand.
pub struct ShuffledOrder {
    buffer_size: usize,
    rng: SplitMix64,
    buffer: Vec<u64>,
    next_arrival: u64,
    /// `None` until the data is known to end (then the buffer drains in a shuffled order).
    total: Option<u64>,
    emitted: Vec<u64>,
}

impl ShuffledOrder {
    pub fn new(buffer_size: usize, seed: u64, first: u64) -> Self {
        ShuffledOrder {
            buffer_size: buffer_size.max(1),
            rng: SplitMix64(seed ^ 0x5_0ff1e),
            buffer: Vec::new(),
            next_arrival: first,
            total: None,
            emitted: Vec::new(),
        }
    }

    /// The arrival index emitted at position `r`, or `None` past the data's end;
    /// `exists(k)` says whether arrival `k` exists (waiting for it if need be).
    pub fn at(
        &mut self,
        r: usize,
        mut exists: impl FnMut(u64) -> Result<bool>,
    ) -> Result<Option<u64>> {
        while self.emitted.len() <= r {
            if self.total.is_none() {
                if exists(self.next_arrival)? {
                    let x = self.next_arrival;
                    self.next_arrival += 1;
                    if self.buffer.len() == self.buffer_size {
                        let i = (self.rng.next_u64() % self.buffer_size as u64) as usize;
                        self.emitted.push(self.buffer[i]);
                        self.buffer[i] = x;
                    } else {
                        self.buffer.push(x);
                    }
                    continue;
                }
                self.total = Some(self.next_arrival);
                let mut rest = std::mem::take(&mut self.buffer);
                // Fisher-Yates with the same generator.
                for i in (1..rest.len()).rev() {
                    let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
                    rest.swap(i, j);
                }
                self.emitted.extend(rest);
            }
            if self.emitted.len() <= r {
                return Ok(None);
            }
        }
        Ok(Some(self.emitted[r]))
    }
}
