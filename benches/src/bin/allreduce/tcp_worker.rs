//! `--tcp-worker`: one rank of the tokio TCP ring ceiling, `tcp ring (tokio)`. It streams
//! `bytes` to its ring successor over one `TCP_NODELAY` connection while receiving `bytes`
//! from its predecessor, on a tokio runtime shaped like a pccl communicator's, and prints
//! per size its `T`, `CPU` and `RSS` lines (`meter.rs`), then `DONE`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::child;
use crate::meter::SizeMeter;

pub(crate) fn run(args: &[String]) -> Result<()> {
    let a = child::parse(args)?;
    let stdin = child::link(a.deadline);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let next = child::ring_successor(&stdin, &a, port)?;

    // The same runtime shape as a pccl communicator (multi-thread, 2 workers by default).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.unwrap_or(2))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        let dial = async {
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                match TcpStream::connect(("127.0.0.1", next)).await {
                    Ok(s) => return Ok::<_, anyhow::Error>(s),
                    Err(e) if Instant::now() >= until => return Err(e.into()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        };
        let accept = async { Ok::<_, anyhow::Error>(listener.accept().await?.0) };
        let (out, inc) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::try_join!(dial, accept)
        })
        .await
        .context("ring connect timed out")??;
        out.set_nodelay(true)?;
        inc.set_nodelay(true)?;
        let mut out = Some(out);
        let mut inc = inc;
        let stdout = std::io::stdout();
        for &bytes in &a.sizes {
            let mut meter = SizeMeter::start(bytes);
            let mut sbuf = Some(vec![a.rank as u8; bytes]);
            let mut rbuf = vec![0u8; bytes];
            for k in 0..a.warmup + a.iters {
                let mark = SizeMeter::begin();
                let (mut o, s) = (out.take().expect("present"), sbuf.take().expect("present"));
                let send = tokio::spawn(async move {
                    let r = o.write_all(&s).await;
                    r.map(|()| (o, s))
                });
                inc.read_exact(&mut rbuf).await.context("ring receive")?;
                let (o, s) = send.await?.context("ring send")?;
                if k >= a.warmup {
                    meter.end(mark, k - a.warmup)?;
                }
                out = Some(o);
                sbuf = Some(s);
            }
            meter.finish()?;
        }
        writeln!(stdout.lock(), "DONE")?;
        stdout.lock().flush()?;
        Ok::<_, anyhow::Error>(())
    })?;
    child::park()
}
