//! A small inverted index for chat search: lower-cased words → message ids. Every word of a
//! query must match; the last may be a prefix (search as you type).

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Default)]
pub struct SearchIndex {
    words: BTreeMap<String, BTreeSet<u64>>,
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

impl SearchIndex {
    pub fn add(&mut self, id: u64, text: &str) {
        for word in words(text) {
            self.words.entry(word).or_default().insert(id);
        }
    }

    pub fn remove(&mut self, id: u64, text: &str) {
        for word in words(text) {
            if let Some(ids) = self.words.get_mut(&word) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.words.remove(&word);
                }
            }
        }
    }

    /// Ids (ascending) of messages containing every word of `query`.
    pub fn search(&self, query: &str) -> Vec<u64> {
        let terms: Vec<String> = words(query).collect();
        let Some((last, whole)) = terms.split_last() else {
            return Vec::new();
        };
        let mut result: Option<BTreeSet<u64>> = None;
        for term in whole {
            let ids = self.words.get(term).cloned().unwrap_or_default();
            result = Some(match result {
                Some(r) => r.intersection(&ids).copied().collect(),
                None => ids,
            });
        }
        let prefixed: BTreeSet<u64> = self
            .words
            .range(last.clone()..)
            .take_while(|(w, _)| w.starts_with(last.as_str()))
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        let result = match result {
            Some(r) => r.intersection(&prefixed).copied().collect(),
            None => prefixed,
        };
        result.into_iter().collect()
    }
}
