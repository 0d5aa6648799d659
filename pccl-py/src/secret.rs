//! The run secret at the Python edge (SECURITY.md §6): the `secret`, `secret_file` and
//! `encrypt` keywords of `Communicator` and `MasterNode`, falling back to the environment
//! variables (`PCCL_RUN_SECRET`, `PCCL_RUN_SECRET_FILE`, `PCCL_ENCRYPT`) for whatever
//! keyword is absent. Every refusal is an `InvalidArgumentError` (a `ValueError`) whose
//! message names the cause, never the secret.

use std::path::Path;

use pccl::secure::{RunSecret, encrypt_from_env};
use pyo3::PyResult;

use crate::errors::invalid_argument;

/// The secret and the encryption switch for a config. `secret` and `secret_file` are
/// exclusive; with neither, the environment's secret (if any) applies; `encrypt` `None`
/// reads `PCCL_ENCRYPT`.
pub(crate) fn security(
    secret: Option<&str>,
    secret_file: Option<&str>,
    encrypt: Option<bool>,
) -> PyResult<(Option<RunSecret>, bool)> {
    let refused = |e: &dyn std::fmt::Display| invalid_argument(format!("run secret refused: {e}"));
    let secret = match (secret, secret_file) {
        (Some(_), Some(_)) => {
            return Err(invalid_argument(
                "give either secret or secret_file, not both",
            ));
        }
        (Some(s), None) => Some(RunSecret::new(s).map_err(|e| refused(&e))?),
        (None, Some(path)) => Some(RunSecret::from_file(Path::new(path)).map_err(|e| refused(&e))?),
        (None, None) => RunSecret::from_env().map_err(|e| refused(&e))?,
    };
    let encrypt = match encrypt {
        Some(e) => e,
        None => encrypt_from_env().map_err(|e| invalid_argument(e.to_string()))?,
    };
    Ok((secret, encrypt))
}
