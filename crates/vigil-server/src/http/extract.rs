//! Authentication and tenancy for a request: who calls, and which environment it touches.

use std::sync::Arc;

use axum::http::HeaderMap;
use vigil_model::EnvId;

use crate::auth::{Authn, Need, Principal};
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// The header naming the environment (the Cortex/Mimir convention Grafana supports).
pub const SCOPE_HEADER: &str = "x-scope-orgid";

/// Authenticates the caller, checks its role against `need`, and resolves the environment:
/// `X-Scope-OrgID`, else the token's default, else `default`. A token never reaches an
/// environment outside its scope.
pub fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    need: Need,
) -> Result<(Arc<Principal>, EnvId), ApiError> {
    let principal = match &state.0.authn {
        None => Arc::new(Principal::anonymous_admin()),
        Some(authn) => {
            let h = headers
                .get(axum::http::header::AUTHORIZATION)
                .ok_or_else(|| {
                    ApiError::unauthorized(crate::auth::AuthError::Missing.to_string())
                })?;
            let h = h
                .to_str()
                .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
            let token =
                Authn::token_from_header(h).map_err(|e| ApiError::unauthorized(e.to_string()))?;
            authn
                .verify(&token)
                .map_err(|e| ApiError::unauthorized(e.to_string()))?
        }
    };
    if !need.allows(principal.role) {
        return Err(ApiError::forbidden(format!(
            "role {} may not {}",
            principal.role.as_str(),
            match need {
                Need::Write => "write data",
                Need::Read => "read data",
                Need::Operate => "operate the fleet",
                Need::Admin => "administer Vigil",
            }
        )));
    }
    let env = match headers.get(SCOPE_HEADER) {
        Some(v) => {
            let s = v.to_str().map_err(|_| {
                ApiError::bad_request("bad_environment", "X-Scope-OrgID is not valid text")
            })?;
            EnvId::new(s.trim()).map_err(|e| {
                ApiError::bad_request("bad_environment", format!("X-Scope-OrgID: {e}"))
            })?
        }
        None => match principal.default_env() {
            Some(d) => EnvId::new(d).map_err(|e| {
                ApiError::bad_request(
                    "bad_environment",
                    format!("token's default environment: {e}"),
                )
            })?,
            None => EnvId::default_env(),
        },
    };
    if !principal.env_allowed(env.as_str()) {
        return Err(ApiError::forbidden(format!(
            "token for {} is not scoped to environment {:?}",
            principal.sub,
            env.as_str()
        )));
    }
    Ok((principal, env))
}
