//! The head's string interner: every label name, label value and environment name is stored
//! once and referred to by a `u32`.
//!
//! Reads ([`Symbols::get`]) take no lock: strings live in fixed pages of `OnceLock`s that are
//! filled once and never move. Interning a new string takes a write lock on the lookup map;
//! that happens only when a series is created. Symbols are never freed (churning label values
//! grow the table; the cost is the string plus ~40 bytes).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

const PAGE: usize = 4096;
const PAGES: usize = 1 << 16;

type Page = Box<[OnceLock<Arc<str>>]>;

/// An append-only string table.
pub(crate) struct Symbols {
    map: RwLock<hashbrown::HashMap<Arc<str>, u32, foldhash::fast::RandomState>>,
    pages: Box<[OnceLock<Page>]>,
    next: AtomicU32,
}

impl std::fmt::Debug for Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Symbols({})", self.len())
    }
}

impl Symbols {
    pub(crate) fn new() -> Self {
        Self {
            map: RwLock::new(hashbrown::HashMap::default()),
            pages: (0..PAGES).map(|_| OnceLock::new()).collect(),
            next: AtomicU32::new(0),
        }
    }

    /// Number of symbols.
    pub(crate) fn len(&self) -> usize {
        self.next.load(Ordering::Acquire) as usize
    }

    /// The string for `id`; the empty string for an unknown id.
    #[inline]
    pub(crate) fn get(&self, id: u32) -> &str {
        let id = id as usize;
        self.pages
            .get(id / PAGE)
            .and_then(|p| p.get())
            .and_then(|p| p[id % PAGE].get())
            .map_or("", |s| s)
    }

    /// The shared string for `id` (a pointer copy); the empty string for an unknown id.
    #[inline]
    pub(crate) fn get_shared(&self, id: u32) -> vigil_model::LabelStr {
        let id = id as usize;
        self.pages
            .get(id / PAGE)
            .and_then(|p| p.get())
            .and_then(|p| p[id % PAGE].get())
            .map_or_else(vigil_model::LabelStr::default, |s| s.clone().into())
    }

    /// The id of `s` if interned.
    pub(crate) fn lookup(&self, s: &str) -> Option<u32> {
        self.map.read().get(s).copied()
    }

    /// The id of `s`, interning it if new. Fails only when the table is full (2^28 strings).
    pub(crate) fn intern(&self, s: &str) -> Option<u32> {
        if let Some(id) = self.map.read().get(s) {
            return Some(*id);
        }
        let mut map = self.map.write();
        if let Some(id) = map.get(s) {
            return Some(*id);
        }
        let id = self.next.load(Ordering::Relaxed);
        if id as usize >= PAGE * PAGES {
            return None;
        }
        let arc: Arc<str> = Arc::from(s);
        let page = self.pages[id as usize / PAGE]
            .get_or_init(|| (0..PAGE).map(|_| OnceLock::new()).collect());
        let _ = page[id as usize % PAGE].set(arc.clone());
        map.insert(arc, id);
        self.next.store(id + 1, Ordering::Release);
        Some(id)
    }

    /// Approximate heap bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        let map = self.map.read();
        let strings: usize = map.keys().map(|k| k.len() + 16).sum();
        let pages = self.pages.iter().filter(|p| p.get().is_some()).count() * PAGE * 16;
        strings + map.capacity() * 24 + pages + PAGES * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_once_and_reads_back() {
        let s = Symbols::new();
        let a = s.intern("alpha").unwrap();
        let b = s.intern("beta").unwrap();
        assert_ne!(a, b);
        assert_eq!(s.intern("alpha"), Some(a));
        assert_eq!(s.get(a), "alpha");
        assert_eq!(s.get(b), "beta");
        assert_eq!(s.get(999_999), "");
        assert_eq!(s.lookup("gamma"), None);
        for i in 0..10_000 {
            let id = s.intern(&i.to_string()).unwrap();
            assert_eq!(s.get(id), i.to_string());
        }
    }
}
