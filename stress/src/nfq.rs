//! The NFQUEUE delay daemon (`pccl-stress --delayd --queue Q:US ...`), raw netlink.
//!
//! It binds each queue in copy-meta mode (only the packet id crosses to user space), with
//! GSO packets kept whole, a 64 MiB receive buffer (`SO_RCVBUFFORCE`) and
//! `NETLINK_NO_ENOBUFS`. Every packet of queue Q is accepted US microseconds after it
//! arrived; since all packets of a queue have the same delay, verdicts go out in FIFO
//! order as one `NFQNL_MSG_VERDICT_BATCH` per queue ("accept every id up to N").
//! docs/WAN.md has the measurements that motivate each option.
//!
//! This is the only module with unsafe code besides `procs.rs`'s `kill`/`prctl`: the
//! netlink socket calls of `libc`, each with its SAFETY line.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NFQA_CFG_F_GSO: u32 = 1 << 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NF_ACCEPT: u32 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NFNETLINK_V0: u8 = 0;

/// A netlink message under construction: nlmsghdr + nfgenmsg + attributes.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, res_id: u16) -> Self {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `done`
        b.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
        b.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.push(libc::AF_UNSPEC as u8);
        b.push(NFNETLINK_V0);
        b.extend_from_slice(&res_id.to_be_bytes());
        Self(b)
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Self {
        self.0
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        while self.0.len() & 3 != 0 {
            self.0.push(0);
        }
        self
    }

    fn done(mut self) -> Vec<u8> {
        let n = self.0.len() as u32;
        self.0[..4].copy_from_slice(&n.to_ne_bytes());
        self.0
    }
}

struct Sock {
    fd: OwnedFd,
}

impl Sock {
    fn open() -> Result<Self> {
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            bail!("netlink socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sa is a valid sockaddr_nl and the length matches it.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            bail!("netlink bind: {}", std::io::Error::last_os_error());
        }
        let s = Self { fd };
        s.setopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20)?;
        s.setopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20)?;
        s.setopt(libc::SOL_NETLINK, libc::NETLINK_NO_ENOBUFS, 1)?;
        Ok(s)
    }

    fn setopt(&self, level: i32, name: i32, v: i32) -> Result<()> {
        // SAFETY: the option value is an i32 that lives for the call; length matches.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw const v).cast(),
                size_of::<i32>() as u32,
            )
        };
        if r < 0 {
            bail!(
                "setsockopt({level}, {name}): {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    fn send(&self, buf: &[u8]) -> Result<()> {
        // SAFETY: buf is a valid readable slice for its length.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if r < 0 {
            bail!("netlink send: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// One datagram into `buf`; `None` when nothing is waiting (non-blocking).
    fn recv(&self, buf: &mut [u8], block: bool) -> Result<Option<usize>> {
        let flags = if block { 0 } else { libc::MSG_DONTWAIT };
        // SAFETY: buf is a valid writable slice for its length.
        let r = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                // Only possible without NETLINK_NO_ENOBUFS; the packets stay queued.
                Some(libc::ENOBUFS) => Ok(None),
                _ => Err(e.into()),
            };
        }
        Ok(Some(r as usize))
    }

    /// Waits until readable or `limit` passes.
    fn wait(&self, limit: Option<Duration>) {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = limit.map(|d| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: p and ts live for the call; a null timeout means "block".
        unsafe {
            libc::ppoll(&raw mut p, 1, tsp, std::ptr::null());
        }
    }

    /// Sends a config message and checks the kernel's ack.
    fn config(&self, seq: u32, queue: u16, attrs: &[(u16, &[u8])]) -> Result<()> {
        let mut m = Msg::new(NFQNL_MSG_CONFIG, NLM_F_ACK, seq, queue);
        for (k, d) in attrs {
            m = m.attr(*k, d);
        }
        let attr = attrs[0].0;
        let m = m.done();
        self.send(&m)?;
        let mut buf = vec![0u8; 8192];
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            self.wait(Some(Duration::from_millis(100)));
            let Some(n) = self.recv(&mut buf, false)? else {
                continue;
            };
            for (t, _, payload) in messages(&buf[..n]) {
                if t == NLMSG_ERROR && payload.len() >= 4 {
                    let code = i32::from_ne_bytes(payload[..4].try_into().expect("4 bytes"));
                    if code != 0 {
                        bail!(
                            "queue {queue} config attribute {attr}: {}",
                            std::io::Error::from_raw_os_error(-code)
                        );
                    }
                    return Ok(());
                }
            }
        }
        bail!("queue {queue}: no ack from the kernel")
    }
}

/// (type, res_id, payload after nfgenmsg) of every message in a datagram.
fn messages(buf: &[u8]) -> Vec<(u16, u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
        if len < 16 || off + len > buf.len() {
            break;
        }
        let body = &buf[off + 16..off + len];
        if kind == NLMSG_ERROR {
            out.push((kind, 0, body));
        } else if body.len() >= 4 {
            let res = u16::from_be_bytes([body[2], body[3]]);
            out.push((kind & 0xff, res, &body[4..]));
        }
        off += (len + 3) & !3;
    }
    out
}

/// The packet id in a NFQNL_MSG_PACKET's attributes.
fn packet_id(mut attrs: &[u8]) -> Option<u32> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NFQA_PACKET_HDR && len >= 8 {
            return Some(u32::from_be_bytes(attrs[4..8].try_into().ok()?));
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    None
}

struct Queue {
    num: u16,
    delay: Duration,
    held: VecDeque<(Instant, u32)>,
    passed: u64,
}

pub(crate) fn daemon(args: &[String]) -> Result<()> {
    let mut queues: Vec<Queue> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--queue" {
            let v = it.next().context("--queue Q:US")?;
            let (q, us) = v.split_once(':').context("--queue Q:US")?;
            queues.push(Queue {
                num: q.parse()?,
                delay: Duration::from_micros(us.parse()?),
                held: VecDeque::new(),
                passed: 0,
            });
        }
    }
    if queues.is_empty() {
        bail!("--delayd needs at least one --queue Q:US");
    }
    let sock = Sock::open()?;
    let mut seq = 1;
    for q in &queues {
        sock.config(
            seq,
            q.num,
            &[(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0])],
        )?;
        let mut params = 0u32.to_be_bytes().to_vec();
        params.push(NFQNL_COPY_META);
        sock.config(seq + 1, q.num, &[(NFQA_CFG_PARAMS, &params)])?;
        let maxlen = 200_000u32.to_be_bytes();
        sock.config(seq + 2, q.num, &[(NFQA_CFG_QUEUE_MAXLEN, &maxlen)])?;
        let gso = NFQA_CFG_F_GSO.to_be_bytes();
        sock.config(
            seq + 3,
            q.num,
            &[(NFQA_CFG_MASK, &gso), (NFQA_CFG_FLAGS, &gso)],
        )?;
        seq += 4;
    }
    // Never outlive the harness.
    std::thread::spawn(|| {
        for l in std::io::stdin().lock().lines() {
            if l.is_err() {
                break;
            }
        }
        std::process::exit(0);
    });
    println!(
        "DELAYD ready: {}",
        queues
            .iter()
            .map(|q| format!("queue {} = {:?}", q.num, q.delay))
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::io::stdout().flush()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut last_report = Instant::now();
    loop {
        let now = Instant::now();
        let next_due = queues
            .iter()
            .filter_map(|q| q.held.front().map(|h| h.0))
            .min();
        let wait = next_due.map(|t| t.saturating_duration_since(now));
        if wait.is_none_or(|w| !w.is_zero()) {
            sock.wait(wait);
        }
        let arrived = Instant::now();
        while let Some(n) = sock.recv(&mut buf, false)? {
            for (kind, res, payload) in messages(&buf[..n]) {
                if kind != NFQNL_MSG_PACKET {
                    continue;
                }
                if let (Some(q), Some(id)) =
                    (queues.iter_mut().find(|q| q.num == res), packet_id(payload))
                {
                    q.held.push_back((arrived + q.delay, id));
                }
            }
        }
        let now = Instant::now();
        for q in &mut queues {
            let mut last = None;
            while let Some(&(due, id)) = q.held.front() {
                if due > now {
                    break;
                }
                last = Some(id);
                q.held.pop_front();
                q.passed += 1;
            }
            if let Some(id) = last {
                let mut hdr = NF_ACCEPT.to_be_bytes().to_vec();
                hdr.extend_from_slice(&id.to_be_bytes());
                let m = Msg::new(NFQNL_MSG_VERDICT_BATCH, 0, 0, q.num)
                    .attr(NFQA_VERDICT_HDR, &hdr)
                    .done();
                sock.send(&m)?;
            }
        }
        if last_report.elapsed() > Duration::from_secs(60) {
            last_report = Instant::now();
            let s: Vec<String> = queues
                .iter()
                .map(|q| format!("q{} passed {} held {}", q.num, q.passed, q.held.len()))
                .collect();
            eprintln!("delayd: {}", s.join(", "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let m = Msg::new(NFQNL_MSG_CONFIG, NLM_F_ACK, 7, 3)
            .attr(NFQA_CFG_CMD, &[1, 0, 0, 0])
            .attr(NFQA_CFG_PARAMS, &[0, 0, 0, 0, 1])
            .done();
        assert_eq!(m.len(), 16 + 4 + 8 + 12);
        assert_eq!(
            u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize,
            m.len()
        );
        let parsed = messages(&m);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, NFQNL_MSG_CONFIG);
        assert_eq!(parsed[0].1, 3);
        assert_eq!(packet_id(parsed[0].2), Some(0x0100_0000));
    }
}
