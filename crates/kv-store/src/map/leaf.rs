//! A leaf: a run of cells in key order, packed back to back in one buffer.
//!
//! Packing is what keeps a small key cheap: a cell of a 16-byte key and a 100-byte value is
//! 126 bytes and costs 130 in a leaf (its end offset is 4 more), where a heap block of its own
//! cost 160 (the allocator's header and size class) plus its pointer in a tree node. The buffers
//! are kept at their exact length, so a leaf wastes no capacity either.

use super::cell;

/// Cells in key order, back to back.
#[derive(Debug, Clone, Default)]
pub(crate) struct Leaf {
    /// Where each cell ends in `bytes`: cell `i` is `bytes[ends[i - 1]..ends[i]]`.
    ends: Vec<u32>,
    bytes: Vec<u8>,
}

impl Leaf {
    /// A leaf of the one cell.
    pub fn of_one(cell: &[u8]) -> Leaf {
        let mut leaf = Leaf::default();
        leaf.insert(0, cell);
        leaf
    }

    /// Cells held.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes of the cells held.
    pub fn bytes_len(&self) -> usize {
        self.bytes.len()
    }

    fn start(&self, index: usize) -> usize {
        match index {
            0 => 0,
            _ => self.ends[index - 1] as usize,
        }
    }

    /// Cell `index`.
    pub fn cell(&self, index: usize) -> &[u8] {
        &self.bytes[self.start(index)..self.ends[index] as usize]
    }

    /// The key of cell `index`.
    pub fn key(&self, index: usize) -> &[u8] {
        cell::key(self.cell(index))
    }

    /// `Ok(index)` of the cell holding `key`, or `Err(index)` where it would go.
    pub fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            match self.key(middle).cmp(key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Ok(middle),
            }
        }
        Err(low)
    }

    /// Puts `cell` in at `index`, before the cell there.
    pub fn insert(&mut self, index: usize, cell: &[u8]) {
        let at = self.start(index);
        self.splice(at..at, cell);
        self.ends.reserve_exact(1);
        self.ends.insert(index, to_offset(at + cell.len()));
        self.shift_ends(index + 1, cell.len() as i64);
    }

    /// Replaces cell `index` with `cell`.
    pub fn replace(&mut self, index: usize, cell: &[u8]) {
        let (start, end) = (self.start(index), self.ends[index] as usize);
        self.splice(start..end, cell);
        self.ends[index] = to_offset(start + cell.len());
        self.shift_ends(index + 1, cell.len() as i64 - (end - start) as i64);
        self.fit();
    }

    /// Takes cell `index` out.
    pub fn remove(&mut self, index: usize) {
        let (start, end) = (self.start(index), self.ends[index] as usize);
        self.bytes.drain(start..end);
        self.ends.remove(index);
        self.shift_ends(index, -((end - start) as i64));
        self.fit();
    }

    /// Moves the cells from `index` on into a new leaf.
    pub fn split_off(&mut self, index: usize) -> Leaf {
        let at = self.start(index);
        let bytes = self.bytes.split_off(at);
        let ends = self
            .ends
            .split_off(index)
            .into_iter()
            .map(|end| end - to_offset(at))
            .collect();
        self.fit();
        Leaf { ends, bytes }
    }

    /// Appends the cells of `next`, whose keys all sort after this leaf's.
    pub fn append(&mut self, next: &Leaf) {
        let at = self.bytes.len();
        self.bytes.reserve_exact(next.bytes.len());
        self.bytes.extend_from_slice(&next.bytes);
        self.ends.reserve_exact(next.ends.len());
        self.ends
            .extend(next.ends.iter().map(|&end| to_offset(at + end as usize)));
    }

    /// Where to split this leaf so the halves hold about as many bytes each: between 1 and
    /// `len() - 1` (the leaf holds at least two cells).
    pub fn middle(&self) -> usize {
        debug_assert!(self.len() >= 2);
        let half = self.bytes.len() / 2;
        let index = self.ends.partition_point(|&end| (end as usize) < half);
        index.clamp(1, self.len() - 1)
    }

    /// Replaces `bytes[range]` with `cell`, moving the bytes after it: copies of whole runs
    /// (`memmove`), as a cell may be tens of MiB — element by element (`Vec::splice`), a 65
    /// MiB value took the debug build most of a second, on the async worker applying it.
    fn splice(&mut self, range: std::ops::Range<usize>, cell: &[u8]) {
        let len = self.bytes.len();
        let new_end = range.start + cell.len();
        if new_end >= range.end {
            let grows = new_end - range.end;
            self.bytes.reserve_exact(grows);
            // Any `grows` bytes make the room (one copy, no fill): all are overwritten below.
            self.bytes.extend_from_slice(&cell[..grows]);
            self.bytes.copy_within(range.end..len, new_end);
        } else {
            self.bytes.copy_within(range.end..len, new_end);
            self.bytes.truncate(len - (range.end - new_end));
        }
        self.bytes[range.start..new_end].copy_from_slice(cell);
    }

    fn shift_ends(&mut self, from: usize, by: i64) {
        for end in &mut self.ends[from..] {
            *end = to_offset((i64::from(*end) + by) as usize);
        }
    }

    /// Gives back the capacity a shrink left unused.
    fn fit(&mut self) {
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

/// An offset into a leaf's buffer. A leaf holds at most [`super::LEAF_BYTES_MAX`] bytes
/// and two cells more (one insert past the limit, or a cell larger than the limit alone), and a
/// cell is at most a log record (`kv_wal::frame::RECORD_BYTES_MAX`): see the assertion in
/// `mod.rs`.
fn to_offset(offset: usize) -> u32 {
    u32::try_from(offset).expect("a leaf is smaller than 4 GiB")
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::Leaf;

    /// `splice` does what `Vec::splice` does, for every relation of the cell's length to the
    /// range's (growing, shrinking, equal; empty ranges and cells; at the start, middle, end).
    #[test]
    fn splice_matches_vec_splice() {
        let seed = crate::map::tests::base_seed("splice_matches_vec_splice");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut leaf = Leaf::default();
        let mut model: Vec<u8> = Vec::new();
        for step in 0..2_000 {
            let start = rng.gen_range(0..=model.len());
            let end = rng.gen_range(start..=model.len().min(start + 40));
            let cell: Vec<u8> = (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect();
            leaf.splice(start..end, &cell);
            model.splice(start..end, cell.iter().copied());
            assert_eq!(leaf.bytes, model, "seed {seed}, step {step}");
        }
    }
}
