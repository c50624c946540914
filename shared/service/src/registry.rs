//! The approvers registry: which roles each user holds.
//!
//! ```toml
//! [users.alice]
//! roles = ["owner", "release"]
//!
//! [users.bob]
//! roles = ["owner"]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    #[serde(default)]
    users: BTreeMap<String, User>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the approvers file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("the approvers file {path} is not valid: {error}\nexpected tables like:\n[users.alice]\nroles = [\"owner\"]")]
    Parse { path: String, error: String },
}

impl Registry {
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|error| RegistryError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(&text).map_err(|error| RegistryError::Parse {
            path: path.display().to_string(),
            error,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn roles_of(&self, user: &str) -> Vec<String> {
        self.users
            .get(user)
            .map(|u| u.roles.clone())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_users_and_roles() {
        let r =
            Registry::parse("[users.alice]\nroles = [\"owner\"]\n[users.bob]\n").expect("parse");
        assert_eq!(r.roles_of("alice"), vec!["owner".to_string()]);
        assert!(r.roles_of("bob").is_empty());
        assert!(r.roles_of("nobody").is_empty());
    }

    #[test]
    fn refuses_typos() {
        assert!(Registry::parse("[users.alice]\nrole = [\"owner\"]\n").is_err());
        assert!(Registry::parse("[user.alice]\n").is_err());
    }
}
