//! `--api ADDR:PORT` and `--api-token FILE`: the HTTP JSON API (src/daemon/api.rs) and the
//! bearer token its clients must send.
//!
//! The flags are checked together in [`super::Args::validate_with`] (no file access); the
//! token file is read by [`super::Args::validate`], before the daemon detaches, so a missing
//! or short token ends the program with exit code 2 and one line naming `--api-token`.

use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{ConfigError, Raw};

/// A token file larger than this is refused (a token is a line; this keeps
/// `--api-token /dev/zero` from eating the memory).
pub const MAX_TOKEN_FILE: u64 = 4096;

/// `--api` with its token.
#[derive(Clone, Debug)]
pub struct ApiSpec {
    pub addr: SocketAddr,
    pub token_file: PathBuf,
    /// Read by [`super::Args::validate`]; `None` from [`super::Args::validate_with`], which
    /// reads no file (the daemon then reads `token_file` at start-up).
    pub token: Option<ApiToken>,
}

/// The bearer token: 16 or more visible ASCII characters (no spaces), the file's content
/// with surrounding whitespace trimmed. Its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken({} characters)", self.0.len())
    }
}

impl ApiToken {
    /// Shortest token accepted.
    pub const MIN_LEN: usize = 16;

    /// The token in a token file's text; the reason if it is none.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("the token file is empty".into());
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token must be one word of visible ASCII characters (no spaces or control characters)"
                    .into(),
            );
        }
        if t.len() < Self::MIN_LEN {
            return Err(format!(
                "the token has {} characters, at least {} are needed (e.g. `head -c 24 /dev/urandom | base64`)",
                t.len(),
                Self::MIN_LEN
            ));
        }
        Ok(ApiToken(t.to_string()))
    }

    /// Reads and checks a token file; errors name `--api-token` and the path.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let err = |why: String| ConfigError::new("--api-token", shown.clone(), why);
        let file = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        let mut bytes = Vec::new();
        file.take(MAX_TOKEN_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| err(format!("cannot read: {e}")))?;
        if bytes.len() as u64 > MAX_TOKEN_FILE {
            return Err(err(format!(
                "larger than {MAX_TOKEN_FILE} bytes: not a token file"
            )));
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| err("not text".into()))?;
        ApiToken::parse(text).map_err(err)
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// `--api` and `--api-token` as given (flag or file key); both or neither.
pub(super) fn spec(api: Option<Raw>, token: Option<Raw>) -> Result<Option<ApiSpec>, ConfigError> {
    let (api, token) = match (api, token) {
        (None, None) => return Ok(None),
        (None, Some(t)) => return Err(t.err("--api-token is given without --api")),
        (Some(a), None) => {
            return Err(a.err(
                "--api needs --api-token FILE (a file with the bearer token clients must send)",
            ));
        }
        (Some(a), Some(t)) => (a, t),
    };
    if cfg!(not(feature = "api")) {
        return Err(api.err("this ddhcpd was built without the api feature"));
    }
    let addr = api
        .text
        .parse()
        .map_err(|_| api.err("expected ADDR:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"))?;
    if token.text.is_empty() {
        return Err(token.err("expected the path of the token file"));
    }
    Ok(Some(ApiSpec {
        addr,
        token_file: PathBuf::from(&token.text),
        token: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert_eq!(
            ApiToken::parse("  0123456789abcdef\n").unwrap().as_bytes(),
            b"0123456789abcdef"
        );
        assert!(
            ApiToken::parse("short\n")
                .unwrap_err()
                .contains("at least 16")
        );
        assert!(ApiToken::parse("\n \n").unwrap_err().contains("empty"));
        assert!(
            ApiToken::parse("0123456789 abcdefgh")
                .unwrap_err()
                .contains("one word")
        );
        assert!(ApiToken::parse("0123456789abcdéf").is_err());
        let t = ApiToken::parse("0123456789abcdef").unwrap();
        assert!(!format!("{t:?}").contains("0123"));
    }
}
