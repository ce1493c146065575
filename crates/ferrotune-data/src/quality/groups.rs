//! Checks over groups of records, across all datasets at once (the model trains on
//! their union): exact duplicates, near-duplicates and one prompt with different
//! answers.
//!
//! A group spanning datasets gives one finding per dataset, since a finding's record
//! indices belong to one dataset; the later datasets' findings name the first copy.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::checks::Facts;
use super::minhash::{clusters, similarity, MinHasher, Signature};
use super::text::normalize;
use super::{Check, Finding, Severity};
use crate::conversation::Sample;

pub struct Grouped {
    pub findings: Vec<Finding>,
    /// Copies `--fix` drops -> (check, the kept copy).
    pub redundant: BTreeMap<(usize, usize), (Check, (usize, usize))>,
}

type Item = (usize, usize);

/// `names`: the datasets' names; `prompt_groups`: [`prompt_groups`]' groups, with the
/// normalized final answer of each of their records in `answers`.
pub fn find(
    names: &[String],
    facts: &[Vec<Facts>],
    threshold: f64,
    errors: &BTreeSet<Item>,
    prompt_groups: &[Vec<Item>],
    answers: &HashMap<Item, String>,
) -> Grouped {
    let items: Vec<Item> = facts
        .iter()
        .enumerate()
        .flat_map(|(d, f)| (0..f.len()).map(move |r| (d, r)))
        .filter(|&(d, r)| facts[d][r].exact.is_some())
        .collect();
    let fact = |(d, r): Item| &facts[d][r];
    let mut out = Grouped {
        findings: Vec::new(),
        redundant: BTreeMap::new(),
    };

    // Exact duplicates: one representative per key goes on to the near-duplicate pass.
    let mut by_key: HashMap<u128, Vec<Item>> = HashMap::new();
    let mut representatives = Vec::new();
    for &item in &items {
        let group = by_key
            .entry(fact(item).exact.unwrap_or_default())
            .or_default();
        if group.is_empty() {
            representatives.push(item);
        }
        group.push(item);
    }
    for &rep in &representatives {
        let group = &by_key[&fact(rep).exact.unwrap_or_default()];
        if group.len() > 1 {
            record_group(
                &mut out,
                Check::ExactDuplicate,
                group,
                names,
                facts,
                errors,
                |n| {
                    format!(
                        "{n} copies of the same conversation (after normalizing case and spaces)"
                    )
                },
            );
        }
    }

    // Near duplicates among the representatives.
    let signatures: Vec<_> = representatives.iter().map(|&i| fact(i).signature).collect();
    for cluster in clusters(&signatures, threshold) {
        let members: Vec<Item> = cluster.iter().map(|&i| representatives[i]).collect();
        let first = signatures[cluster[0]].as_ref();
        let lowest = cluster[1..]
            .iter()
            .filter_map(|&i| Some(similarity(first?, signatures[i].as_ref()?)))
            .fold(1.0f64, f64::min);
        record_group(
            &mut out,
            Check::NearDuplicate,
            &members,
            names,
            facts,
            errors,
            |n| {
                format!("{n} near-identical samples (estimated Jaccard similarity to the first >= {lowest:.2})")
            },
        );
    }

    // The same prompt with different answers.
    let hasher = MinHasher::default();
    for group in prompt_groups {
        let n = distinct_answers(group, answers, &hasher, threshold);
        if n < 2 {
            continue;
        }
        out.findings.extend(split(
            Check::ConflictingAnswer,
            Severity::Warning,
            group,
            names,
            facts,
            |count| format!("the same prompt in {count} records with {n} different answers"),
        ));
    }
    out
}

/// Records that share a prompt and have more than one answer (by exact key), a group per
/// prompt in order of first appearance: their final answers tell a conflict from
/// near-duplicate answers.
pub fn prompt_groups(facts: &[Vec<Facts>]) -> Vec<Vec<Item>> {
    let mut by_prompt: HashMap<u64, Vec<(Item, u64)>> = HashMap::new();
    let mut prompts = Vec::new();
    for (d, dataset) in facts.iter().enumerate() {
        for (r, f) in dataset.iter().enumerate() {
            if let (Some(_), Some((prompt, answer))) = (f.exact, f.prompt_answer) {
                let group = by_prompt.entry(prompt).or_default();
                if group.is_empty() {
                    prompts.push(prompt);
                }
                group.push(((d, r), answer));
            }
        }
    }
    prompts
        .into_iter()
        .filter_map(|prompt| {
            let group = by_prompt.remove(&prompt)?;
            let answer = group[0].1;
            group
                .iter()
                .any(|&(_, a)| a != answer)
                .then(|| group.into_iter().map(|(item, _)| item).collect())
        })
        .collect()
}

/// A sample's final answer, normalized, as [`distinct_answers`] compares it.
pub fn final_answer(sample: &Sample) -> Option<String> {
    match sample {
        Sample::Chat(c) => c.messages.last().map(|m| normalize(&m.content)),
        Sample::Text(_) => None,
    }
}

/// How many different answers a group of records with one prompt has, counting answers
/// that are near-duplicates of each other (a word changed) as one: those records are near
/// duplicates, not a conflict.
fn distinct_answers(
    group: &[Item],
    answers: &HashMap<Item, String>,
    hasher: &MinHasher,
    threshold: f64,
) -> usize {
    let mut kinds: Vec<(&str, Option<Signature>)> = Vec::new();
    for item in group {
        let Some(text) = answers.get(item) else {
            continue;
        };
        let signature = hasher.signature(text, 3);
        let same = kinds.iter().any(|(t, s)| {
            *t == text.as_str()
                || matches!((s, &signature), (Some(a), Some(b)) if similarity(a, b) >= threshold)
        });
        if !same {
            kinds.push((text, signature));
        }
    }
    kinds.len()
}

/// Findings for a duplicate group, and its copies for `--fix`: the first copy without
/// an error is kept.
fn record_group(
    out: &mut Grouped,
    check: Check,
    group: &[Item],
    names: &[String],
    facts: &[Vec<Facts>],
    errors: &BTreeSet<Item>,
    detail: impl Fn(usize) -> String,
) {
    let kept = group
        .iter()
        .copied()
        .find(|i| !errors.contains(i))
        .unwrap_or(group[0]);
    for &item in group {
        if item != kept {
            out.redundant.entry(item).or_insert((check, kept));
        }
    }
    out.findings
        .extend(split(check, Severity::Warning, group, names, facts, detail));
}

/// One finding per dataset the group touches: the first dataset's when it holds two or
/// more members, every later one's (they repeat the first dataset's record).
fn split(
    check: Check,
    severity: Severity,
    group: &[Item],
    names: &[String],
    facts: &[Vec<Facts>],
    detail: impl Fn(usize) -> String,
) -> Vec<Finding> {
    let (first_d, first_r) = group[0];
    let mut parts: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &(d, r) in group {
        parts.entry(d).or_default().push(r);
    }
    parts
        .into_iter()
        .filter(|(d, records)| *d != first_d || records.len() > 1)
        .map(|(d, records)| {
            let mut text = detail(group.len());
            if d != first_d {
                text.push_str(&format!(
                    "; the first is {} record {first_r}",
                    names[first_d]
                ));
            }
            Finding {
                check,
                severity,
                dataset: names[d].clone(),
                example: facts[d][records[0]].headline.clone(),
                records,
                detail: text,
                dataset_index: d,
            }
        })
        .collect()
}
