//! A hashed timer wheel: deadlines fall into slots of `tick_ms`; firing a tick costs the
//! entries in its slot, independent of how many agents there are. Entries more than one turn
//! ahead stay in their slot until their turn.

/// The wheel.
#[derive(Debug)]
pub struct Wheel {
    tick_ms: i64,
    origin: i64,
    slots: Vec<Vec<(i64, u32)>>,
    spare: Vec<(i64, u32)>,
    /// Next tick to fire.
    cursor: i64,
    len: usize,
}

const SLOTS: usize = 4096;

impl Wheel {
    /// A wheel whose tick 0 is `now`.
    pub fn new(tick_ms: i64, now: i64) -> Self {
        Self {
            tick_ms,
            origin: now,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            spare: Vec::new(),
            cursor: 1,
            len: 0,
        }
    }

    /// The first tick at or after time `t`.
    pub fn tick_of(&self, t: i64) -> i64 {
        let d = t.saturating_sub(self.origin);
        let q = d.div_euclid(self.tick_ms);
        if d.rem_euclid(self.tick_ms) == 0 {
            q
        } else {
            q + 1
        }
    }

    /// The time of tick `k`.
    pub fn time_of(&self, k: i64) -> i64 {
        self.origin + k * self.tick_ms
    }

    /// Entries held (live and superseded).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the wheel is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `id` at tick `k` (a past tick fires at the next `next_due`).
    pub fn insert(&mut self, k: i64, id: u32) {
        let k = k.max(self.cursor);
        self.slots[(k as usize) & (SLOTS - 1)].push((k, id));
        self.len += 1;
    }

    /// Fires the next tick due by `now`: fills `out` with its entries and returns the tick, or
    /// `None` once every tick up to `now` has fired.
    pub fn next_due(&mut self, now: i64, out: &mut Vec<u32>) -> Option<i64> {
        let last = (now - self.origin).div_euclid(self.tick_ms);
        while self.cursor <= last {
            let k = self.cursor;
            self.cursor += 1;
            let idx = (k as usize) & (SLOTS - 1);
            if self.slots[idx].is_empty() {
                continue;
            }
            let mut keep = std::mem::take(&mut self.spare);
            for e in self.slots[idx].drain(..) {
                if e.0 <= k {
                    out.push(e.1);
                } else {
                    keep.push(e);
                }
            }
            self.len -= out.len();
            self.spare = std::mem::replace(&mut self.slots[idx], keep);
            if !out.is_empty() {
                return Some(k);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_and_keeps_far_entries() {
        let mut w = Wheel::new(100, 1_000);
        w.insert(w.tick_of(1_250), 1); // tick 3
        w.insert(w.tick_of(1_000 + 100 * (SLOTS as i64 + 3)), 2); // same slot, next turn
        w.insert(w.tick_of(1_100), 3);
        let mut out = Vec::new();
        let mut fired = Vec::new();
        while let Some(k) = w.next_due(1_000 + 100 * 10, &mut out) {
            fired.push((k, out.clone()));
            out.clear();
        }
        assert_eq!(fired, vec![(1, vec![3]), (3, vec![1])]);
        assert_eq!(w.len(), 1);
        while let Some(k) = w.next_due(1_000 + 100 * (SLOTS as i64 + 3), &mut out) {
            fired.push((k, out.clone()));
            out.clear();
        }
        assert_eq!(fired.last(), Some(&(SLOTS as i64 + 3, vec![2])));
        assert!(w.is_empty());
    }
}
