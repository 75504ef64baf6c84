//! This platform's OIDC clients by platform_id, discovered on first use (so the vault starts
//! even when the OP is briefly down) and cached.

use std::collections::HashMap;
use std::sync::Arc;

use custodian_oidc::{ClientSettings, OidcClient, OidcError};
use secrecy::SecretString;
use tokio::sync::RwLock;

#[derive(Debug, Clone)]
pub struct Clients {
    settings: Arc<HashMap<String, ClientSettings>>,
    discovered: Arc<RwLock<HashMap<String, OidcClient>>>,
}

impl Clients {
    pub fn new(settings: &[ClientSettings]) -> Self {
        let settings = settings.iter().map(|s| (s.client_id.clone(), s.clone())).collect();
        Self { settings: Arc::new(settings), discovered: Arc::default() }
    }

    /// The only platform, when there is exactly one.
    pub fn default_platform(&self) -> Option<String> {
        (self.settings.len() == 1).then(|| self.settings.keys().next().cloned()).flatten()
    }

    pub fn knows(&self, platform_id: &str) -> bool {
        self.settings.contains_key(platform_id)
    }

    /// Whether `platform_id` has an OIDC client configured (discovered yet or not).
    pub fn is_configured(&self, platform_id: &str) -> bool {
        self.settings.contains_key(platform_id)
    }

    pub async fn get(&self, platform_id: &str) -> Result<OidcClient, OidcError> {
        if let Some(client) = self.discovered.read().await.get(platform_id) {
            return Ok(client.clone());
        }
        let settings = self
            .settings
            .get(platform_id)
            .ok_or_else(|| OidcError::Config(format!("no OIDC client configured for platform {platform_id:?}")))?;
        let client = OidcClient::discover(settings.clone()).await?;
        self.discovered.write().await.insert(platform_id.to_owned(), client.clone());
        Ok(client)
    }

    /// Switches a platform to a new client secret without restart (after a rotation).
    pub async fn set_secret(&self, platform_id: &str, secret: SecretString) -> Result<(), OidcError> {
        let client = self.get(platform_id).await?;
        self.discovered.write().await.insert(platform_id.to_owned(), client.with_secret(secret));
        Ok(())
    }
}
