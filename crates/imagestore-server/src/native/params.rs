//! Path and query parameters of the native API, parsed into the core's types; a bad value
//! is a `400 InvalidArgument` naming the parameter.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, RawQuery};
use axum::http::request::Parts;
use imagestore_core::{Digest, Error, FilterSpec, ImageId, OwnerName, RefName, StoreName};

use crate::error::ApiError;

/// Most ids a list parameter (`ids`, `keep`) may name.
pub(crate) const MAX_LIST: usize = 4096;

/// The path parameters of a route, by name.
#[derive(Debug)]
pub(crate) struct P(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for P {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<P, ApiError> {
        match Path::<HashMap<String, String>>::from_request_parts(parts, state).await {
            Ok(Path(m)) => Ok(P(m)),
            Err(e) => Err(Error::invalid(format!("bad path parameter: {e}")).into()),
        }
    }
}

impl P {
    fn raw(&self, name: &str) -> Result<&str, ApiError> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Error::invalid(format!("missing path parameter {name}")).into())
    }

    /// `{store}`.
    pub(crate) fn store(&self) -> Result<StoreName, ApiError> {
        Ok(StoreName::new(self.raw("store")?)?)
    }

    /// `{id}`.
    pub(crate) fn id(&self) -> Result<ImageId, ApiError> {
        Ok(ImageId::new(self.raw("id")?)?)
    }

    /// `{owner}`.
    pub(crate) fn owner(&self) -> Result<OwnerName, ApiError> {
        Ok(OwnerName::new(self.raw("owner")?)?)
    }

    /// `{name}`, a reference name (percent-decoded).
    pub(crate) fn ref_name(&self) -> Result<RefName, ApiError> {
        Ok(RefName::new(self.raw("name")?)?)
    }

    /// `{digest}`.
    pub(crate) fn digest(&self) -> Result<Digest, ApiError> {
        let raw = self.raw("digest")?;
        raw.parse::<Digest>()
            .map_err(|e| Error::invalid(format!("digest {raw:?}: {e}")).into())
    }
}

/// The query parameters of a request; a parameter given several times keeps its last value.
#[derive(Debug, Default)]
pub(crate) struct Q(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Q {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Q, ApiError> {
        let RawQuery(raw) = match RawQuery::from_request_parts(parts, state).await {
            Ok(q) => q,
            Err(never) => match never {},
        };
        Ok(Q(url::form_urlencoded::parse(
            raw.unwrap_or_default().as_bytes(),
        )
        .into_owned()
        .collect()))
    }
}

impl Q {
    /// The value of `name`, `None` if absent or empty.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The value of `name`, which must be given.
    pub(crate) fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .ok_or_else(|| Error::invalid(format!("query parameter {name} is required")).into())
    }

    /// An image id parameter.
    pub(crate) fn id(&self, name: &str) -> Result<Option<ImageId>, ApiError> {
        Ok(self.get(name).map(ImageId::new).transpose()?)
    }

    /// A required image id parameter.
    pub(crate) fn required_id(&self, name: &str) -> Result<ImageId, ApiError> {
        Ok(ImageId::new(self.required(name)?)?)
    }

    /// A comma-separated list of image ids (elements trimmed, empty ones dropped), at most
    /// [`MAX_LIST`].
    pub(crate) fn ids(&self, name: &str) -> Result<Vec<ImageId>, ApiError> {
        let ids: Vec<ImageId> = self
            .get(name)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(ImageId::new)
            .collect::<Result<_, _>>()?;
        if ids.len() > MAX_LIST {
            return Err(Error::LimitExceeded {
                what: "ids in one request",
                value: ids.len() as u64,
                max: MAX_LIST as u64,
            }
            .into());
        }
        Ok(ids)
    }

    /// A boolean parameter: `true`/`1` or `false`/`0`, `default` when absent.
    pub(crate) fn flag(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(Error::invalid(format!(
                "query parameter {name} must be true or false, not {:?}",
                v.chars().take(32).collect::<String>()
            ))
            .into()),
        }
    }

    /// A duration in milliseconds.
    pub(crate) fn millis(&self, name: &str) -> Result<Option<Duration>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                    Error::invalid(format!(
                        "query parameter {name} must be a number of milliseconds"
                    ))
                    .into()
                })
            })
            .transpose()
    }

    /// The `filter` parameter in VIC's wire form; absent is no filter.
    pub(crate) fn filter(&self) -> Result<FilterSpec, ApiError> {
        Ok(FilterSpec::decode(self.get("filter").unwrap_or_default())?)
    }
}
