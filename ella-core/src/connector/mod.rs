//! ELLA's Timestep-Aware Semantic Connector.

mod config;
mod model;

pub use config::ConnectorConfig;
pub use model::{AdaLayerNorm, Connector, PerceiverAttentionBlock, PerceiverResampler, ProjOut};
