//! Join tokens, minted with the server's secret like `ting token` does.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use ting_signalling::TokenKeys;

use crate::scenario::ParticipantPlan;

pub struct TokenMinter {
    keys: TokenKeys,
    ttl: Duration,
}

impl TokenMinter {
    /// Tokens live for `ttl` (make it cover the whole run).
    pub fn new(secret: &[u8], ttl: Duration) -> anyhow::Result<Self> {
        let keys = TokenKeys::new(secret).context("token secret")?;
        Ok(Self { keys, ttl })
    }

    pub fn mint(&self, plan: &ParticipantPlan) -> anyhow::Result<String> {
        self.keys
            .mint(
                plan.room.clone(),
                &plan.identity,
                &plan.name,
                plan.role,
                self.ttl,
            )
            .with_context(|| format!("minting a token for {}", plan.identity))
    }
}

/// The secret given on the command line, or the one `ting serve` keeps in its data directory
/// (`<data-dir>/token-secret`). Unlike `ting token`, never creates one: a fresh secret would
/// not be the server's.
pub fn resolve_secret(given: Option<&str>, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let secret = match given {
        Some(s) => s.to_owned(),
        None => {
            let path = data_dir.join("token-secret");
            std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "no --token-secret given and cannot read {} (use the server's \
                         --data-dir or --token-secret)",
                        path.display()
                    )
                })?
                .trim()
                .to_owned()
        }
    };
    ensure!(
        secret.len() >= 16,
        "the token secret must be at least 16 characters"
    );
    Ok(secret.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    #[test]
    fn tokens_verify_with_the_same_secret() {
        let secret = b"0123456789abcdef-secret";
        let plans = Scenario::parse(
            "name = \"t\"\nroom = \"r\"\nduration_secs = 1\nramp_per_sec = 1\n\
             [[group]]\nrole = \"viewer\"\ncount = 1\n",
        )
        .unwrap()
        .plan()
        .unwrap();
        let token = TokenMinter::new(secret, Duration::from_secs(60))
            .unwrap()
            .mint(&plans[0])
            .unwrap();
        let claims = TokenKeys::new(secret)
            .unwrap()
            .verify(&token, Some(&plans[0].room))
            .unwrap();
        assert_eq!(claims.sub, "t-viewer-1");
        assert_eq!(claims.role, ting_protocol::Role::Viewer);
    }

    #[test]
    fn secrets_come_from_the_data_dir() {
        let dir = std::env::temp_dir().join(format!("ting-lt-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(resolve_secret(None, &dir).is_err());
        std::fs::write(dir.join("token-secret"), "abcdefghijklmnopqrstuvwxyz\n").unwrap();
        assert_eq!(
            resolve_secret(None, &dir).unwrap(),
            b"abcdefghijklmnopqrstuvwxyz"
        );
        assert!(resolve_secret(Some("short"), &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
