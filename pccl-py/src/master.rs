//! `MasterNode`: runs a master in this process (PCCL's `MasterNode`).

use std::sync::{Arc, Mutex};

use pccl::MasterConfig;
use pyo3::prelude::*;

use crate::communicator::parse_address;
use crate::errors::{check, invalid_argument};
use crate::runtime::{KeepAlive, Owner, blocking};

#[derive(Debug)]
enum State {
    Created,
    Running(Arc<pccl::MasterNode>),
    Stopped,
}

/// A master listening on `listen_address` ("ip:port"; port 0 picks a free port).
#[pyclass(module = "pccl._pccl", frozen)]
#[derive(Debug)]
pub(crate) struct MasterNode {
    config: MasterConfig,
    state: Mutex<State>,
    owner: Owner,
}

impl MasterNode {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self) -> Option<Arc<pccl::MasterNode>> {
        match &*self.lock() {
            State::Running(m) => Some(m.clone()),
            _ => None,
        }
    }
}

#[pymethods]
impl MasterNode {
    /// pccl extensions (keyword-only): `secret` (a string of at least 16 bytes) or
    /// `secret_file` (a file holding it) is the run secret (SECURITY.md §6): only peers
    /// holding the same one are admitted. With neither, `PCCL_RUN_SECRET` or
    /// `PCCL_RUN_SECRET_FILE` applies if set. `encrypt` also encrypts payloads (needs a
    /// secret); `None` reads `PCCL_ENCRYPT`. `http_address` ("ip:port") serves the
    /// dashboard, `/metrics` and `/api/run` there (off by default; README, "Watching a
    /// run"); bind loopback or a private network.
    #[new]
    #[pyo3(signature = (listen_address, *, secret = None, secret_file = None, encrypt = None, http_address = None))]
    fn new(
        listen_address: &str,
        secret: Option<&str>,
        secret_file: Option<&str>,
        encrypt: Option<bool>,
        http_address: Option<&str>,
    ) -> PyResult<Self> {
        let mut config = MasterConfig::new(parse_address(listen_address)?);
        config.http = http_address.map(parse_address).transpose()?;
        (config.secret, config.encrypt) = crate::secret::security(secret, secret_file, encrypt)?;
        check(config.validate())?;
        Ok(Self {
            config,
            state: Mutex::new(State::Created),
            owner: Owner::current(),
        })
    }

    /// Starts serving in the background and returns at once. Running twice raises
    /// `InvalidArgumentError` (as `pcclRunMaster` does).
    fn run(&self) -> PyResult<()> {
        self.owner.check("master")?;
        let mut state = self.lock();
        if !matches!(*state, State::Created) {
            return Err(invalid_argument("the master was already run"));
        }
        let m = check(pccl::MasterNode::start(self.config.clone()))?;
        *state = State::Running(Arc::new(m));
        Ok(())
    }

    /// Asks the master to stop; returns at once.
    fn interrupt(&self) -> PyResult<()> {
        self.owner.check("master")?;
        if let Some(m) = self.running() {
            m.interrupt();
        }
        Ok(())
    }

    /// Blocks (GIL released, Ctrl-C honoured) until the master has stopped. Raises
    /// `InternalError` if the master crashed (its thread panicked).
    fn await_termination(&self, py: Python<'_>) -> PyResult<()> {
        self.owner.check("master")?;
        let Some(m) = self.running() else {
            return Ok(());
        };
        // A crash keeps the node: every later call raises again.
        blocking(py, KeepAlive::new(), move || m.await_termination())?;
        *self.lock() = State::Stopped;
        Ok(())
    }

    /// Test hook: makes the running master's thread panic, so the tests can check that
    /// the crash is reported. Private (not in the stubs); not reachable from the network.
    fn _crash_for_tests(&self) -> PyResult<()> {
        self.owner.check("master")?;
        if let Some(m) = self.running() {
            m.crash_for_tests();
        }
        Ok(())
    }

    /// The address the master listens on ("ip:port", the real port once running).
    #[getter]
    fn listen_address(&self) -> String {
        match self.running() {
            Some(m) => m.local_addr().to_string(),
            None => self.config.listen.to_string(),
        }
    }

    /// Where the HTTP endpoints listen ("ip:port", the real port once running), or
    /// `None` when they are off.
    #[getter]
    fn http_address(&self) -> Option<String> {
        match self.running() {
            Some(m) => m.http_addr().map(|a| a.to_string()),
            None => self.config.http.map(|a| a.to_string()),
        }
    }

    /// Whether a run secret is set (peers must prove it).
    #[getter]
    fn authenticated(&self) -> bool {
        self.config.secret.is_some()
    }

    /// Whether payloads are encrypted too.
    #[getter]
    fn encrypted(&self) -> bool {
        self.config.encrypt
    }

    /// The port the master listens on (useful after listening on port 0).
    #[getter]
    fn port(&self) -> u16 {
        self.running()
            .map_or_else(|| self.config.listen.port(), |m| m.local_addr().port())
    }
}
