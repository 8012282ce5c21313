//! ELLA's Timestep-Aware Semantic Connector.

mod config;
mod model;

/// The sinusoidal timestep features the connector (and the U-Net) embed timesteps from.
pub use crate::nn::timestep_features;
pub use config::ConnectorConfig;
pub use model::{AdaLayerNorm, Connector, PerceiverAttentionBlock, PerceiverResampler, ProjOut};
