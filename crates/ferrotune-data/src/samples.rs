//! The examples of a prepared mixture, where they live: a cached dataset's in its
//! memory-mapped cache entry (never copied whole into memory: an example is read when it
//! is asked for), the others in a list in memory (no cache, previews, `num_samples`
//! datasets read whole). The mixture is an order over them, a (part, example) pair of
//! 32-bit numbers each, so a run over millions of examples holds 8 bytes an example.

use std::sync::Arc;

use crate::cache::MappedEntry;
use crate::encode::Encoded;
use crate::error::RecordRef;
use crate::pipeline::PreparedSample;

/// One dataset's examples.
pub enum Part {
    Memory(Vec<PreparedSample>),
    Mapped {
        /// Index into the run's dataset reports.
        dataset: usize,
        entry: MappedEntry,
    },
}

impl Part {
    pub fn len(&self) -> usize {
        match self {
            Part::Memory(v) => v.len(),
            Part::Mapped { entry, .. } => entry.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn length(&self, i: usize) -> usize {
        match self {
            Part::Memory(v) => v[i].encoded.len(),
            Part::Mapped { entry, .. } => entry.length(i),
        }
    }

    fn get(&self, i: usize) -> PreparedSample {
        match self {
            Part::Memory(v) => v[i].clone(),
            Part::Mapped { dataset, entry } => PreparedSample {
                dataset: *dataset,
                at: entry.record(i),
                encoded: entry.encoded(i),
            },
        }
    }

    fn weighted(&self) -> bool {
        match self {
            Part::Memory(v) => v.iter().any(|s| s.encoded.weights.is_some()),
            Part::Mapped { entry, .. } => entry.weighted(),
        }
    }
}

/// The examples of a run, in the mixture's order.
#[derive(Clone, Default)]
pub struct Samples {
    parts: Vec<Arc<Part>>,
    order: Vec<(u32, u32)>,
}

impl Samples {
    /// `order` picks (part, example) pairs from `parts`.
    pub fn new(parts: Vec<Part>, order: Vec<(u32, u32)>) -> Self {
        Samples {
            parts: parts.into_iter().map(Arc::new).collect(),
            order,
        }
    }

    /// Examples held in memory, in this order.
    pub fn from_memory(samples: Vec<PreparedSample>) -> Self {
        let order = (0..samples.len() as u32).map(|i| (0, i)).collect();
        Samples::new(vec![Part::Memory(samples)], order)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn at(&self, i: usize) -> (&Part, usize) {
        let (part, k) = self.order[i];
        (&self.parts[part as usize], k as usize)
    }

    /// Example `i`'s token count.
    pub fn length(&self, i: usize) -> usize {
        let (part, k) = self.at(i);
        part.length(k)
    }

    /// Every example's token count, in order.
    pub fn lengths(&self) -> Vec<usize> {
        (0..self.len()).map(|i| self.length(i)).collect()
    }

    /// Example `i` (read from its cache entry, or copied).
    pub fn get(&self, i: usize) -> PreparedSample {
        let (part, k) = self.at(i);
        part.get(k)
    }

    /// Example `i`'s tokens.
    pub fn encoded(&self, i: usize) -> Encoded {
        self.get(i).encoded
    }

    /// Where example `i` came from.
    pub fn record(&self, i: usize) -> RecordRef {
        self.get(i).at
    }

    /// Whether any example carries loss weights.
    pub fn weighted(&self) -> bool {
        let mut used = vec![false; self.parts.len()];
        for &(p, _) in &self.order {
            used[p as usize] = true;
        }
        self.parts
            .iter()
            .zip(used)
            .any(|(part, used)| used && part.weighted())
    }

    /// The examples at `indices` (into this order), sharing the storage.
    pub fn select(&self, indices: impl IntoIterator<Item = usize>) -> Samples {
        Samples {
            parts: self.parts.clone(),
            order: indices.into_iter().map(|i| self.order[i]).collect(),
        }
    }

    /// The (part, example) pairs, in order.
    pub fn order(&self) -> &[(u32, u32)] {
        &self.order
    }

    pub fn truncate(&mut self, n: usize) {
        self.order.truncate(n);
    }

    /// The examples in order, each read when reached.
    pub fn iter(&self) -> impl Iterator<Item = PreparedSample> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

impl<'a> IntoIterator for &'a Samples {
    type Item = PreparedSample;
    type IntoIter = Box<dyn Iterator<Item = PreparedSample> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}
