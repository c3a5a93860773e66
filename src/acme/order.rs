//! One ACME conversation (instant-acme): the account (restored from its credentials or
//! created), and an order for a listener's names: each authorization's challenge published
//! (http-01 token, tls-alpn-01 certificate), the CA told to validate, the order finalized
//! with a fresh key, the chain downloaded. Challenges are withdrawn however it ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};

use crate::config::{Acme as Settings, AcmeChallenge, UpstreamProtocol, UpstreamTls};
use crate::state::SharedState;

use super::serve::Challenges;
use super::AcmeError;

/// How long the CA may take to validate and to issue.
const VALIDATION: Duration = Duration::from_secs(90);
/// http-01 tokens shared through the state backend live this long.
const TOKEN_TTL: Duration = Duration::from_secs(600);

/// The shared-state key of an http-01 token.
pub fn token_key(token: &str) -> String {
    format!("acme:http01:{token}")
}

/// The HTTP client that talks to the ACME server: hyper over rustls (ring), trusting
/// `ca` (else the system's CA bundle).
pub fn http_client(settings: &Settings) -> Result<Box<dyn instant_acme::HttpClient>, AcmeError> {
    let tls = UpstreamTls {
        sni: None,
        ca: settings.ca.clone(),
        verify: true,
        client_cert: None,
        client_key: None,
    };
    let mut config = crate::tls::client::client_config(&tls, UpstreamProtocol::H1)
        .map_err(|e| AcmeError::Setup(format!("acme ca: {e}")))?;
    Arc::make_mut(&mut config).alpn_protocols.clear();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(config))
        .https_only()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, BodyWrapper<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    Ok(Box::new(client))
}

/// The account: restored from `stored` credentials (JSON), else created. Answers the
/// credentials to store when they are new.
pub async fn account(
    settings: &Settings,
    stored: Option<&str>,
) -> Result<(Account, Option<String>), AcmeError> {
    if let Some(json) = stored {
        match serde_json::from_str::<AccountCredentials>(json) {
            Ok(creds) => {
                let account = Account::builder_with_http(http_client(settings)?)
                    .from_credentials(creds)
                    .await?;
                return Ok((account, None));
            }
            Err(e) => {
                tracing::warn!(error = %e, "stored ACME account unreadable: creating a new one")
            }
        }
    }
    let contact = settings.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = Account::builder_with_http(http_client(settings)?)
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await?;
    let json = serde_json::to_string(&creds).map_err(|e| AcmeError::Setup(e.to_string()))?;
    Ok((account, Some(json)))
}

/// What was published for one order, withdrawn when it is dropped (the shared http-01
/// tokens expire by themselves).
struct Published<'a> {
    challenges: &'a Challenges,
    tokens: Vec<String>,
    names: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.challenges.remove_http(t);
        }
        for n in &self.names {
            self.challenges.remove_alpn(n);
        }
    }
}

/// Order a certificate for `settings.domains`; answers the chain and its key (PEM).
pub async fn obtain(
    account: &Account,
    settings: &Settings,
    challenges: &Challenges,
    shared: Option<&Arc<dyn SharedState>>,
) -> Result<(String, String), AcmeError> {
    let ids: Vec<Identifier> = settings
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let kind = match settings.challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut published = Published {
        challenges,
        tokens: Vec::new(),
        names: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(AcmeError::Refused(format!(
                    "authorization for {} is {other:?}",
                    authz.identifier()
                )))
            }
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
            AcmeError::Refused(format!(
                "the ACME server offers no {} challenge for {name}",
                settings.challenge.name()
            ))
        })?;
        let key_auth = challenge.key_authorization();
        match settings.challenge {
            AcmeChallenge::Http01 => {
                challenges.put_http(&challenge.token, key_auth.as_str());
                published.tokens.push(challenge.token.clone());
                if let Some(shared) = shared {
                    // Any node may be asked: the others find the token here.
                    if let Err(e) = shared
                        .put_kv(
                            &token_key(&challenge.token),
                            key_auth.as_str().to_string(),
                            TOKEN_TTL,
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "http-01 token not shared: only this node answers it");
                    }
                }
            }
            AcmeChallenge::TlsAlpn01 => {
                challenges.put_alpn(&name, key_auth.digest().as_ref())?;
                published.names.push(name.clone());
            }
        }
        challenge.set_ready().await?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(VALIDATION);
    let status = order.poll_ready(&retry).await?;
    if status != OrderStatus::Ready {
        let why = failed_authorizations(&mut order).await;
        return Err(AcmeError::Refused(format!(
            "order is {status:?} after validation{why}"
        )));
    }
    let key = order.finalize().await?;
    let chain = order.poll_certificate(&retry).await?;
    drop(published);
    Ok((chain, key))
}

/// `: NAME: PROBLEM, ...` of the authorizations that failed (for the error message).
async fn failed_authorizations(order: &mut instant_acme::Order) -> String {
    let mut out = String::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if let Ok(state) = authz.refresh().await {
            for c in state.challenges.iter().filter(|c| c.error.is_some()) {
                if let Some(e) = &c.error {
                    out.push_str(&format!(": {}: {e}", state.identifier()));
                }
            }
        }
    }
    out
}
