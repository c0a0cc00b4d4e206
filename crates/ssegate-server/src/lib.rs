//! ssegate's HTTP layer: the v1 API on hyper 1.x and hyper-util, HTTP/1.1 and h2c on one
//! port, SSE streams with replay, gap signals, heartbeats and drain.
//!
//! # Layout
//!
//! - [`app`]: [`App::build`] binds the listeners; [`App::run`] serves until a shutdown
//!   future resolves, then drains.
//! - [`lifecycle`]: the drain and stop signals and the tracker that owns every task.
//! - [`settings`]: [`Settings`], the validated runtime settings with their defaults.
//! - `conn`: the public listener's connections: a lean HTTP/1.1 front that serves SSE
//!   streams straight on the socket, hyper for everything else.
//! - `router`: path and method dispatch, 404/405.
//! - `stream`: subscribing; `stream::session` is the per-stream state machine.
//! - `handlers`: publish (single and batch), history, health, the demo page.
//! - `cluster_view`: the cluster view (`/v1/cluster`, its SSE stream, `/dashboard`).
//! - [`auth`]: JWT and publisher-key authentication, `POST /v1/tokens`.
//! - [`cors`]: the CORS policy.
//! - [`limits`]: per-subject and rate limits.
//! - [`error`]: [`error::ApiError`], the one JSON error shape.
//! - [`body`]: the response body (a buffer or a stream of shared frames).
//! - [`metrics`]: the Prometheus recorder and the metric handles the hot paths use.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod auth;
pub mod body;
mod cluster_view;
mod conn;
pub mod cors;
pub mod error;
mod handlers;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
mod query;
mod router;
pub mod settings;
pub mod state;
mod stream;

pub use app::{App, BuildError};
pub use settings::Settings;
