//! The gRPC clients behind `herald subscribe`, `publish` and `history`.

use std::time::Duration;

use herald_backend::{
    Config,
    auth::dev_key::{self, TokenClaims},
};
use herald_client::Update;
use herald_proto::{
    v1::{
        HistoryRequest, PublishRequest, StreamPosition, SubscribeResponse, Subscribed,
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

    /// A Herald SDK client for `server` with these credentials: development tokens are
    /// minted again before they expire.
    pub(crate) fn sdk(&self, server: &str) -> Result<herald_client::Client, CliError> {
        let client = match (&self.fixed, &self.dev_secret) {
            (None, Some(secret)) => {
                let (secret, sub, roles) = (secret.clone(), self.sub.clone(), self.roles.clone());
                herald_client::Client::connect(
                    server,
                    herald_client::refreshing(move || {
                        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
                        let claims = TokenClaims::new(&sub, &roles, Duration::from_secs(3600));
                        dev_key::sign_hs256(&secret, &claims).map_err(|e| e.to_string())
                    }),
                )
            }
            _ => herald_client::Client::connect(server, self.current.clone()),
        };
        client.map_err(|e| CliError::new(format!("--server: {e}")))
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
    let client = Credentials::new(&args.client, config)?.sdk(&args.client.server)?;
    let mut feed = client.subscribe(&args.topic);
    if let Some(since) = args.since.as_deref().map(parse_position).transpose()? {
        feed = feed.since(since);
    }
    while let Some(update) = feed.next().await {
        let frame = match update.map_err(|e| CliError::new(e.to_string()))? {
            Update::Subscribed { position, resumed } => {
                if resumed {
                    eprintln!("resumed with nothing missed");
                }
                Frame::Subscribed(Subscribed {
                    position,
                    recovered: true,
                })
            }
            Update::Reload { position } => {
                eprintln!(
                    "history no longer covers where this subscription was; continuing from the current position"
                );
                Frame::Subscribed(Subscribed {
                    position,
                    recovered: false,
                })
            }
            Update::Event(event) => Frame::Event(*event),
            Update::Signal(signal) => Frame::Signal(signal),
            Update::Presence(presence) => Frame::Presence(presence),
        };
        print_json(&SubscribeResponse { frame: Some(frame) })?;
    }
    Ok(())
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
