//! The run secret and the encryption switch from the environment: `PCCL_RUN_SECRET` (the
//! secret itself), `PCCL_RUN_SECRET_FILE` (a file holding it) and `PCCL_ENCRYPT`, as the C
//! API, the Python API, `pccl-master` and the stress harness read them (SECURITY.md §6,
//! "The secret").
//!
//! Rules: a variable that is set is used, even if empty (an empty secret is refused as too
//! short, so a script whose `$SECRET` expanded to nothing fails instead of running
//! unauthenticated). Both secret variables set at once is an error, not a precedence
//! rule: two sources for one secret are a mistake to point out, not to guess at.
//! The parsing is pure over a lookup function, so the tests never touch the process's
//! environment.

use std::ffi::OsString;
use std::path::Path;

use super::secret::{RunSecret, SecretError};

/// The run secret itself (at least 16 bytes after trimming whitespace).
pub const SECRET_VAR: &str = "PCCL_RUN_SECRET";
/// A file holding the run secret.
pub const SECRET_FILE_VAR: &str = "PCCL_RUN_SECRET_FILE";
/// `1` / `true` / `yes` / `on`: encrypt payloads too (needs a secret); `0` / `false` /
/// `no` / `off` / empty: authenticate only.
pub const ENCRYPT_VAR: &str = "PCCL_ENCRYPT";

/// Why the environment's security settings were refused. Never contains the secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// Both `PCCL_RUN_SECRET` and `PCCL_RUN_SECRET_FILE` are set.
    #[error("both {SECRET_VAR} and {SECRET_FILE_VAR} are set; set only one")]
    BothSet,
    /// The secret (or its file) was refused.
    #[error("{var}: {source}")]
    Secret {
        var: &'static str,
        #[source]
        source: SecretError,
    },
    /// `PCCL_ENCRYPT` holds something other than a yes or a no (shown cut to 32 chars).
    #[error("{ENCRYPT_VAR}={value:?} is neither 1/true/yes/on nor 0/false/no/off")]
    BadEncrypt { value: String },
    /// Encryption asked for without a secret.
    #[error(
        "{ENCRYPT_VAR} asks for encryption, which needs a run secret ({SECRET_VAR} or {SECRET_FILE_VAR})"
    )]
    EncryptWithoutSecret,
}

/// The security settings the environment gives: what goes into
/// `CommunicatorConfig`/`MasterConfig`'s `secret` and `encrypt`.
#[derive(Clone, Debug, Default)]
pub struct EnvSecurity {
    /// `None` when neither secret variable is set.
    pub secret: Option<RunSecret>,
    /// `PCCL_ENCRYPT`, false when unset.
    pub encrypt: bool,
}

impl EnvSecurity {
    /// Reads the process's environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// Reads the settings through `lookup` (a variable's value, or `None` when unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, EnvError> {
        let secret = match (lookup(SECRET_VAR), lookup(SECRET_FILE_VAR)) {
            (Some(_), Some(_)) => return Err(EnvError::BothSet),
            (Some(s), None) => {
                Some(
                    RunSecret::new(s.as_encoded_bytes()).map_err(|source| EnvError::Secret {
                        var: SECRET_VAR,
                        source,
                    })?,
                )
            }
            (None, Some(path)) => Some(RunSecret::from_file(Path::new(&path)).map_err(
                |source| EnvError::Secret {
                    var: SECRET_FILE_VAR,
                    source,
                },
            )?),
            (None, None) => None,
        };
        let encrypt = encrypt_from_lookup(&lookup)?;
        if encrypt && secret.is_none() {
            return Err(EnvError::EncryptWithoutSecret);
        }
        Ok(Self { secret, encrypt })
    }
}

impl RunSecret {
    /// The secret `PCCL_RUN_SECRET` or `PCCL_RUN_SECRET_FILE` gives, `None` if neither is
    /// set (see [`EnvSecurity`] for the rules; `PCCL_ENCRYPT` is not read here).
    pub fn from_env() -> Result<Option<Self>, EnvError> {
        Self::from_env_lookup(|name| std::env::var_os(name))
    }

    fn from_env_lookup(
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Option<Self>, EnvError> {
        EnvSecurity::from_lookup(|name| {
            if name == ENCRYPT_VAR {
                None
            } else {
                lookup(name)
            }
        })
        .map(|s| s.secret)
    }
}

/// `PCCL_ENCRYPT` alone (false when unset), for callers that take the secret from
/// elsewhere (a keyword, a flag) and the switch from the environment; whether a secret
/// goes with it is the configuration's check.
pub fn encrypt_from_env() -> Result<bool, EnvError> {
    encrypt_from_lookup(|name| std::env::var_os(name))
}

fn encrypt_from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<bool, EnvError> {
    match lookup(ENCRYPT_VAR) {
        None => Ok(false),
        Some(v) => parse_flag(&v).ok_or_else(|| EnvError::BadEncrypt {
            value: v.to_string_lossy().chars().take(32).collect(),
        }),
    }
}

/// A yes/no value, case-insensitively; surrounding whitespace is ignored.
fn parse_flag(v: &std::ffi::OsStr) -> Option<bool> {
    let v = v.to_str()?.trim().to_ascii_lowercase();
    match v.as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "" | "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "0123456789abcdef0123456789abcdef";

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, OsString)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn nothing_set_is_plain_mode() {
        let s = EnvSecurity::from_lookup(vars(&[])).unwrap();
        assert!(s.secret.is_none() && !s.encrypt);
        let s = EnvSecurity::from_lookup(vars(&[(ENCRYPT_VAR, "0")])).unwrap();
        assert!(s.secret.is_none() && !s.encrypt);
    }

    #[test]
    fn the_secret_from_either_variable_gives_the_same_key() {
        let direct =
            EnvSecurity::from_lookup(vars(&[(SECRET_VAR, S), (ENCRYPT_VAR, "ON")])).unwrap();
        assert!(direct.encrypt);
        let path = std::env::temp_dir().join(format!("pccl-env-secret-{}", std::process::id()));
        std::fs::write(&path, format!("{S}\n")).unwrap();
        let from_file =
            EnvSecurity::from_lookup(vars(&[(SECRET_FILE_VAR, path.to_str().unwrap())]));
        std::fs::remove_file(&path).unwrap();
        let from_file = from_file.unwrap();
        assert!(!from_file.encrypt);
        let (a, b) = (direct.secret.unwrap(), from_file.secret.unwrap());
        assert_eq!(a.psk(), b.psk());
        assert_eq!(
            RunSecret::from_env_lookup(vars(&[(SECRET_VAR, S), (ENCRYPT_VAR, "bogus")]))
                .unwrap()
                .unwrap()
                .psk(),
            a.psk()
        );
    }

    #[test]
    fn refusals_name_the_variable_and_never_the_secret() {
        let both = EnvSecurity::from_lookup(vars(&[(SECRET_VAR, S), (SECRET_FILE_VAR, "/x")]));
        assert_eq!(both.unwrap_err(), EnvError::BothSet);
        // Set but empty: refused, not taken as "no secret".
        let empty = EnvSecurity::from_lookup(vars(&[(SECRET_VAR, "")])).unwrap_err();
        assert_eq!(
            empty,
            EnvError::Secret {
                var: SECRET_VAR,
                source: SecretError::TooShort { len: 0 }
            }
        );
        let short = EnvSecurity::from_lookup(vars(&[(SECRET_VAR, "hunter2hunter2")])).unwrap_err();
        let text = short.to_string();
        assert!(
            text.starts_with(SECRET_VAR) && !text.contains("hunter2"),
            "{text}"
        );
        let missing =
            EnvSecurity::from_lookup(vars(&[(SECRET_FILE_VAR, "/nonexistent/pccl")])).unwrap_err();
        assert!(
            matches!(
                missing,
                EnvError::Secret {
                    var: SECRET_FILE_VAR,
                    source: SecretError::File { .. }
                }
            ),
            "{missing}"
        );
        assert_eq!(
            EnvSecurity::from_lookup(vars(&[(SECRET_VAR, S), (ENCRYPT_VAR, "maybe")])).unwrap_err(),
            EnvError::BadEncrypt {
                value: "maybe".into()
            }
        );
        assert_eq!(
            EnvSecurity::from_lookup(vars(&[(ENCRYPT_VAR, "1")])).unwrap_err(),
            EnvError::EncryptWithoutSecret
        );
        // Read alone, the switch does not ask for a secret.
        assert_eq!(
            encrypt_from_lookup(vars(&[(ENCRYPT_VAR, " Yes ")])),
            Ok(true)
        );
        assert_eq!(encrypt_from_lookup(vars(&[])), Ok(false));
    }
}
