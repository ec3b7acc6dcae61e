//! Join tokens: HS256 JWTs naming the room, the identity, the display name and the role.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use ting_protocol::{ErrorCode, Role, RoomId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub room: RoomId,
    /// Stable identity of the user.
    pub sub: String,
    /// Display name.
    pub name: String,
    #[serde(default)]
    pub role: Role,
    /// Expiry, unix seconds.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Where the participant is (a region name the cluster's nodes use, as `--region`): in a
    /// cluster its media goes to a node there when one has room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// What a guest link grants in the collaboration add-ons (`chat`, `files:read`,
    /// `board:write`…). Absent: everything a member of the room may (viewers: read all,
    /// write chat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collab: Option<Vec<String>>,
    /// A download link for this one file of the room's file drop, and nothing else: such a
    /// token cannot join the meeting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the join token is not valid")]
    Invalid,
    #[error("the join token has expired")]
    Expired,
    #[error("the join token is for another room")]
    WrongRoom,
}

impl TokenError {
    pub fn code(self) -> ErrorCode {
        match self {
            TokenError::Invalid => ErrorCode::InvalidToken,
            TokenError::Expired => ErrorCode::TokenExpired,
            TokenError::WrongRoom => ErrorCode::WrongRoom,
        }
    }
}

/// Signs and checks join tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    /// Fails only for an empty secret.
    pub fn new(secret: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            encoding: EncodingKey::from_secret(secret)?,
            decoding: DecodingKey::from_secret(secret)?,
            validation,
        })
    }

    /// Mints a token valid for `ttl` from now.
    pub fn mint(
        &self,
        room: RoomId,
        identity: &str,
        name: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.mint_in_region(room, identity, name, role, ttl, None)
    }

    /// A token as [`TokenKeys::mint`] makes, for a participant in `region`.
    pub fn mint_in_region(
        &self,
        room: RoomId,
        identity: &str,
        name: &str,
        role: Role,
        ttl: Duration,
        region: Option<String>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now();
        self.sign(&Claims {
            room,
            sub: identity.to_owned(),
            name: name.to_owned(),
            role,
            exp: now + ttl.as_secs(),
            iat: Some(now),
            region,
            collab: None,
            file: None,
        })
    }

    /// An expiring download link for one file of `room`.
    pub fn mint_file_link(
        &self,
        room: RoomId,
        file: &str,
        ttl: Duration,
    ) -> Result<(String, u64), jsonwebtoken::errors::Error> {
        let now = unix_now();
        let exp = now + ttl.as_secs();
        let token = self.sign(&Claims {
            room,
            sub: "file-link".to_owned(),
            name: String::new(),
            role: Role::Viewer,
            exp,
            iat: Some(now),
            region: None,
            collab: Some(vec!["files:read".to_owned()]),
            file: Some(file.to_owned()),
        })?;
        Ok((token, exp))
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
    }

    /// Checks signature and expiry; with `room`, also that the token is for that room.
    pub fn verify(&self, token: &str, room: Option<&RoomId>) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        match room {
            Some(room) if *room != data.claims.room => Err(TokenError::WrongRoom),
            _ => Ok(data.claims),
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomId {
        RoomId::new(name).unwrap_or_else(|_| unreachable!("valid test room"))
    }

    #[test]
    fn a_minted_token_verifies() {
        let keys = TokenKeys::new(b"secret").unwrap_or_else(|_| unreachable!());
        let token = keys
            .mint(
                room("a"),
                "alice",
                "Alice",
                Role::Host,
                Duration::from_secs(60),
            )
            .unwrap_or_default();
        let claims = keys.verify(&token, Some(&room("a")));
        assert_eq!(
            claims.map(|c| (c.sub, c.role)),
            Ok(("alice".into(), Role::Host))
        );
    }

    #[test]
    fn bad_tokens_are_told_apart() {
        let keys = TokenKeys::new(b"secret").unwrap_or_else(|_| unreachable!());
        let other = TokenKeys::new(b"other").unwrap_or_else(|_| unreachable!());
        let token = other
            .mint(room("a"), "x", "X", Role::Speaker, Duration::from_secs(60))
            .unwrap_or_default();
        assert_eq!(keys.verify(&token, None), Err(TokenError::Invalid));
        assert_eq!(keys.verify("not a jwt", None), Err(TokenError::Invalid));
        let expired = keys
            .sign(&Claims {
                room: room("a"),
                sub: "x".into(),
                name: "X".into(),
                role: Role::Speaker,
                exp: unix_now() - 3600,
                iat: None,
                region: None,
                collab: None,
                file: None,
            })
            .unwrap_or_default();
        assert_eq!(keys.verify(&expired, None), Err(TokenError::Expired));
        let just_expired = keys
            .sign(&Claims {
                room: room("a"),
                sub: "x".into(),
                name: "X".into(),
                role: Role::Speaker,
                exp: unix_now() - 10,
                iat: None,
                region: None,
                collab: None,
                file: None,
            })
            .unwrap_or_default();
        assert_eq!(
            keys.verify(&just_expired, None),
            Err(TokenError::Expired),
            "only a few seconds of clock skew are forgiven"
        );
        let good = keys
            .mint(room("a"), "x", "X", Role::Speaker, Duration::from_secs(60))
            .unwrap_or_default();
        assert_eq!(
            keys.verify(&good, Some(&room("b"))),
            Err(TokenError::WrongRoom)
        );
    }
}
