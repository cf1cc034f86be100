//! The tonic interceptor that authenticates every call before a handler runs.

use std::sync::Arc;

use tonic::{Request, Status, service::Interceptor};

use super::{AuthError, Principal, TokenVerifier};

/// Verifies `authorization: Bearer <JWT>` and stores the [`Principal`] in the request
/// extensions. Refusals are UNAUTHENTICATED.
#[derive(Clone, Debug)]
pub struct AuthInterceptor {
    verifier: Arc<TokenVerifier>,
}

impl AuthInterceptor {
    pub fn new(verifier: Arc<TokenVerifier>) -> Self {
        Self { verifier }
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = bearer(&request).inspect_err(|error| self.verifier.count_failure(error))?;
        let principal = self.verifier.verify(token)?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

fn bearer(request: &Request<()>) -> Result<&str, AuthError> {
    let header = request
        .metadata()
        .get("authorization")
        .ok_or(AuthError::Missing)?;
    let header = header.to_str().map_err(|_| AuthError::NotBearer)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(AuthError::NotBearer)?;
    Ok(token.trim())
}

/// The principal the interceptor stored. Its absence means the service was mounted without the
/// interceptor, which is a server bug, so it is reported as UNAUTHENTICATED rather than a panic.
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| AuthError::Missing.into())
}
