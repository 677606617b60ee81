//! Buffers that start on a 64-byte cache line. The packed kernels read whole lines
//! of a panel at a time (a zmm load, or an AMX tile row); from a `Vec`, whose start
//! is only 16-byte aligned for large blocks, every such read straddles two lines.
//! Measured on this machine (the AMX bf16 block on L1-resident data, one thread):
//! 0.73–0.86 TFLOP/s with tiles 16 or 32 bytes off a line, 1.8–2.3 aligned.

use std::marker::PhantomData;

/// Numbers for which all-zero bytes are a valid value (so a zeroed line is).
pub trait Plain: Copy + Send + Sync + 'static {}
impl Plain for u8 {}
impl Plain for i8 {}
impl Plain for u16 {}
impl Plain for i32 {}
impl Plain for u32 {}
impl Plain for f32 {}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// `len` values of `T`, starting on a cache line.
pub struct AlignedVec<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _values: PhantomData<T>,
}

impl<T: Plain> AlignedVec<T> {
    pub fn zeroed(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        Self {
            lines: vec![Line([0; 64]); bytes.div_ceil(64)],
            len,
            _values: PhantomData,
        }
    }

    /// Makes this `len` values long, keeping its lines when they are enough: their
    /// values are then whatever was there before, for a caller that overwrites them.
    pub fn reuse(&mut self, len: usize) {
        let lines = (len * std::mem::size_of::<T>()).div_ceil(64);
        if lines > self.lines.len() {
            *self = Self::zeroed(len);
        } else {
            self.len = len;
        }
    }
}

impl<T: Plain> Default for AlignedVec<T> {
    fn default() -> Self {
        Self::zeroed(0)
    }
}

impl<T: Plain> std::ops::Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lines hold at least len·size_of::<T>() bytes, aligned to 64
        // (≥ T's alignment), and every byte pattern that was written is a valid T
        // (zeros, or values of T).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and the borrow of self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

impl<T: Plain + std::fmt::Debug> std::fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedVec(len {})", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_holds_its_values() {
        let mut v = AlignedVec::<u16>::zeroed(1000);
        v.fill(7);
        assert_eq!(v.as_ptr() as usize % 64, 0);
        assert_eq!(v.len(), 1000);
        assert!(v.iter().all(|&x| x == 7));
        v[999] = 3;
        assert_eq!(v[999], 3);
        assert!(AlignedVec::<f32>::zeroed(0).is_empty());
        v.reuse(10);
        assert_eq!((v.len(), v[9]), (10, 7));
        v.reuse(5000);
        assert_eq!(v.len(), 5000);
        assert_eq!(v.as_ptr() as usize % 64, 0);
    }
}
