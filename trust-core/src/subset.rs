//! Seeded stratified subsets: `--sample N` draws `N` samples that cover a vertical's groups
//! (toxic/non-toxic prompts × template, stereotype topic × group, ethics label, PII type) instead
//! of the first `N` rows, which cover one or two groups.
//!
//! The groups are `/`-separated paths ([`crate::Vertical::stratum`]), outermost level first.
//! Draws go round-robin over the first level (in a seeded order), and within each first-level
//! group round-robin over the next level, and so on down to the samples, which are taken in a
//! seeded order. So `N` samples split as evenly as the groups allow at every level (when a group
//! runs out, the others continue). The result depends only on the strata, `N` and the seed.

use std::collections::BTreeMap;

use crate::rng::{SplitMix64, derive_seed};

#[derive(Default)]
struct Node {
    /// Sample indices of this node itself (a leaf), in seeded order.
    items: Vec<usize>,
    children: BTreeMap<String, Node>,
    /// Child names in seeded round-robin order.
    order: Vec<String>,
    next_item: usize,
    next_child: usize,
}

impl Node {
    fn insert(&mut self, path: &[&str], index: usize) {
        match path.split_first() {
            None => self.items.push(index),
            Some((head, rest)) => self
                .children
                .entry((*head).to_string())
                .or_default()
                .insert(rest, index),
        }
    }

    fn prepare(&mut self, seed: u64, path: &str) {
        let mut rng = SplitMix64::new(derive_seed(seed, path));
        rng.shuffle(&mut self.items);
        self.order = self.children.keys().cloned().collect();
        rng.shuffle(&mut self.order);
        for (name, child) in self.children.iter_mut() {
            child.prepare(seed, &format!("{path}/{name}"));
        }
    }

    /// The next index of a round-robin walk, `None` when exhausted. A node's own items count
    /// as one more "child" slot, visited first.
    fn draw(&mut self) -> Option<usize> {
        let slots = self.order.len() + usize::from(!self.items.is_empty());
        for _ in 0..slots.max(1) {
            let slot = self.next_child % slots.max(1);
            self.next_child += 1;
            let own = !self.items.is_empty() && slot == 0;
            if own {
                if self.next_item < self.items.len() {
                    self.next_item += 1;
                    return Some(self.items[self.next_item - 1]);
                }
                continue;
            }
            let k = slot - usize::from(!self.items.is_empty());
            let Some(name) = self.order.get(k) else {
                continue;
            };
            if let Some(i) = self.children.get_mut(name).and_then(Node::draw) {
                return Some(i);
            }
        }
        None
    }
}

/// Indices (ascending) of a seeded stratified subset of `n` of the samples whose strata are
/// `strata` (one per sample; see the module docs). `n >= strata.len()` selects everything.
pub fn stratified_subset(strata: &[String], n: usize, seed: u64) -> Vec<usize> {
    if n >= strata.len() {
        return (0..strata.len()).collect();
    }
    let mut root = Node::default();
    for (i, s) in strata.iter().enumerate() {
        let path: Vec<&str> = if s.is_empty() {
            Vec::new()
        } else {
            s.split('/').collect()
        };
        root.insert(&path, i);
    }
    root.prepare(seed, "");
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match root.draw() {
            Some(i) => out.push(i),
            None => break,
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn counts(strata: &[String], picked: &[usize], level: usize) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for &i in picked {
            let key = strata[i]
                .split('/')
                .take(level + 1)
                .collect::<Vec<_>>()
                .join("/");
            *c.entry(key).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn splits_evenly_at_every_level_and_is_seeded() {
        // 18 types with 100 samples each (the PII prompts): 54 picks = 3 per type.
        let strata: Vec<String> = (0..1800).map(|i| format!("type{}", i / 100)).collect();
        let a = stratified_subset(&strata, 54, 7);
        assert_eq!(a.len(), 54);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "ascending, no repeats");
        let c = counts(&strata, &a, 0);
        assert_eq!(c.len(), 18);
        assert!(c.values().all(|&v| v == 3), "{c:?}");
        assert_eq!(a, stratified_subset(&strata, 54, 7));
        assert_ne!(a, stratified_subset(&strata, 54, 8));
        // Two levels: 2 labels x 3 templates, unequal sizes.
        let strata: Vec<String> = (0..600)
            .map(|i| format!("{}/t{}", if i < 500 { "toxic" } else { "nontoxic" }, i % 3))
            .collect();
        let b = stratified_subset(&strata, 48, 0);
        let top = counts(&strata, &b, 0);
        assert_eq!(top["toxic"], 24);
        assert_eq!(top["nontoxic"], 24);
        let both = counts(&strata, &b, 1);
        assert!(both.values().all(|&v| v == 8), "{both:?}");
    }

    #[test]
    fn small_groups_run_out_and_the_rest_continue() {
        let mut strata: Vec<String> = vec!["rare".into(); 2];
        strata.extend(std::iter::repeat_n("common".to_string(), 50));
        let p = stratified_subset(&strata, 10, 1);
        assert_eq!(p.len(), 10);
        let c = counts(&strata, &p, 0);
        assert_eq!(c["rare"], 2);
        assert_eq!(c["common"], 8);
        assert_eq!(stratified_subset(&strata, 100, 1).len(), 52);
        // No strata at all: a seeded uniform subset.
        let flat = vec![String::new(); 30];
        let u = stratified_subset(&flat, 5, 3);
        assert_eq!(u.len(), 5);
        assert_ne!(u, vec![0, 1, 2, 3, 4]);
    }
}
