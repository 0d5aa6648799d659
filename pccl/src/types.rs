//! Plain value types shared by every layer: identities, data types, reduce ops and the
//! descriptors a collective is called with. Numeric values match PCCL 1.0's C enums.

use std::fmt;

/// A peer's 128-bit identity, random per communicator.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerId(pub [u8; 16]);

impl PeerId {
    /// A fresh random identity.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// All 16 bytes in hex (32 digits), for tables and metric labels.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for PeerId {
    /// The first 4 bytes in hex: enough to tell peers apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Element types a collective can reduce (PCCL's `pcclDataType_t` numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DataType {
    U8 = 0,
    I8 = 1,
    I16 = 2,
    U16 = 3,
    U32 = 4,
    I32 = 5,
    U64 = 6,
    I64 = 7,
    F16 = 8,
    Bf16 = 9,
    F32 = 10,
    F64 = 11,
}

impl DataType {
    /// Every data type, in numeric order.
    pub const ALL: [Self; 12] = [
        Self::U8,
        Self::I8,
        Self::I16,
        Self::U16,
        Self::U32,
        Self::I32,
        Self::U64,
        Self::I64,
        Self::F16,
        Self::Bf16,
        Self::F32,
        Self::F64,
    ];

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 | Self::F16 | Self::Bf16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
        }
    }

    /// Whether the type is a floating-point type.
    pub const fn is_float(self) -> bool {
        matches!(self, Self::F16 | Self::Bf16 | Self::F32 | Self::F64)
    }

    /// The type with this PCCL number, if any.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }
}

/// Reduction operations (PCCL's `pcclRedOp_t` numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReduceOp {
    Sum = 0,
    /// Sum divided by the number of peers that took part (integer division for integers).
    Avg = 1,
    Prod = 2,
    Max = 3,
    Min = 4,
}

impl ReduceOp {
    /// Every op, in numeric order.
    pub const ALL: [Self; 5] = [Self::Sum, Self::Avg, Self::Prod, Self::Max, Self::Min];

    /// The op with this PCCL number, if any.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }
}

/// Attributes readable from a communicator (PCCL's `pcclAttribute_t` numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Attribute {
    /// Accepted peers in the whole run.
    GlobalWorldSize = 1,
    /// Accepted peers in this communicator's peer group.
    PeerGroupWorldSize = 2,
    /// Number of distinct peer groups among accepted peers.
    NumDistinctPeerGroups = 3,
    /// Size of the largest peer group.
    LargestPeerGroupWorldSize = 4,
}

/// Quantization algorithms for the all-reduce payload (PCCL's `pcclQuantizationAlgorithm_t`
/// numbering). See the `quant` module for the exact definitions and error bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum QuantizationAlgorithm {
    /// No quantization: the payload travels in the source type.
    #[default]
    None = 0,
    /// Per-slice affine map of `[min, max]` onto the target's range.
    MinMax = 1,
    /// Per-slice scale with a zero point, so that 0.0 is represented exactly.
    ZeroPointScale = 2,
}

impl QuantizationAlgorithm {
    /// Every algorithm, in numeric order.
    pub const ALL: [Self; 3] = [Self::None, Self::MinMax, Self::ZeroPointScale];

    /// The algorithm with this PCCL number, if any.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }
}

/// How an all-reduce quantizes its payload on the wire (PCCL's `pcclQuantizationOptions_t`):
/// the algorithm and the quantized data type (u8, i8, u16, f16 or bf16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quantization {
    pub algorithm: QuantizationAlgorithm,
    /// The type each element travels as.
    pub dtype: DataType,
}

impl Quantization {
    pub fn new(algorithm: QuantizationAlgorithm, dtype: DataType) -> Self {
        Self { algorithm, dtype }
    }
}

/// What one all-reduce does: element count, type, op and the tag that names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReduceDescriptor {
    pub count: usize,
    pub dtype: DataType,
    pub op: ReduceOp,
    /// Distinguishes concurrent ops; peers must use the same tag for the same op.
    pub tag: u64,
    /// Payload quantization; `None` (the default) sends the source type unchanged. Every
    /// peer must use the same setting. Checked before the op starts (`InvalidArgument`).
    pub quantization: Option<Quantization>,
}

impl ReduceDescriptor {
    /// A descriptor with tag 0.
    pub fn new(count: usize, dtype: DataType, op: ReduceOp) -> Self {
        Self {
            count,
            dtype,
            op,
            tag: 0,
            quantization: None,
        }
    }

    /// The same descriptor with this payload quantization. An algorithm of
    /// [`QuantizationAlgorithm::None`] means no quantization.
    pub fn with_quantization(mut self, q: Quantization) -> Self {
        self.quantization = (q.algorithm != QuantizationAlgorithm::None).then_some(q);
        self
    }

    /// The same descriptor with another tag.
    pub fn with_tag(mut self, tag: u64) -> Self {
        self.tag = tag;
        self
    }

    /// Buffer size in bytes (saturating: validation rejects overflow separately).
    pub fn byte_len(&self) -> usize {
        self.count.saturating_mul(self.dtype.size())
    }
}

/// Which collective an op is (docs/ARCHITECTURE.md §5.1). Every data frame carries it, so
/// peers that call different collectives with one tag fail with `Mismatch` everywhere.
///
/// Ranks are positions in the ring of the group's current topology
/// ([`Topology::rank`]). For an op of `count` elements, the buffer is cut into one chunk
/// per rank (equal chunks when `count` is a multiple of the world size; otherwise the
/// first `count % world` chunks are one element larger).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Collective {
    /// Every rank ends with the reduction of every rank's `count` elements.
    #[default]
    AllReduce,
    /// Every rank gives `count` elements; rank `r` ends with the reduction of chunk `r`.
    ReduceScatter,
    /// Rank `r` gives chunk `r` of a `count`-element buffer; every rank ends with all of it.
    AllGather,
    /// The rank at ring position `root` gives `count` elements; every rank ends with them.
    Broadcast { root: u32 },
}

impl Collective {
    /// The wire code of the kind (docs/PROTOCOL.md §4).
    pub const fn code(self) -> u8 {
        match self {
            Self::AllReduce => 0,
            Self::ReduceScatter => 1,
            Self::AllGather => 2,
            Self::Broadcast { .. } => 3,
        }
    }

    /// The root rank of a broadcast, 0 for the other kinds.
    pub const fn root(self) -> u32 {
        match self {
            Self::Broadcast { root } => root,
            _ => 0,
        }
    }

    /// The kind with this wire code and root; `None` for an unknown code or a root set on
    /// a kind that has none.
    pub fn from_wire(code: u8, root: u32) -> Option<Self> {
        let kind = match code {
            0 => Self::AllReduce,
            1 => Self::ReduceScatter,
            2 => Self::AllGather,
            3 => return Some(Self::Broadcast { root }),
            _ => return None,
        };
        (root == 0).then_some(kind)
    }

    /// Whether the kind reduces (and so takes a reduce op and quantization).
    pub const fn reduces(self) -> bool {
        matches!(self, Self::AllReduce | Self::ReduceScatter)
    }

    /// A name for messages and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::AllReduce => "all-reduce",
            Self::ReduceScatter => "reduce-scatter",
            Self::AllGather => "all-gather",
            Self::Broadcast { .. } => "broadcast",
        }
    }
}

/// What a finished all-reduce reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReduceInfo {
    /// Peers of the group that took part.
    pub local_world_size: u32,
    /// Payload bytes this peer sent.
    pub tx_bytes: u64,
    /// Payload bytes this peer received.
    pub rx_bytes: u64,
}

/// The accepted peers as a peer sees them: the ring order and per-group epochs.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Topology {
    /// Accepted peers in ring order.
    pub ring: Vec<PeerEntry>,
    /// Per peer group, the epoch of its current membership (changes whenever it changes).
    pub group_epochs: Vec<(u32, u64)>,
}

/// One accepted peer: identity, group, the address its p2p listener is reachable at and,
/// in an authenticated run, the static public key it proved to the master (SECURITY.md §6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    pub id: PeerId,
    pub group: u32,
    pub p2p_addr: std::net::SocketAddr,
    /// The peer's X25519 static public key for this run; all zeros without a run secret.
    pub static_key: [u8; 32],
}

impl Topology {
    /// The epoch of `group`'s membership, if the group has members.
    pub fn group_epoch(&self, group: u32) -> Option<u64> {
        self.group_epochs
            .iter()
            .find(|(g, _)| *g == group)
            .map(|(_, e)| *e)
    }

    /// Members of `group` in ring order.
    pub fn group_ring(&self, group: u32) -> Vec<&PeerEntry> {
        self.ring.iter().filter(|p| p.group == group).collect()
    }

    /// `id`'s rank in `group`: its position in the group's ring (the rank every
    /// collective uses), if it is a member.
    pub fn rank(&self, id: PeerId, group: u32) -> Option<usize> {
        self.group_ring(group).iter().position(|p| p.id == id)
    }

    /// Whether `id` is accepted.
    pub fn contains(&self, id: PeerId) -> bool {
        self.ring.iter().any(|p| p.id == id)
    }

    /// The value of a world-size attribute, seen from a peer of `group`.
    pub fn attribute(&self, attr: Attribute, group: u32) -> usize {
        let mut sizes: Vec<(u32, usize)> = Vec::new();
        for p in &self.ring {
            match sizes.iter_mut().find(|(g, _)| *g == p.group) {
                Some((_, n)) => *n += 1,
                None => sizes.push((p.group, 1)),
            }
        }
        match attr {
            Attribute::GlobalWorldSize => self.ring.len(),
            Attribute::PeerGroupWorldSize => sizes
                .iter()
                .find(|(g, _)| *g == group)
                .map_or(0, |(_, n)| *n),
            Attribute::NumDistinctPeerGroups => sizes.len(),
            Attribute::LargestPeerGroupWorldSize => {
                sizes.iter().map(|(_, n)| *n).max().unwrap_or(0)
            }
        }
    }
}

/// Where a tensor's memory lives (PCCL's `pcclDeviceType_t` numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Device {
    #[default]
    Cpu = 0,
    /// CUDA device memory: the caller stages it through host memory (see pccl-py).
    Cuda = 1,
}

/// How a peer takes part in a shared-state sync (PCCL's numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum SyncStrategy {
    /// Vote with our content; receive what differs from the popular content.
    #[default]
    EnforcePopular = 0,
    /// Never send, do not vote; receive the popular content.
    ReceiveOnly = 1,
    /// Never receive; our content must win, else the sync fails here and nothing is written.
    SendOnly = 2,
}

impl SyncStrategy {
    /// The strategy with this PCCL number, if any.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::EnforcePopular),
            1 => Some(Self::ReceiveOnly),
            2 => Some(Self::SendOnly),
            _ => None,
        }
    }
}

/// What a shared-state sync moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncInfo {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}
