//! A byte reader that never fails: fuzz inputs are decoded field by field,
//! and a short input reads as zeros. Small choices take one byte, so the
//! fuzzer's byte-level mutations map onto whole decisions.

pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn le<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        out
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.le())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.le())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.le())
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// True with probability about `n`/256.
    pub fn chance(&mut self, n: u8) -> bool {
        self.u8() < n
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        match n {
            0 | 1 => 0,
            2..=256 => usize::from(self.u8()) % n,
            _ => usize::from(self.u16()) % n,
        }
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// Up to `max` bytes, the count read first (one byte when `max` < 256).
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let want = if max < 256 {
            usize::from(self.u8())
        } else {
            usize::from(self.u16())
        };
        let n = want.min(max).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// A 64-bit value: one of `interesting`, or a raw one.
    pub fn u64_from(&mut self, interesting: &[u64]) -> u64 {
        let i = self.below(interesting.len() + 1);
        match interesting.get(i) {
            Some(&v) => v,
            None => self.u64(),
        }
    }

    /// A 32-bit value: one of `interesting`, or a raw one.
    pub fn u32_from(&mut self, interesting: &[u32]) -> u32 {
        let i = self.below(interesting.len() + 1);
        match interesting.get(i) {
            Some(&v) => v,
            None => self.u32(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_reads_zeros() {
        let mut i = Input::new(&[1, 2, 3]);
        assert_eq!(i.u16(), 0x0201);
        assert_eq!(i.u32(), 3);
        assert_eq!(i.u64(), 0);
        assert!(i.is_empty());
        assert_eq!(i.bytes(10), &[] as &[u8]);
    }
}
