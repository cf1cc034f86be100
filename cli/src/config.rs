//! The configuration file: one TOML file for the whole binary. Its `[edge]` table configures
//! the browser edge ([`EdgeConfig`]); everything else configures the backend ([`Config`]).
//! Each part is read by its own crate's types, and each refuses keys it does not know.

use std::path::{Path, PathBuf};

use herald_backend::Config;
use herald_edge::EdgeConfig;
use serde::Deserialize;

/// What `herald` runs with: the backend's settings and the edge's.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub backend: Config,
    pub edge: EdgeConfig,
    /// `herald serve` without a file or `--metrics-addr`: serve `/metrics` on the development
    /// address when it is free (bound once, at start), and go without it when it is not.
    pub dev_metrics: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
}

impl Settings {
    /// Reads a TOML file; fields it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Settings::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Splits the `[edge]` table off and gives the rest to the backend. Errors point into
    /// `text` (line and column), as if the file had been read in one piece.
    pub fn parse(text: &str) -> Result<Settings, toml::de::Error> {
        let mut root = toml::de::DeTable::parse(text)?;
        let edge = root.get_mut().remove("edge");
        let in_text = |mut error: toml::de::Error| {
            error.set_input(Some(text));
            error
        };
        let backend = Config::deserialize(toml::de::Deserializer::from(root)).map_err(in_text)?;
        let edge = match edge {
            Some(edge) => {
                EdgeConfig::deserialize(toml::de::ValueDeserializer::from(edge)).map_err(in_text)?
            }
            None => EdgeConfig::default(),
        };
        Ok(Settings {
            backend,
            edge,
            dev_metrics: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_edge_table_goes_to_the_edge_and_the_rest_to_the_backend() {
        let settings = Settings::parse(
            r#"
            grpc_addr = "127.0.0.1:6000"
            [retention]
            history_max_age = "2m"
            [edge]
            http_addr = "127.0.0.1:9000"
            [edge.limits]
            max_subscriptions = 7
            "#,
        )
        .unwrap();
        assert_eq!(settings.backend.grpc_addr.port(), 6000);
        assert_eq!(
            settings.backend.retention.history_max_age,
            Duration::from_secs(120)
        );
        assert_eq!(settings.edge.http_addr.port(), 9000);
        assert_eq!(settings.edge.limits.max_subscriptions, 7);
        assert_eq!(settings.edge.connections_per_backend, 2);
    }

    #[test]
    fn a_file_without_an_edge_table_keeps_the_edge_defaults() {
        let settings = Settings::parse("data_dir = \"/tmp/h\"").unwrap();
        assert_eq!(settings.edge.http_addr.port(), 8080);
        assert_eq!(settings.backend.data_dir, PathBuf::from("/tmp/h"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name_in_either_part() {
        let backend = Settings::parse("grpc_adr = \"x\"").unwrap_err();
        assert!(backend.to_string().contains("grpc_adr"), "{backend}");
        let edge = Settings::parse("[edge]\nhttp_adr = \"x\"").unwrap_err();
        assert!(edge.to_string().contains("http_adr"), "{edge}");
        let limits = Settings::parse("[edge.limits]\nmax_frames = 1").unwrap_err();
        assert!(limits.to_string().contains("max_frames"), "{limits}");
    }

    #[test]
    fn errors_point_at_the_line_in_the_file() {
        let error = Settings::parse("data_dir = \"d\"\n\n[edge]\nhttp_adr = \"x\"").unwrap_err();
        assert!(error.to_string().contains("line 4"), "{error}");
    }
}
