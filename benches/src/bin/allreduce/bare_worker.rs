//! `--bare-worker`: one rank of `bare all-reduce`, a ring all-reduce written the way a
//! careful C programmer would write it for this one case: f32 sum, a fixed ring of
//! trusted peers, one `TCP_NODELAY` loopback connection per neighbour, one blocking
//! sender and one blocking receiver thread, no frame headers, no fault tolerance and no
//! allocation per op, with pccl's own reduction and result-store kernels
//! (`pccl::kernels`). In the reduce-scatter the receiver reads each segment into a
//! scratch segment, adds the local input to it and stores it into the result buffer; in
//! the all-gather it reads straight into the result buffer. The sender forwards each
//! segment as soon as the receiver has finished it.
//!
//! With `--checksums` (the `bare + crc32` row) every segment carries a CRC32 trailer
//! placed as pccl places its frames' checksums (docs/PROTOCOL.md §4): the sender
//! computes it for the input it sends first, the receiver checks every segment while it
//! is hot and computes the reduced segment's before storing it, and an all-gather
//! segment's checksum travels on unchanged.
//!
//! Its figures are what a ring all-reduce over TCP reaches on this machine with nothing
//! but the bytes, the additions (and the checksums): the gap between it and
//! `tcp ring (threads)` is the price of reducing and of touching the user's buffers, the
//! gap between pccl and it the price of pccl's runtime, framing and fault tolerance.
//!
//! Schedule (rank `r` of `n`, the buffer cut into `n` chunks): in step `t` of
//! `0..2(n-1)` the rank sends chunk `(r - t) mod n` and receives chunk `(r - t - 1) mod
//! n`; steps below `n - 1` are the reduce-scatter, the rest the all-gather. What is sent
//! in step `t > 0` is what was received in step `t - 1`.

use std::io::{IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use pccl::{DataType, ReduceOp};

use crate::child;
use crate::meter::SizeMeter;
use crate::thread_worker::{accept, dial};
use crate::worker::{check_result, inputs};

/// Bytes per segment, the pipeline's grain and the largest `send`/`recv` call: 4 MiB,
/// as in the ceiling (1 MiB was 10-15 % slower at world 2 here).
const SEGMENT: usize = 4 << 20;
/// Bound of every blocking socket call and of every wait for the other thread.
const STALL: Duration = Duration::from_secs(60);

/// Which elements each step sends and receives.
#[derive(Clone, Copy)]
struct Plan {
    n: usize,
    rank: usize,
    elems: usize,
    checksums: bool,
}

impl Plan {
    fn steps(self) -> usize {
        2 * (self.n - 1)
    }

    fn chunk(self, c: usize) -> Range<usize> {
        c * self.elems / self.n..(c + 1) * self.elems / self.n
    }

    fn sent(self, t: usize) -> Range<usize> {
        self.chunk((self.rank + 2 * self.n - t) % self.n)
    }

    fn received(self, t: usize) -> Range<usize> {
        self.chunk((self.rank + 2 * self.n - t - 1) % self.n)
    }

    fn reduces(self, t: usize) -> bool {
        t < self.n - 1
    }

    /// Segments the receiver finishes in one op.
    fn units(self) -> usize {
        (0..self.steps())
            .map(|t| segments(self.received(t)).count())
            .sum()
    }
}

/// The segments of `r`, in order.
fn segments(r: Range<usize>) -> impl Iterator<Item = Range<usize>> {
    let per = SEGMENT / 4;
    (r.start..r.end)
        .step_by(per)
        .map(move |s| s..(s + per).min(r.end))
}

fn crc(data: &[f32]) -> u32 {
    crc32fast::hash(bytemuck::cast_slice(data))
}

/// How many segments the receiver has finished in this op (and, with checksums, the
/// checksum each is sent on with), and the wake-up for the sender waiting on it.
struct Progress {
    done: Mutex<usize>,
    cv: Condvar,
    crcs: Vec<AtomicU32>,
}

impl Progress {
    fn new(units: usize) -> Self {
        Self {
            done: Mutex::new(0),
            cv: Condvar::new(),
            crcs: (0..units).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Before an op (the sender has finished the last one).
    fn reset(&self) {
        *self.done.lock().expect("progress lock") = 0;
    }

    /// Segment `unit` is finished; `crc` is the checksum it travels on with.
    fn advance(&self, unit: usize, crc: u32) {
        // Relaxed: the lock below orders it before the sender's read.
        self.crcs[unit].store(crc, Ordering::Relaxed);
        *self.done.lock().expect("progress lock") += 1;
        self.cv.notify_one();
    }

    /// Waits until segment `unit` is finished and returns its checksum.
    fn wait_for(&self, unit: usize) -> Result<u32> {
        let done = self.done.lock().expect("progress lock");
        let (_done, timeout) = self
            .cv
            .wait_timeout_while(done, STALL, |d| *d <= unit)
            .expect("progress lock");
        if timeout.timed_out() {
            bail!("receiver stalled");
        }
        Ok(self.crcs[unit].load(Ordering::Relaxed))
    }
}

/// One op as the sender thread sees it.
struct Job {
    input: *const f32,
    out: *const f32,
    plan: Plan,
    progress: Arc<Progress>,
}

// SAFETY: the pointers are only read through while the op that sent the job waits for
// the job's reply (`run`), so the buffers outlive every use.
unsafe impl Send for Job {}

/// The persistent sender thread.
struct Sender {
    jobs: mpsc::Sender<Job>,
    replies: mpsc::Receiver<Result<()>>,
}

impl Sender {
    fn start(mut sock: TcpStream) -> Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, replies) = mpsc::channel();
        thread::Builder::new()
            .name("bare-send".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    if tx.send(send_op(&mut sock, &job)).is_err() {
                        return;
                    }
                }
            })
            .context("spawn sender")?;
        Ok(Self { jobs, replies })
    }
}

/// The sender's part of one op.
fn send_op(sock: &mut TcpStream, job: &Job) -> Result<()> {
    let plan = job.plan;
    // The receiver's unit that step `t`'s first segment was received as, in step t - 1.
    let mut unit = 0;
    for t in 0..plan.steps() {
        let from = if t == 0 { job.input } else { job.out };
        for (k, seg) in segments(plan.sent(t)).enumerate() {
            // What step t > 0 sends, the receiver finished in step t - 1.
            let carried = if t > 0 {
                job.progress.wait_for(unit + k)?
            } else {
                0
            };
            // SAFETY: `seg` lies inside the buffers (`Plan::chunk` stays below `elems`).
            // Step 0 reads the input, which nobody writes during the op. Later steps read
            // a segment of `out` the receiver finished writing (`wait_for`, whose lock
            // orders its writes before this read) and will not write again until the
            // ring has carried these very bytes to the chunk's owner and back, which
            // needs this `write_all` to have copied them out first.
            let data = unsafe { std::slice::from_raw_parts(from.add(seg.start), seg.len()) };
            let trailer = match (plan.checksums, t) {
                (false, _) => None,
                (true, 0) => Some(crc(data)),
                (true, _) => Some(carried),
            };
            write_segment(sock, bytemuck::cast_slice(data), trailer)?;
        }
        if t > 0 {
            unit += segments(plan.received(t - 1)).count();
        }
    }
    Ok(())
}

/// Writes a segment and its checksum trailer, if any, in one `writev` (two writes would
/// cost the receiver a wake-up for the 4-byte one).
fn write_segment(sock: &mut TcpStream, data: &[u8], trailer: Option<u32>) -> Result<()> {
    let sum = trailer.unwrap_or(0).to_le_bytes();
    let tail: &[u8] = if trailer.is_some() { &sum } else { &[] };
    let mut parts = [IoSlice::new(data), IoSlice::new(tail)];
    let mut parts = &mut parts[..];
    while !parts.is_empty() {
        let n = sock.write_vectored(parts)?;
        ensure!(n > 0, "ring successor closed");
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// The receiver's part of one op, on the calling thread.
fn receive_op(
    sock: &mut TcpStream,
    plan: Plan,
    input: &[f32],
    out: *mut f32,
    scratch: &mut [f32],
    progress: &Progress,
) -> Result<()> {
    let mut unit = 0;
    let mut trailer = [0u8; 4];
    for t in 0..plan.steps() {
        for seg in segments(plan.received(t)) {
            // SAFETY: `seg` lies inside `out`, and the sender reads no part of it until
            // `advance` below publishes it (see `send_op`).
            let dst = unsafe { std::slice::from_raw_parts_mut(out.add(seg.start), seg.len()) };
            let landing: &mut [f32] = if plan.reduces(t) {
                &mut scratch[..seg.len()]
            } else {
                dst
            };
            sock.read_exact(bytemuck::cast_slice_mut(landing))?;
            let mut sum = 0;
            if plan.checksums {
                sock.read_exact(&mut trailer)?;
                sum = u32::from_le_bytes(trailer);
                ensure!(crc(landing) == sum, "segment checksum mismatch");
            }
            if plan.reduces(t) {
                let tmp = landing;
                let local = bytemuck::cast_slice(&input[seg.clone()]);
                pccl::kernels::reduce_into(
                    ReduceOp::Sum,
                    DataType::F32,
                    bytemuck::cast_slice_mut(tmp),
                    local,
                );
                if plan.checksums {
                    sum = crc(tmp);
                }
                // SAFETY: as for `dst` above (`landing` borrowed the scratch instead).
                let dst = unsafe { std::slice::from_raw_parts_mut(out.add(seg.start), seg.len()) };
                pccl::kernels::store_results(
                    bytemuck::cast_slice_mut(dst),
                    bytemuck::cast_slice(tmp),
                    true,
                );
            }
            progress.advance(unit, sum);
            unit += 1;
        }
    }
    Ok(())
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let (checksums, args) = match args.split_first() {
        Some((flag, rest)) if flag == "--checksums" => (true, rest),
        _ => (false, args),
    };
    let a = child::parse(args)?;
    let stdin = child::link(a.deadline);
    let listener = TcpListener::bind("127.0.0.1:0").context("bind")?;
    let next = child::ring_successor(&stdin, &a, listener.local_addr()?.port())?;
    // As in `thread_worker.rs`: every listener is bound before PEERS, so dial first.
    let out_sock = dial(SocketAddr::from(([127, 0, 0, 1], next)))?;
    let mut in_sock = accept(&listener)?;
    for s in [&out_sock, &in_sock] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(STALL))?;
        s.set_write_timeout(Some(STALL))?;
    }
    let sender = Sender::start(out_sock)?;
    let mut scratch = vec![0f32; SEGMENT / 4];
    let stdout = std::io::stdout();

    for &bytes in &a.sizes {
        let mut meter = SizeMeter::start(bytes);
        let input = inputs(a.rank, bytes / 4);
        let mut out = vec![0f32; bytes / 4];
        let plan = Plan {
            n: a.world,
            rank: a.rank,
            elems: input.len(),
            checksums,
        };
        let progress = Arc::new(Progress::new(plan.units()));
        for k in 0..a.warmup + a.iters {
            let mark = SizeMeter::begin();
            progress.reset();
            // One raw pointer for both threads (`as_mut_ptr` makes no reference to `out`).
            let out_ptr = out.as_mut_ptr();
            let job = Job {
                input: input.as_ptr(),
                out: out_ptr,
                plan,
                progress: progress.clone(),
            };
            sender
                .jobs
                .send(job)
                .map_err(|_| anyhow!("sender thread is gone"))?;
            let received = receive_op(&mut in_sock, plan, &input, out_ptr, &mut scratch, &progress);
            // Wait for the sender before anything else: it reads `input` and `out`.
            let sent = sender
                .replies
                .recv_timeout(STALL * 2)
                .map_err(|e| anyhow!("sender thread: {e}"))?;
            received.context("bare ring receive")?;
            sent.context("bare ring send")?;
            if k >= a.warmup {
                meter.end(mark, k - a.warmup)?;
            }
        }
        let crc = check_result(a.world, bytes, &out)?;
        writeln!(stdout.lock(), "CRC {bytes} {crc:08x}")?;
        meter.finish()?;
    }
    writeln!(stdout.lock(), "DONE")?;
    stdout.lock().flush()?;
    child::park()
}
