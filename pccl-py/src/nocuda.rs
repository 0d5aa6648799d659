//! Stand-in for `cuda` in builds without the `cuda` feature: no CUDA tensors.

fn unsupported() -> pccl::Error {
    pccl::Error::InvalidUsage("this pccl build has no CUDA support (feature `cuda`)".into())
}

pub(crate) fn is_available() -> bool {
    false
}

/// Never constructed.
#[derive(Debug)]
pub(crate) struct Pinned(std::convert::Infallible);

impl Pinned {
    pub(crate) fn new(_ordinal: i32, _len: usize) -> pccl::Result<Self> {
        Err(unsupported())
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self.0 {}
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        match self.0 {}
    }
}

pub(crate) fn download(_ordinal: i32, _src: u64, dst: &mut Pinned) -> pccl::Result<()> {
    match dst.0 {}
}

pub(crate) fn upload(_ordinal: i32, _dst: u64, _src: &[u8]) -> pccl::Result<()> {
    Err(unsupported())
}
