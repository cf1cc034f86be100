//! Verifying sockets' tokens: the `auth`s of sockets connecting at the same moment go to a
//! backend as one `Edge/Verify` call instead of one `Auth/Whoami` round trip each.
//!
//! One task sends the calls. A call leaves as soon as there is room for it (at most
//! [`MAX_IN_FLIGHT`] are out) and carries whatever queued meanwhile, up to [`MAX_BATCH`]
//! tokens: a socket alone waits for nothing, a connect storm shares calls. The edge still
//! holds no keys; the backend verifies every token, and answers each on its own. A backend
//! older than this edge (no `Edge/Verify`) is asked `Auth/Whoami` per token instead.

use std::sync::Arc;

use futures_util::{StreamExt, stream::FuturesUnordered};
use herald_proto::v1::{
    VerifyRequest, WhoamiRequest, WhoamiResponse, auth_client::AuthClient, edge_client::EdgeClient,
    verify_outcome::Outcome,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

use crate::{
    backends::{Backends, authorized, bearer},
    metrics::EdgeMetrics,
};

/// Tokens in one `Edge/Verify` call at most (the backend takes up to 1,000).
const MAX_BATCH: usize = 256;
/// `Edge/Verify` calls out at once; tokens arriving meanwhile wait for the next call.
const MAX_IN_FLIGHT: usize = 8;
/// Tokens waiting for a call before `verify` itself waits.
const QUEUE: usize = 4096;

type Answer = Result<WhoamiResponse, Status>;

struct Ask {
    token: String,
    answer: oneshot::Sender<Answer>,
}

#[derive(Debug)]
pub(crate) struct Verifier {
    asks: mpsc::Sender<Ask>,
}

impl Verifier {
    /// Starts the task that sends the calls; it ends when the verifier is dropped.
    pub(crate) fn spawn(backends: Arc<Backends>, metrics: Arc<EdgeMetrics>) -> Verifier {
        let (asks, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(backends, metrics, queue));
        Verifier { asks }
    }

    /// Who `token` names, as the backend's `Auth/Whoami` would answer a call carrying it.
    pub(crate) async fn verify(&self, token: String) -> Answer {
        // The socket's calls carry its token in a header: refuse here what could not travel.
        bearer(&token)?;
        let (answer, answered) = oneshot::channel();
        let stopped = || Status::unavailable("the edge is shutting down; reconnect");
        self.asks
            .send(Ask { token, answer })
            .await
            .map_err(|_| stopped())?;
        answered.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn run(backends: Arc<Backends>, metrics: Arc<EdgeMetrics>, mut queue: mpsc::Receiver<Ask>) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            ask = queue.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                let Some(first) = ask else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(ask) => batch.push(ask),
                        Err(_) => break,
                    }
                }
                metrics.verify_call(batch.len());
                in_flight.push(answer(backends.clone(), batch));
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Verifies one batch and answers every socket in it.
async fn answer(backends: Arc<Backends>, batch: Vec<Ask>) {
    let tokens: Vec<String> = batch.iter().map(|ask| ask.token.clone()).collect();
    let answers = match verify_batch(&backends, tokens.clone()).await {
        Err(status) if status.code() == Code::Unimplemented => {
            let each = tokens.iter().map(|token| whoami(&backends, token));
            futures_util::future::join_all(each).await
        }
        Err(status) => vec![Err(status); batch.len()],
        Ok(outcomes) if outcomes.len() != batch.len() => {
            let status = Status::internal(format!(
                "the backend answered {} outcomes for {} tokens",
                outcomes.len(),
                batch.len()
            ));
            vec![Err(status); batch.len()]
        }
        Ok(outcomes) => outcomes,
    };
    for (ask, answer) in batch.into_iter().zip(answers) {
        // A socket that went away meanwhile no longer waits for its answer.
        let _ = ask.answer.send(answer);
    }
}

async fn verify_batch(backends: &Backends, tokens: Vec<String>) -> Result<Vec<Answer>, Status> {
    let mut client = EdgeClient::new(backends.pick());
    let request = backends.as_service(VerifyRequest { tokens })?;
    let response = backends.unary(client.verify(request)).await?;
    Ok(response
        .into_inner()
        .outcomes
        .into_iter()
        .map(|outcome| match outcome.outcome {
            Some(Outcome::Identity(identity)) => Ok(identity),
            Some(Outcome::Refused(refusal)) => {
                Err(Status::new(Code::from(refusal.code), refusal.message))
            }
            None => Err(Status::internal("the backend answered an empty outcome")),
        })
        .collect())
}

/// One token, the way a backend without `Edge/Verify` is asked.
async fn whoami(backends: &Backends, token: &str) -> Answer {
    let mut client = AuthClient::new(backends.pick());
    let request = authorized(WhoamiRequest {}, token)?;
    Ok(backends.unary(client.whoami(request)).await?.into_inner())
}
