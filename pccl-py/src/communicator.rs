//! `Communicator`: a peer's handle on a run. Each method extracts everything it needs
//! from Python first, then runs the core call on a helper thread without the GIL
//! (`runtime::blocking`).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};

use pccl::CommunicatorConfig;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::errors::{check, invalid_argument, invalid_usage};
use crate::reduce::{AsyncReduceHandle, Plan, ReduceOpDescriptor, plan_call, plan_collective};
use crate::runtime::{KeepAlive, Owner, blocking};
use crate::shared_state::SharedState;
use crate::tensor::raw::{PyBuffers, sync_shared_state};
use crate::types::{
    QuantizationOptions, ReduceInfo, ReduceOperandDescriptor, SharedStateSyncInfo, attribute,
    quantization, reduce_op, sync_strategy,
};

/// Parses "ip:port" (or "host:port").
pub(crate) fn parse_address(address: &str) -> PyResult<SocketAddr> {
    if let Ok(a) = address.parse() {
        return Ok(a);
    }
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| {
            invalid_argument(format!(
                "invalid address '{address}', expected ip:port (e.g. 127.0.0.1:48148)"
            ))
        })
}

/// Parses a p2p bind address: "ip:port", "[ipv6]:port" or a bare ip (the default port).
fn parse_bind_address(address: &str) -> PyResult<SocketAddr> {
    if let Ok(a) = address.parse() {
        return Ok(a);
    }
    let ip = parse_ip(address, "p2p_bind_address")?;
    Ok(SocketAddr::new(ip, pccl::DEFAULT_P2P_PORT))
}

fn parse_ip(ip: &str, what: &str) -> PyResult<IpAddr> {
    ip.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| {
            invalid_argument(format!(
                "invalid {what} '{ip}', expected an ip address (e.g. 127.0.0.1)"
            ))
        })
}

#[derive(Debug)]
struct Inner {
    comm: Arc<pccl::Communicator>,
    connect_called: bool,
}

/// A peer's handle on a run (PCCL's `Communicator`).
#[pyclass(module = "pccl._pccl", frozen)]
#[derive(Debug)]
pub(crate) struct Communicator {
    config: CommunicatorConfig,
    inner: Mutex<Inner>,
    owner: Owner,
}

impl Communicator {
    fn comm(&self) -> PyResult<Arc<pccl::Communicator>> {
        self.owner.check("communicator")?;
        Ok(self.lock().comm.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs a checked collective of kind `kind` without the GIL.
fn collective_plan(
    py: Python<'_>,
    comm: Arc<pccl::Communicator>,
    plan: Plan,
    kind: pccl::Collective,
) -> PyResult<ReduceInfo> {
    let info = blocking(py, Vec::new(), move || {
        let (mut bufs, desc) = plan.buffers()?;
        let info = comm.collective_with(&mut bufs, desc, kind)?;
        match bufs.take_commit_error() {
            Some(e) => Err(e),
            None => Ok(info),
        }
    })?;
    Ok(info.into())
}

/// Starts a checked collective of kind `kind`; the handle's `wait` finishes it.
fn collective_plan_async(
    py: Python<'_>,
    comm: Arc<pccl::Communicator>,
    plan: Plan,
    kind: pccl::Collective,
    owner: Owner,
) -> PyResult<AsyncReduceHandle> {
    // Starting returns at once, except that a CUDA send tensor is copied first.
    let op = blocking(py, KeepAlive::new(), move || {
        let (bufs, desc) = plan.buffers()?;
        comm.collective_async(bufs, desc, kind)
    })?;
    Ok(AsyncReduceHandle::new(op, owner))
}

#[pymethods]
impl Communicator {
    /// A communicator for the master at `address` ("ip:port"); no I/O until `connect`.
    /// `p2p_connection_pool_size` 0 means 1.
    ///
    /// pccl extensions (keyword-only): `p2p_bind_address` is where this peer's p2p
    /// listener binds ("ip:port" or "ip"; the port is the first tried, 0 takes any free
    /// port); the default `0.0.0.0:48150` is PCCL 1.0's. `advertise_ip` is the address the
    /// other peers should dial; `None` means the address the master sees this peer from.
    /// `secret` (a string of at least 16 bytes) or `secret_file` (a file holding it) is
    /// the run secret (SECURITY.md §6), which the master and every peer must share; with
    /// neither, `PCCL_RUN_SECRET` or `PCCL_RUN_SECRET_FILE` applies if set. `encrypt`
    /// also encrypts payloads (needs a secret); `None` reads `PCCL_ENCRYPT`. A master
    /// that refuses this peer's secret makes `connect` raise `AuthenticationError`.
    /// `master_reconnect_timeout` (seconds, default 60; 0 turns it off) is how long a
    /// connected peer re-dials a lost master and waits for a restarted one to take it
    /// back; calls that need the master wait meanwhile, then raise
    /// `MasterConnectionError`.
    #[new]
    #[pyo3(signature = (
        address,
        peer_group = 0,
        p2p_connection_pool_size = 0,
        *,
        p2p_bind_address = "0.0.0.0:48150",
        advertise_ip = None,
        secret = None,
        secret_file = None,
        encrypt = None,
        master_reconnect_timeout = 60.0,
    ))]
    #[allow(clippy::too_many_arguments)] // Python keywords
    fn new(
        address: &str,
        peer_group: u32,
        p2p_connection_pool_size: usize,
        p2p_bind_address: &str,
        advertise_ip: Option<&str>,
        secret: Option<&str>,
        secret_file: Option<&str>,
        encrypt: Option<bool>,
        master_reconnect_timeout: f64,
    ) -> PyResult<Self> {
        let mut config = CommunicatorConfig::new(parse_address(address)?);
        config.peer_group = peer_group;
        config.pool_size = p2p_connection_pool_size.max(1);
        let bind = parse_bind_address(p2p_bind_address)?;
        config.bind_ip = bind.ip();
        config.p2p_port = bind.port();
        config.advertise_ip = advertise_ip
            .map(|ip| parse_ip(ip, "advertise_ip"))
            .transpose()?;
        (config.secret, config.encrypt) = crate::secret::security(secret, secret_file, encrypt)?;
        config.master_reconnect_timeout =
            std::time::Duration::try_from_secs_f64(master_reconnect_timeout).map_err(|_| {
                pyo3::exceptions::PyValueError::new_err(
                    "master_reconnect_timeout must be a number of seconds, at least 0",
                )
            })?;
        let comm = check(pccl::Communicator::new(config.clone()))?;
        Ok(Self {
            config,
            inner: Mutex::new(Inner {
                comm: Arc::new(comm),
                connect_called: false,
            }),
            owner: Owner::current(),
        })
    }

    /// Connects to the master (up to `n_attempts` tries) and returns once this peer is
    /// accepted into the run. A second call raises `InvalidUsageError`.
    #[pyo3(signature = (n_attempts = 5))]
    fn connect(&self, py: Python<'_>, n_attempts: u32) -> PyResult<()> {
        self.owner.check("communicator")?;
        let comm = {
            let mut inner = self.lock();
            if !inner.connect_called {
                inner.connect_called = true;
                let mut config = self.config.clone();
                config.connect_attempts = n_attempts.max(1);
                inner.comm = Arc::new(check(pccl::Communicator::new(config))?);
            }
            inner.comm.clone()
        };
        blocking(py, KeepAlive::new(), move || comm.connect())
    }

    /// Joint call: admits waiting peers. `UpdateTopologyFailedError` is retryable.
    fn update_topology(&self, py: Python<'_>) -> PyResult<()> {
        let comm = self.comm()?;
        blocking(py, KeepAlive::new(), move || comm.update_topology())
    }

    /// Joint call: whether peers wait to be accepted.
    fn are_peers_pending(&self, py: Python<'_>) -> PyResult<bool> {
        let comm = self.comm()?;
        blocking(py, KeepAlive::new(), move || comm.are_peers_pending())
    }

    /// Joint call: measures links and re-orders the ring for bandwidth.
    fn optimize_topology(&self, py: Python<'_>) -> PyResult<()> {
        let comm = self.comm()?;
        blocking(py, KeepAlive::new(), move || comm.optimize_topology())
    }

    /// pccl extension: what this communicator has done, as a plain dict (ops per kind,
    /// failures, retries, bytes per neighbour, recent all-reduces, recovery times, syncs,
    /// measured links; docs/ARCHITECTURE.md §13).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let comm = self.comm()?;
        let text = serde_json::to_string(&comm.stats())
            .map_err(|e| crate::errors::internal(e.to_string()))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// Reads a world-size attribute.
    fn get_attribute(&self, attribute: &Bound<'_, PyAny>) -> PyResult<usize> {
        let attr = self::attribute(attribute)?;
        let comm = self.comm()?;
        check(comm.attribute(attr))
    }

    /// Joint call of the peer group: makes every peer's shared state equal to the most
    /// popular content, moving only differing tensors; sets `shared_state.revision`.
    #[pyo3(signature = (shared_state, strategy = None))]
    fn sync_shared_state(
        &self,
        py: Python<'_>,
        shared_state: &Bound<'_, SharedState>,
        strategy: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<SharedStateSyncInfo> {
        let strategy = sync_strategy(strategy)?;
        let comm = self.comm()?;
        let (tensors, keep, revision) = shared_state
            .try_borrow()
            .map_err(|_| invalid_usage("the shared state is in use by another call"))?
            .snapshot(py, strategy != pccl::SyncStrategy::SendOnly)?;
        let (revision, info) = blocking(py, keep, move || {
            sync_shared_state(&comm, &tensors, revision, strategy)
        })?;
        shared_state
            .try_borrow_mut()
            .map_err(|_| invalid_usage("the shared state is in use by another call"))?
            .set_revision(revision);
        Ok(info.into())
    }

    /// Blocking all-reduce of `send` into `recv` (both torch tensors or both numpy arrays,
    /// contiguous, same dtype, size and device; the same tensor reduces in place).
    #[pyo3(signature = (send, recv, *, op, tag = 0, operand_descriptor = None, quantization_options = None))]
    #[allow(clippy::too_many_arguments)]
    fn all_reduce(
        &self,
        py: Python<'_>,
        send: &Bound<'_, PyAny>,
        recv: &Bound<'_, PyAny>,
        op: &Bound<'_, PyAny>,
        tag: u64,
        operand_descriptor: Option<&Bound<'_, ReduceOperandDescriptor>>,
        quantization_options: Option<&Bound<'_, QuantizationOptions>>,
    ) -> PyResult<ReduceInfo> {
        let plan = plan_call(
            send,
            recv,
            op,
            tag,
            operand_descriptor,
            quantization_options,
        )?;
        collective_plan(py, self.comm()?, plan, pccl::Collective::AllReduce)
    }

    /// Starts an all-reduce and returns a handle at once; `handle.wait()` gives the result.
    /// The tensors stay referenced until the op has finished.
    #[pyo3(signature = (send, recv, *, op, tag = 0, operand_descriptor = None, quantization_options = None))]
    #[allow(clippy::too_many_arguments)]
    fn all_reduce_async(
        &self,
        py: Python<'_>,
        send: &Bound<'_, PyAny>,
        recv: &Bound<'_, PyAny>,
        op: &Bound<'_, PyAny>,
        tag: u64,
        operand_descriptor: Option<&Bound<'_, ReduceOperandDescriptor>>,
        quantization_options: Option<&Bound<'_, QuantizationOptions>>,
    ) -> PyResult<AsyncReduceHandle> {
        let plan = plan_call(
            send,
            recv,
            op,
            tag,
            operand_descriptor,
            quantization_options,
        )?;
        let kind = pccl::Collective::AllReduce;
        collective_plan_async(py, self.comm()?, plan, kind, self.owner)
    }

    /// Runs every op, at most `max_in_flight` at once, retrying failed ones until all
    /// succeed or fewer than two peers remain. Returns the summed transfer figures.
    #[pyo3(signature = (descriptors, *, max_in_flight = 4))]
    fn all_reduce_multiple_with_retry(
        &self,
        py: Python<'_>,
        descriptors: &Bound<'_, PyList>,
        max_in_flight: usize,
    ) -> PyResult<ReduceInfo> {
        let mut plans = Vec::with_capacity(descriptors.len());
        for d in descriptors.iter() {
            let d = d.cast::<ReduceOpDescriptor>().map_err(|_| {
                invalid_argument("descriptors must be a list of ReduceOpDescriptor")
            })?;
            plans.push(d.get().plan(py)?);
        }
        // The ops run concurrently: no op may write memory another op reads or writes.
        for (i, a) in plans.iter().enumerate() {
            for (j, b) in plans.iter().enumerate() {
                if i != j && (a.recv.overlaps(&b.send) || a.recv.overlaps(&b.recv)) {
                    return Err(invalid_argument(format!(
                        "descriptor {i} writes memory that descriptor {j} uses"
                    )));
                }
            }
        }
        let comm = self.comm()?;
        let info = blocking(py, KeepAlive::new(), move || {
            let mut ops = plans
                .into_iter()
                .map(Plan::buffers)
                .collect::<pccl::Result<Vec<(PyBuffers, _)>>>()?;
            let info = comm.all_reduce_multiple_with_retry(&mut ops, max_in_flight)?;
            for (b, _) in &mut ops {
                if let Some(e) = b.take_commit_error() {
                    return Err(e);
                }
            }
            Ok(info)
        })?;
        Ok(info.into())
    }

    /// pccl extension: this peer's rank, its position in its peer group's ring of the
    /// current topology (0 .. world size - 1), the rank the collectives use. It changes
    /// when the topology does; read it again after a failed op.
    fn rank(&self) -> PyResult<usize> {
        check(self.comm()?.rank())
    }

    /// pccl extension: blocking reduce-scatter. `send` holds `world * n` elements, `recv`
    /// `n`; rank r receives block r of the sends reduced with `op` (the bits an all-reduce
    /// of the same inputs leaves there). Quantization as for `all_reduce`.
    #[pyo3(signature = (send, recv, *, op, tag = 0, quantization_options = None))]
    fn reduce_scatter(
        &self,
        py: Python<'_>,
        send: &Bound<'_, PyAny>,
        recv: &Bound<'_, PyAny>,
        op: &Bound<'_, PyAny>,
        tag: u64,
        quantization_options: Option<&Bound<'_, QuantizationOptions>>,
    ) -> PyResult<ReduceInfo> {
        let op = reduce_op(op)?;
        let quant = quantization(quantization_options);
        let plan = plan_collective(send, recv, pccl::Collective::ReduceScatter, op, tag, quant)?;
        collective_plan(py, self.comm()?, plan, pccl::Collective::ReduceScatter)
    }

    /// pccl extension: blocking all-gather. `send` holds `n` elements, `recv` `world * n`;
    /// block r of `recv` is rank r's `send`, bit for bit.
    #[pyo3(signature = (send, recv, *, tag = 0))]
    fn all_gather(
        &self,
        py: Python<'_>,
        send: &Bound<'_, PyAny>,
        recv: &Bound<'_, PyAny>,
        tag: u64,
    ) -> PyResult<ReduceInfo> {
        let kind = pccl::Collective::AllGather;
        let plan = plan_collective(send, recv, kind, pccl::ReduceOp::Sum, tag, None)?;
        collective_plan(py, self.comm()?, plan, kind)
    }

    /// pccl extension: blocking broadcast of rank `root`'s `tensor` into every peer's
    /// `tensor`, bit for bit. On failure `tensor` is untouched.
    #[pyo3(signature = (tensor, *, root, tag = 0))]
    fn broadcast(
        &self,
        py: Python<'_>,
        tensor: &Bound<'_, PyAny>,
        root: u32,
        tag: u64,
    ) -> PyResult<ReduceInfo> {
        let kind = pccl::Collective::Broadcast { root };
        let plan = plan_collective(tensor, tensor, kind, pccl::ReduceOp::Sum, tag, None)?;
        collective_plan(py, self.comm()?, plan, kind)
    }

    /// pccl extension: `reduce_scatter` started at once; `wait()` on the handle ends it.
    #[pyo3(signature = (send, recv, *, op, tag = 0, quantization_options = None))]
    fn reduce_scatter_async(
        &self,
        py: Python<'_>,
        send: &Bound<'_, PyAny>,
        recv: &Bound<'_, PyAny>,
        op: &Bound<'_, PyAny>,
        tag: u64,
        quantization_options: Option<&Bound<'_, QuantizationOptions>>,
    ) -> PyResult<AsyncReduceHandle> {
        let op = reduce_op(op)?;
        let quant = quantization(quantization_options);
        let kind = pccl::Collective::ReduceScatter;
        let plan = plan_collective(send, recv, kind, op, tag, quant)?;
        collective_plan_async(py, self.comm()?, plan, kind, self.owner)
    }

    /// pccl extension: `all_gather` started at once; `wait()` on the handle ends it.
    #[pyo3(signature = (send, recv, *, tag = 0))]
    fn all_gather_async(
        &self,
        py: Python<'_>,
        send: &Bound<'_, PyAny>,
        recv: &Bound<'_, PyAny>,
        tag: u64,
    ) -> PyResult<AsyncReduceHandle> {
        let kind = pccl::Collective::AllGather;
        let plan = plan_collective(send, recv, kind, pccl::ReduceOp::Sum, tag, None)?;
        collective_plan_async(py, self.comm()?, plan, kind, self.owner)
    }

    /// pccl extension: `broadcast` started at once; `wait()` on the handle ends it.
    #[pyo3(signature = (tensor, *, root, tag = 0))]
    fn broadcast_async(
        &self,
        py: Python<'_>,
        tensor: &Bound<'_, PyAny>,
        root: u32,
        tag: u64,
    ) -> PyResult<AsyncReduceHandle> {
        let kind = pccl::Collective::Broadcast { root };
        let plan = plan_collective(tensor, tensor, kind, pccl::ReduceOp::Sum, tag, None)?;
        collective_plan_async(py, self.comm()?, plan, kind, self.owner)
    }

    /// Leaves the run; later calls raise `InvalidUsageError`.
    fn close(&self) -> PyResult<()> {
        self.comm()?.close();
        Ok(())
    }
}
