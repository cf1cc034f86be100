//! The gRPC clients behind `herald subscribe`, `publish` and `history`.

use std::time::Duration;

use herald_backend::{
    Config,
    auth::dev_key::{self, TokenClaims},
};
use herald_proto::{
    codes::close_code_of,
    v1::{
        CloseCode, HistoryRequest, PublishRequest, StreamPosition, SubscribeRequest,
        rooms_client::RoomsClient, subscribe_response::Frame,
    },
    wkt::Struct,
};
use tonic::{Request, Status, transport::Channel};

use crate::{CliError, ClientArgs, HistoryArgs, PublishArgs, SubscribeArgs};

/// Parses `OFFSET:EPOCH`.
pub(crate) fn parse_position(text: &str) -> Result<StreamPosition, CliError> {
    let (offset, epoch) = text.split_once(':').ok_or_else(|| {
        CliError::new(format!(
            "--since `{text}` must be OFFSET:EPOCH, for example 17:3f9a0c2d11e4b7a8"
        ))
    })?;
    let offset = offset.parse().map_err(|_| {
        CliError::new(format!(
            "--since `{text}`: the offset must be a whole number"
        ))
    })?;
    Ok(StreamPosition {
        offset,
        epoch: epoch.to_owned(),
    })
}

/// A token source: a given token, or development tokens minted on demand.
pub(crate) struct Credentials {
    fixed: Option<String>,
    dev_secret: Option<String>,
    current: String,
    /// Whom development tokens are minted for.
    sub: String,
    roles: Vec<String>,
}

impl Credentials {
    pub(crate) fn new(args: &ClientArgs, config: &Config) -> Result<Credentials, CliError> {
        Credentials::as_user(args, config, "herald-cli", &["service"])
    }

    /// Like [`Credentials::new`], minting development tokens for `sub` with `roles`.
    pub(crate) fn as_user(
        args: &ClientArgs,
        config: &Config,
        sub: &str,
        roles: &[&str],
    ) -> Result<Credentials, CliError> {
        if let Some(token) = &args.token {
            return Ok(Credentials {
                fixed: Some(token.clone()),
                dev_secret: None,
                current: token.clone(),
                sub: String::new(),
                roles: Vec::new(),
            });
        }
        let secret = match config.auth.hs256_secret.clone() {
            Some(secret) => secret,
            None => dev_key::load(&config.data_dir)
                .map_err(|e| CliError::new(format!("{e}\n(or pass --token / HERALD_TOKEN)")))?,
        };
        let mut credentials = Credentials {
            fixed: None,
            dev_secret: Some(secret),
            current: String::new(),
            sub: sub.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        };
        credentials.refresh()?;
        Ok(credentials)
    }

    /// Mints a fresh development token; false when the token was given and cannot be renewed.
    pub(crate) fn refresh(&mut self) -> Result<bool, CliError> {
        let Some(secret) = &self.dev_secret else {
            return Ok(false);
        };
        let roles: Vec<&str> = self.roles.iter().map(String::as_str).collect();
        let claims = TokenClaims::new(&self.sub, &roles, Duration::from_secs(3600));
        self.current = dev_key::sign_hs256(secret, &claims).map_err(CliError::new)?;
        Ok(self.fixed.is_none())
    }

    pub(crate) fn authorize<T>(&self, message: T) -> Result<Request<T>, CliError> {
        let mut request = Request::new(message);
        let value = format!("Bearer {}", self.current)
            .parse()
            .map_err(|_| CliError::new("the token contains characters not allowed in metadata"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

async fn connect(server: &str) -> Result<RoomsClient<Channel>, CliError> {
    Ok(RoomsClient::new(channel(server).await?))
}

/// A connection to the backend at `server`.
pub(crate) async fn channel(server: &str) -> Result<Channel, CliError> {
    let channel = Channel::from_shared(server.to_owned())
        .map_err(|e| CliError::new(format!("--server `{server}` is not a valid URL: {e}")))?
        .connect()
        .await
        .map_err(|e| {
            CliError::new(format!(
                "cannot reach {server}: {e}; is `herald serve` running there?"
            ))
        })?;
    Ok(channel)
}

pub(crate) fn status_error(status: &Status) -> CliError {
    CliError::new(format!("{:?}: {}", status.code(), status.message()))
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    println!("{}", serde_json::to_string(value).map_err(CliError::new)?);
    Ok(())
}

pub(crate) async fn subscribe(args: SubscribeArgs, config: &Config) -> Result<(), CliError> {
    let mut credentials = Credentials::new(&args.client, config)?;
    let mut client = connect(&args.client.server).await?;
    let mut since = args.since.as_deref().map(parse_position).transpose()?;
    let mut backoff = Duration::from_millis(200);
    loop {
        let request = credentials.authorize(SubscribeRequest {
            topic: args.topic.clone(),
            since: since.clone(),
        })?;
        let status = match client.subscribe(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(response)) => {
                            match &response.frame {
                                Some(Frame::Subscribed(s)) if !s.recovered && since.is_some() => {
                                    eprintln!(
                                        "history no longer covers --since; continuing from the current position"
                                    );
                                    since = s.position.clone();
                                }
                                Some(Frame::Subscribed(s)) if since.is_none() => {
                                    since = s.position.clone()
                                }
                                Some(Frame::Event(event)) => {
                                    since = Some(StreamPosition {
                                        offset: event.offset,
                                        epoch: event.epoch.clone(),
                                    });
                                    backoff = Duration::from_millis(200);
                                }
                                _ => {}
                            }
                            print_json(&response)?;
                        }
                        Ok(None) => return Ok(()),
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        let reconnect = close_code_of(&status).is_some_and(CloseCode::should_reconnect)
            || status.code() == tonic::Code::Unavailable;
        if !reconnect {
            return Err(status_error(&status));
        }
        if close_code_of(&status) == Some(CloseCode::TokenExpired) && !credentials.refresh()? {
            return Err(status_error(&status));
        }
        eprintln!(
            "stream ended ({}); resuming in {backoff:?}",
            status.message()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

pub(crate) async fn publish(args: PublishArgs, config: &Config) -> Result<(), CliError> {
    let credentials = Credentials::new(&args.client, config)?;
    let data: Struct = serde_json::from_str(&args.data)
        .map_err(|e| CliError::new(format!("--data must be a JSON object: {e}")))?;
    let mut client = connect(&args.client.server).await?;
    let request = credentials.authorize(PublishRequest {
        topic: args.topic,
        r#type: args.event_type,
        data: Some(data),
        idempotency_key: args.idempotency_key,
        durable: args.durable,
    })?;
    let response = client
        .publish(request)
        .await
        .map_err(|s| status_error(&s))?;
    print_json(response.get_ref())
}

pub(crate) async fn history(args: HistoryArgs, config: &Config) -> Result<(), CliError> {
    let credentials = Credentials::new(&args.client, config)?;
    let since = args.since.as_deref().map(parse_position).transpose()?;
    let mut client = connect(&args.client.server).await?;
    let request = credentials.authorize(HistoryRequest {
        topic: args.topic,
        since,
        limit: args.limit,
    })?;
    let response = client
        .history(request)
        .await
        .map_err(|s| status_error(&s))?;
    print_json(response.get_ref())
}
