//! The shape of one head's attention, shared by the portable, AVX-512 and AMX paths.

#[derive(Clone, Copy)]
pub(crate) struct Head {
    pub(crate) l: usize,
    /// Values per token of the output; the input rows are 3× that.
    pub(crate) hidden: usize,
    pub(crate) d: usize,
    pub(crate) scale: f32,
}
