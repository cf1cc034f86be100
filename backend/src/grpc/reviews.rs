//! `herald.v1.Reviews`: principal → parse the request → the domain
//! ([`crate::domain::reviews`]) → map errors through [`crate::error`]. No handler logs a
//! request: applicant email and phone must never reach a log line.

use herald_proto::{
    server::reviews_server::Reviews as ReviewsRpc,
    v1::{
        ReviewsApproveRequest, ReviewsApproveResponse, ReviewsCountPendingRequest,
        ReviewsCountPendingResponse, ReviewsListDecisionsRequest, ReviewsListDecisionsResponse,
        ReviewsListPendingRequest, ReviewsListPendingResponse, ReviewsRejectRequest,
        ReviewsRejectResponse, ReviewsSubmitRequest, ReviewsSubmitResponse,
    },
};
use tonic::{Request, Response, Status};

use crate::{
    auth::interceptor::principal,
    domain::reviews::{
        ReviewError, Reviews,
        rules::{Applicant, SubmissionInput},
    },
    error::Error,
};

#[derive(Debug, Clone)]
pub struct ReviewsService {
    reviews: Reviews,
}

impl ReviewsService {
    pub fn new(reviews: Reviews) -> Self {
        Self { reviews }
    }
}

fn status(error: ReviewError) -> Status {
    Error::from(error).into()
}

fn pending(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl ReviewsRpc for ReviewsService {
    async fn submit(
        &self,
        request: Request<ReviewsSubmitRequest>,
    ) -> Result<Response<ReviewsSubmitResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let applicant = request.applicant.unwrap_or_default();
        let details_json = request
            .details
            .map(|details| serde_json::to_string(&details))
            .transpose()
            .map_err(|e| {
                Status::from(Error::invalid(format!(
                    "details cannot be written as JSON: {e}"
                )))
            })?;
        let input = SubmissionInput {
            applicant: Applicant {
                name: applicant.name,
                email: applicant.email,
                phone: Some(applicant.phone),
                user_id: Some(applicant.user_id),
            },
            requested_role: request.requested_role,
            details_json,
            reviewer_role: request.reviewer_role,
            required_approvals: request.required_approvals,
        };
        let review = self.reviews.submit(&who, input).await.map_err(status)?;
        Ok(Response::new(ReviewsSubmitResponse {
            review: Some(review),
        }))
    }

    async fn list_pending(
        &self,
        request: Request<ReviewsListPendingRequest>,
    ) -> Result<Response<ReviewsListPendingResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let page = self
            .reviews
            .list_pending(&who, &request.reviewer_role, request.limit, &request.cursor)
            .await
            .map_err(status)?;
        Ok(Response::new(ReviewsListPendingResponse {
            reviews: page.reviews,
            next_cursor: page.next.map(|c| c.encode()).unwrap_or_default(),
            pending: pending(page.pending),
            position: Some(page.position),
        }))
    }

    async fn count_pending(
        &self,
        request: Request<ReviewsCountPendingRequest>,
    ) -> Result<Response<ReviewsCountPendingResponse>, Status> {
        let who = principal(&request)?;
        let role = request.into_inner().reviewer_role;
        let (count, position) = self
            .reviews
            .count_pending(&who, &role)
            .await
            .map_err(status)?;
        Ok(Response::new(ReviewsCountPendingResponse {
            pending: pending(count),
            position: Some(position),
        }))
    }

    async fn approve(
        &self,
        request: Request<ReviewsApproveRequest>,
    ) -> Result<Response<ReviewsApproveResponse>, Status> {
        let who = principal(&request)?;
        let id = request.into_inner().id;
        let review = self.reviews.approve(&who, &id).await.map_err(status)?;
        Ok(Response::new(ReviewsApproveResponse {
            review: Some(review),
        }))
    }

    async fn reject(
        &self,
        request: Request<ReviewsRejectRequest>,
    ) -> Result<Response<ReviewsRejectResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let review = self
            .reviews
            .reject(&who, &request.id, &request.reason)
            .await
            .map_err(status)?;
        Ok(Response::new(ReviewsRejectResponse {
            review: Some(review),
        }))
    }

    async fn list_decisions(
        &self,
        request: Request<ReviewsListDecisionsRequest>,
    ) -> Result<Response<ReviewsListDecisionsResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let page = self
            .reviews
            .list_decisions(
                &who,
                &request.review_id,
                &request.reviewer_id,
                request.limit,
                &request.cursor,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(ReviewsListDecisionsResponse {
            decisions: page.decisions,
            next_cursor: page.next.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }
}
