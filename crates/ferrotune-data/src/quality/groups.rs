//! Checks over groups of records, across all datasets at once (the model trains on
//! their union): exact duplicates, near-duplicates and one prompt with different
//! answers.
//!
//! Memory stays bounded whatever the number of records: the first pass spills each
//! record's keys ([`Keys`]), and every grouping reads them back a partition at a time
//! (equal keys share a partition, see [`super::spill`]). What stays in memory is a
//! union-find parent per record (4 bytes), a bit or two per record, and the groups found.
//!
//! - Exact duplicates: records with one 128-bit key; the first of each key is its
//!   representative.
//! - Near duplicates: locality-sensitive hashing over the representatives' MinHash
//!   signatures. Every band bucket is a candidate group; each member is compared with the
//!   bucket's first and with its predecessor (linear in the bucket), and the pairs at or
//!   above the threshold are joined transitively. A pair already joined is not compared
//!   again, so one read of a signature serves most members of a large cluster.
//! - Conflicting answers: records with one prompt key and more than one answer key; their
//!   final answers are read in a second pass ([`AnswerRow`]) and counted, answers that
//!   are near-duplicates of each other (a word changed) counting as one.
//!
//! A group spanning datasets gives one finding per dataset, since a finding's record
//! indices belong to one dataset; the later datasets' findings name the first copy.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::checks::Facts;
use super::minhash::{band_keys, similarity, MinHasher, Signature, NUM_HASHES};
use super::spill::{u32_at, u64_at, Bits, Column, Fixed, Partitions, Rows, SpillDir};
use super::text::{hash64, normalize};
use super::{Check, Finding, Severity};
use crate::conversation::Sample;
use crate::error::Result;

/// A record as (dataset, record in the dataset).
pub type Item = (usize, usize);

/// Partitions of each spilled key set: a partition is read back whole.
const PARTITIONS: usize = 64;
/// A prompt's answers are counted up to this many kinds: more says nothing new, and it
/// bounds the comparisons of a prompt with thousands of answers.
const MAX_KINDS: usize = 8;

/// Records numbered across datasets, in order.
#[derive(Debug, Clone, Default)]
pub struct Numbering {
    /// Where each dataset's records start.
    starts: Vec<u32>,
}

impl Numbering {
    /// The next dataset's records are numbered from `first`.
    pub fn start_dataset(&mut self, first: u32) {
        self.starts.push(first);
    }

    /// Dataset `d`'s record numbers, of `total` in all.
    pub fn range(&self, d: usize, total: u32) -> std::ops::Range<u32> {
        self.starts[d]..self.starts.get(d + 1).copied().unwrap_or(total)
    }

    pub fn item(&self, global: u32) -> Item {
        let d = self.starts.partition_point(|&s| s <= global) - 1;
        (d, (global - self.starts[d]) as usize)
    }
}

impl Fixed for Signature {
    const SIZE: usize = NUM_HASHES * 4;
    fn put(&self, out: &mut Vec<u8>) {
        for v in self {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn get(bytes: &[u8]) -> Self {
        std::array::from_fn(|i| u32_at(bytes, i * 4))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ExactRow {
    key: u128,
    item: u32,
}

impl Fixed for ExactRow {
    const SIZE: usize = 20;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key.to_le_bytes());
        out.extend_from_slice(&self.item.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        let key = u128::from(u64_at(bytes, 0)) | (u128::from(u64_at(bytes, 8)) << 64);
        ExactRow {
            key,
            item: u32_at(bytes, 16),
        }
    }
}

/// Sorted by prompt, then record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PromptRow {
    prompt: u64,
    item: u32,
    answer: u64,
}

impl Fixed for PromptRow {
    const SIZE: usize = 20;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.prompt.to_le_bytes());
        out.extend_from_slice(&self.item.to_le_bytes());
        out.extend_from_slice(&self.answer.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        PromptRow {
            prompt: u64_at(bytes, 0),
            item: u32_at(bytes, 8),
            answer: u64_at(bytes, 12),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct BandRow {
    bucket: u64,
    item: u32,
}

impl Fixed for BandRow {
    const SIZE: usize = 12;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bucket.to_le_bytes());
        out.extend_from_slice(&self.item.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        BandRow {
            bucket: u64_at(bytes, 0),
            item: u32_at(bytes, 8),
        }
    }
}

/// The final answer of a record in a prompt group, read in the second pass. Sorted by
/// group, then record.
#[derive(Debug, Clone)]
pub struct AnswerRow {
    group: u32,
    item: u32,
    /// Hash of the normalized answer.
    text: u64,
    signature: Option<Signature>,
}

impl PartialEq for AnswerRow {
    fn eq(&self, other: &Self) -> bool {
        (self.group, self.item) == (other.group, other.item)
    }
}
impl Eq for AnswerRow {}
impl PartialOrd for AnswerRow {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for AnswerRow {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.group, self.item).cmp(&(other.group, other.item))
    }
}

impl Fixed for AnswerRow {
    const SIZE: usize = 17 + Signature::SIZE;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.group.to_le_bytes());
        out.extend_from_slice(&self.item.to_le_bytes());
        out.extend_from_slice(&self.text.to_le_bytes());
        out.push(u8::from(self.signature.is_some()));
        self.signature.unwrap_or([0; NUM_HASHES]).put(out);
    }
    fn get(bytes: &[u8]) -> Self {
        AnswerRow {
            group: u32_at(bytes, 0),
            item: u32_at(bytes, 4),
            text: u64_at(bytes, 8),
            signature: (bytes[16] == 1).then(|| Signature::get(&bytes[17..])),
        }
    }
}

/// What the first pass keeps of each record for the group checks, spilled past a budget.
pub struct Keys<'d> {
    exact: Partitions<'d, ExactRow>,
    prompts: Partitions<'d, PromptRow>,
    signatures: Column<'d, Signature>,
    has_signature: Bits,
    count: u32,
    /// Bytes of rows each key set holds in memory before they go to disk.
    budget: usize,
}

impl<'d> Keys<'d> {
    pub fn new(dir: &'d SpillDir, budget: usize) -> Self {
        Keys {
            exact: Partitions::new(dir, "exact", PARTITIONS, budget),
            prompts: Partitions::new(dir, "prompts", PARTITIONS, budget),
            signatures: Column::new(dir, "signatures", budget),
            has_signature: Bits::default(),
            count: 0,
            budget,
        }
    }

    /// Records numbered so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The next record's keys (records without an exact key, the unreadable ones, take
    /// part in no group).
    pub fn add(&mut self, facts: &Facts) -> Result<()> {
        let item = self.count;
        self.count += 1;
        if let Some(key) = facts.exact {
            self.exact
                .push((key >> 64) as u64, &ExactRow { key, item })?;
            if let Some((prompt, answer)) = facts.prompt_answer {
                self.prompts.push(
                    prompt,
                    &PromptRow {
                        prompt,
                        item,
                        answer,
                    },
                )?;
            }
        }
        let signature = facts.exact.and(facts.signature);
        if signature.is_some() {
            self.has_signature.set(item as usize);
        }
        self.signatures.push(signature.unwrap_or([0; NUM_HASHES]))
    }
}

/// A group finding before its example (the text of its first record) is known.
#[derive(Debug, Clone)]
pub struct Group {
    pub check: Check,
    /// Global record numbers, ascending.
    pub members: Vec<u32>,
    pub detail: String,
}

/// Groups of records sharing a prompt whose answers differ by key: the second pass reads
/// their final answers ([`Self::wants`], [`Self::add`]) and [`Self::conflicts`] counts them.
pub struct PromptGroups<'d> {
    /// (record, group), ascending by record.
    wanted: Vec<(u32, u32)>,
    rows: Partitions<'d, AnswerRow>,
    hasher: MinHasher,
}

impl<'d> PromptGroups<'d> {
    /// The group of a record whose answer is wanted.
    pub fn wants(&self, item: u32) -> Option<u32> {
        let at = self.wanted.binary_search_by_key(&item, |w| w.0).ok()?;
        Some(self.wanted[at].1)
    }

    /// Whether any record in `range` has its answer wanted.
    pub fn wants_any(&self, range: std::ops::Range<u32>) -> bool {
        let at = self.wanted.partition_point(|w| w.0 < range.start);
        self.wanted.get(at).is_some_and(|w| w.0 < range.end)
    }

    /// The first record of every group in each dataset: the findings show its text.
    pub fn shown<'a>(&'a self, numbering: &'a Numbering) -> impl Iterator<Item = u32> + 'a {
        let mut seen = BTreeSet::new();
        self.wanted
            .iter()
            .filter(move |&&(item, group)| seen.insert((group, numbering.item(item).0)))
            .map(|(item, _)| *item)
    }

    /// A wanted record's normalized final answer.
    pub fn add(&mut self, item: u32, group: u32, answer: &str) -> Result<()> {
        let row = AnswerRow {
            group,
            item,
            text: hash64(answer.as_bytes(), 13),
            signature: self.hasher.signature(answer, 3),
        };
        self.rows.push(hash64(&group.to_le_bytes(), 14), &row)
    }

    /// The groups with two or more different answers.
    pub fn conflicts(self, threshold: f64) -> Result<Vec<Group>> {
        let mut out = Vec::new();
        self.rows.each_sorted(|rows| {
            for group in rows.chunk_by(|a, b| a.group == b.group) {
                let n = distinct_answers(group, threshold);
                if n < 2 {
                    continue;
                }
                let at_least = if n >= MAX_KINDS { "at least " } else { "" };
                out.push(Group {
                    check: Check::ConflictingAnswer,
                    members: group.iter().map(|r| r.item).collect(),
                    detail: format!(
                        "the same prompt in {} records with {at_least}{n} different answers",
                        group.len()
                    ),
                });
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// How many different answers a prompt's records have (up to [`MAX_KINDS`]), counting
/// answers that are near-duplicates of each other as one: those records are near
/// duplicates, not a conflict.
fn distinct_answers(rows: &[AnswerRow], threshold: f64) -> usize {
    let mut kinds: Vec<&AnswerRow> = Vec::new();
    for row in rows {
        let same = kinds.iter().any(|k| {
            k.text == row.text
                || matches!((&k.signature, &row.signature), (Some(a), Some(b)) if similarity(a, b) >= threshold)
        });
        if !same {
            kinds.push(row);
            if kinds.len() == MAX_KINDS {
                break;
            }
        }
    }
    kinds.len()
}

/// A sample's final answer, normalized, as the conflict check compares it.
pub fn final_answer(sample: &Sample) -> Option<String> {
    sample
        .conversation()
        .and_then(|c| c.messages.last())
        .map(|m| normalize(&m.content))
}

/// Exact and near-duplicate groups, and the prompt groups whose answers the second pass
/// reads.
pub fn find<'d>(
    keys: Keys<'d>,
    threshold: f64,
    dir: &'d SpillDir,
) -> Result<(Vec<Group>, PromptGroups<'d>)> {
    let Keys {
        exact,
        prompts,
        signatures,
        has_signature,
        count,
        budget,
    } = keys;
    let mut groups = Vec::new();

    // Exact duplicates: the first of each key goes on to the near-duplicate pass.
    let mut copies = Bits::default();
    exact.each_sorted(|rows| {
        for run in rows.chunk_by(|a, b| a.key == b.key) {
            if run.len() < 2 {
                continue;
            }
            for row in &run[1..] {
                copies.set(row.item as usize);
            }
            groups.push(Group {
                check: Check::ExactDuplicate,
                members: run.iter().map(|r| r.item).collect(),
                detail: format!(
                    "{} copies of the same conversation (after normalizing case and spaces)",
                    run.len()
                ),
            });
        }
        Ok(())
    })?;

    let mut signatures = signatures.finish()?;
    groups.extend(near_duplicates(
        &mut signatures,
        &has_signature,
        &copies,
        count,
        threshold,
        (dir, budget),
    )?);
    // The signatures' file goes before the second pass writes the answers.
    drop(signatures);

    // Prompts with more than one answer key.
    let mut wanted = Vec::new();
    let mut next_group = 0u32;
    prompts.each_sorted(|rows| {
        for run in rows.chunk_by(|a, b| a.prompt == b.prompt) {
            if run.iter().any(|r| r.answer != run[0].answer) {
                wanted.extend(run.iter().map(|r| (r.item, next_group)));
                next_group += 1;
            }
        }
        Ok(())
    })?;
    wanted.sort_unstable();
    Ok((
        groups,
        PromptGroups {
            wanted,
            rows: Partitions::new(dir, "answers", PARTITIONS * 4, budget),
            hasher: MinHasher::default(),
        },
    ))
}

fn near_duplicates(
    signatures: &mut Rows<Signature>,
    has_signature: &Bits,
    copies: &Bits,
    count: u32,
    threshold: f64,
    (dir, budget): (&SpillDir, usize),
) -> Result<Vec<Group>> {
    // 32 rows a record: more partitions keep each one small when it is read back.
    let mut bands = Partitions::new(dir, "bands", PARTITIONS * 4, budget);
    signatures.each(|item, signature| {
        if has_signature.get(item) && !copies.get(item) {
            for bucket in band_keys(&signature) {
                bands.push(
                    bucket,
                    &BandRow {
                        bucket,
                        item: item as u32,
                    },
                )?;
            }
        }
        Ok(())
    })?;
    let mut parent: Vec<u32> = (0..count).collect();
    bands.each_sorted(|rows| {
        for bucket in rows.chunk_by(|a, b| a.bucket == b.bucket) {
            if bucket.len() < 2 {
                continue;
            }
            let first = bucket[0].item;
            let mut first_signature: Option<Signature> = None;
            // The predecessor and its signature, read when first needed.
            let mut previous: Option<(u32, Option<Signature>)> = None;
            for row in &bucket[1..] {
                let item = row.item;
                let mut own: Option<Signature> = None;
                if root_of(&mut parent, first) != root_of(&mut parent, item) {
                    let a = cached(&mut first_signature, signatures, first)?;
                    let b = cached(&mut own, signatures, item)?;
                    if similarity(&a, &b) >= threshold {
                        union(&mut parent, first, item);
                    }
                }
                if let Some((prev, prev_signature)) = previous.as_mut() {
                    if *prev != first && root_of(&mut parent, *prev) != root_of(&mut parent, item) {
                        let a = cached(prev_signature, signatures, *prev)?;
                        let b = cached(&mut own, signatures, item)?;
                        if similarity(&a, &b) >= threshold {
                            union(&mut parent, *prev, item);
                        }
                    }
                }
                previous = Some((item, own));
            }
        }
        Ok(())
    })?;

    let mut clusters: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for item in 0..count {
        let root = root_of(&mut parent, item);
        if root != item {
            clusters
                .entry(root)
                .or_insert_with(|| vec![root])
                .push(item);
        }
    }
    drop(parent);
    let mut groups = Vec::with_capacity(clusters.len());
    for (root, members) in clusters {
        let first = signatures.get(root as usize)?;
        let mut lowest = 1.0f64;
        for &m in &members[1..] {
            lowest = lowest.min(similarity(&first, &signatures.get(m as usize)?));
        }
        groups.push(Group {
            check: Check::NearDuplicate,
            detail: format!(
                "{} near-identical samples (estimated Jaccard similarity to the first >= {lowest:.2})",
                members.len()
            ),
            members,
        });
    }
    Ok(groups)
}

/// A record's signature, read once.
fn cached(
    slot: &mut Option<Signature>,
    signatures: &mut Rows<Signature>,
    item: u32,
) -> Result<Signature> {
    if slot.is_none() {
        *slot = Some(signatures.get(item as usize)?);
    }
    Ok(slot.expect("filled above"))
}

fn root_of(parent: &mut [u32], mut i: u32) -> u32 {
    while parent[i as usize] != i {
        parent[i as usize] = parent[parent[i as usize] as usize];
        i = parent[i as usize];
    }
    i
}

/// Unions by smaller root, so a group's root is its first record.
fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (root_of(parent, a), root_of(parent, b));
    if ra != rb {
        parent[ra.max(rb) as usize] = ra.min(rb);
    }
}

/// Findings of the groups (each group dropped once it is one); with `redundant`, the
/// copies `--fix` drops -> (check, the kept copy), keeping the first copy without an error.
pub fn findings(
    groups: Vec<Group>,
    numbering: &Numbering,
    names: &[String],
    headlines: &HashMap<u32, String>,
    errors: &BTreeSet<Item>,
    mut redundant: Option<&mut BTreeMap<Item, (Check, Item)>>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for group in groups {
        if let Some(redundant) = redundant.as_deref_mut() {
            if group.check != Check::ConflictingAnswer {
                let members = group.members.iter().map(|&g| numbering.item(g));
                let kept = members
                    .clone()
                    .find(|i| !errors.contains(i))
                    .unwrap_or(numbering.item(group.members[0]));
                for item in members {
                    if item != kept {
                        redundant.entry(item).or_insert((group.check, kept));
                    }
                }
            }
        }
        let (first_d, first_r) = numbering.item(group.members[0]);
        // Per dataset: its records, and the first one's global number (for its text).
        let mut parts: BTreeMap<usize, (Vec<usize>, u32)> = BTreeMap::new();
        for &g in &group.members {
            let (d, r) = numbering.item(g);
            parts.entry(d).or_insert_with(|| (Vec::new(), g)).0.push(r);
        }
        let Group { check, detail, .. } = group;
        for (d, (records, shown)) in parts {
            if d == first_d && records.len() < 2 {
                continue;
            }
            let mut detail = detail.clone();
            if d != first_d {
                detail.push_str(&format!(
                    "; the first is {} record {first_r}",
                    names[first_d]
                ));
            }
            out.push(Finding {
                check,
                severity: Severity::Warning,
                dataset: names[d].clone(),
                example: headlines.get(&shown).cloned().unwrap_or_default(),
                records,
                detail,
                dataset_index: d,
            });
        }
    }
    out
}

/// The records whose text a group's findings show: the first of each dataset part.
pub fn shown(group: &Group, numbering: &Numbering) -> Vec<u32> {
    let mut seen = BTreeSet::new();
    group
        .members
        .iter()
        .filter(|&&g| seen.insert(numbering.item(g).0))
        .copied()
        .collect()
}
