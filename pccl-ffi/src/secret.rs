//! The run secret at the C edge (SECURITY.md §6): the environment variables read when a
//! communicator or master is created, and the parsing of a secret a setter is given.
//! C callers only see a result code, so every refusal is logged here at error level with
//! its reason (never the secret).

use pccl::secure::{EnvSecurity, RunSecret};

use crate::result::pcclResult_t;

/// `PCCL_RUN_SECRET` / `PCCL_RUN_SECRET_FILE` / `PCCL_ENCRYPT`; a refused value is
/// `pcclInvalidArgument`.
pub(crate) fn from_env() -> Result<EnvSecurity, pcclResult_t> {
    EnvSecurity::from_env().map_err(|e| {
        tracing::error!("pccl: {e}");
        pcclResult_t::pcclInvalidArgument
    })
}

/// A secret given to a setter; a refused one is `pcclInvalidArgument`.
pub(crate) fn parse(secret: &[u8]) -> Result<RunSecret, pcclResult_t> {
    RunSecret::new(secret).map_err(|e| {
        tracing::error!("pccl: run secret refused: {e}");
        pcclResult_t::pcclInvalidArgument
    })
}
