//! `--thread-worker`: one rank of the blocking TCP ring ceiling, `tcp ring (threads)`, the
//! yardstick of issue #14: built like a plain C program would be, with one blocking sender
//! thread and one blocking receiver thread over one `TCP_NODELAY` loopback connection per
//! ring neighbour, moving the buffer in `send`/`recv` calls of up to 4 MiB. Per iteration
//! the sender writes `bytes` to the ring successor while the receiver reads `bytes` from
//! the predecessor, all `n` streams at once. Prints per size its `T`, `CPU` and `RSS` lines
//! (`meter.rs`), then `DONE`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::child;
use crate::meter::SizeMeter;

/// Bytes per `send`/`recv` call.
const CHUNK: usize = 4 << 20;
/// Bound of every blocking socket call and of every wait for an iteration's threads.
const STALL: Duration = Duration::from_secs(60);

pub(crate) fn run(args: &[String]) -> Result<()> {
    let a = child::parse(args)?;
    let stdin = child::link(a.deadline);
    let listener = TcpListener::bind("127.0.0.1:0").context("bind")?;
    let next = child::ring_successor(&stdin, &a, listener.local_addr()?.port())?;
    // Every listener is bound before the parent sends PEERS, so dialling first cannot
    // deadlock: the kernel completes the handshake before our successor accepts.
    let out = dial(SocketAddr::from(([127, 0, 0, 1], next)))?;
    let inc = accept(&listener)?;
    for s in [&out, &inc] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(STALL))?;
        s.set_write_timeout(Some(STALL))?;
    }
    let sender = Pump::start("ring-send", out, |s, buf| {
        buf.chunks(CHUNK).try_for_each(|c| s.write_all(c))
    })?;
    let receiver = Pump::start("ring-recv", inc, |s, buf| {
        buf.chunks_mut(CHUNK).try_for_each(|c| s.read_exact(c))
    })?;

    for &bytes in &a.sizes {
        let mut meter = SizeMeter::start(bytes);
        let mut sbuf = vec![a.rank as u8; bytes];
        let mut rbuf = vec![0u8; bytes];
        for k in 0..a.warmup + a.iters {
            let mark = SizeMeter::begin();
            sender.give(sbuf)?;
            receiver.give(rbuf)?;
            sbuf = sender.take().context("ring send")?;
            rbuf = receiver.take().context("ring receive")?;
            if k >= a.warmup {
                meter.end(mark, k - a.warmup)?;
            }
        }
        meter.finish()?;
    }
    let out = std::io::stdout();
    writeln!(out.lock(), "DONE")?;
    out.lock().flush()?;
    child::park()
}

pub(crate) fn dial(to: SocketAddr) -> Result<TcpStream> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= until => return Err(e).context("ring connect"),
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

pub(crate) fn accept(l: &TcpListener) -> Result<TcpStream> {
    l.set_nonblocking(true)?;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < until => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("ring accept"),
        }
    }
}

/// A thread that owns one socket and, per buffer handed to it, moves the whole buffer
/// through `f` and hands it back. It ends when the `Pump` is dropped.
struct Pump {
    to: mpsc::Sender<Vec<u8>>,
    from: mpsc::Receiver<std::io::Result<Vec<u8>>>,
}

impl Pump {
    fn start(
        name: &str,
        mut sock: TcpStream,
        f: impl Fn(&mut TcpStream, &mut [u8]) -> std::io::Result<()> + Send + 'static,
    ) -> Result<Self> {
        let (to, rx) = mpsc::channel::<Vec<u8>>();
        let (tx, from) = mpsc::channel();
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Ok(mut buf) = rx.recv() {
                    let r = f(&mut sock, &mut buf).map(|()| buf);
                    if tx.send(r).is_err() {
                        return;
                    }
                }
            })
            .context("spawn ring thread")?;
        Ok(Self { to, from })
    }

    fn give(&self, buf: Vec<u8>) -> Result<()> {
        self.to
            .send(buf)
            .map_err(|_| anyhow!("ring thread is gone"))
    }

    fn take(&self) -> Result<Vec<u8>> {
        match self.from.recv_timeout(STALL * 2) {
            Ok(r) => Ok(r?),
            Err(e) => bail!("ring thread: {e}"),
        }
    }
}
