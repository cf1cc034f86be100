//! `herald.v1.Auth`: what the caller's token says.

use std::time::{Duration, UNIX_EPOCH};

use herald_proto::{
    server::auth_server::Auth,
    v1::{WhoamiRequest, WhoamiResponse},
};
use tonic::{Request, Response, Status};

use crate::auth::{Principal, interceptor::principal};

#[derive(Debug, Clone, Default)]
pub struct AuthService;

#[tonic::async_trait]
impl Auth for AuthService {
    async fn whoami(
        &self,
        request: Request<WhoamiRequest>,
    ) -> Result<Response<WhoamiResponse>, Status> {
        Ok(Response::new(identity(principal(&request)?)))
    }
}

/// Who a verified token names, as `Whoami` (and `Edge/Verify`, for many tokens) answers.
pub fn identity(who: Principal) -> WhoamiResponse {
    let expires_at = UNIX_EPOCH + Duration::from_secs(who.expires_at);
    WhoamiResponse {
        user_id: who.user_id,
        roles: who.roles,
        expires_at: Some(herald_proto::timestamp(expires_at)),
    }
}
