//! Parity with the PyTorch reference (transformers, diffusers, the official ELLA code) on
//! every backend compiled in: one test binary, so that Burn's kernels are instantiated once
//! per backend. Tests are named `<model>::<backend>::<test>`: `cargo test --test parity cuda::`
//! runs the CUDA ones.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod clip;
mod connector;
mod controlnet;
mod conv;
mod fusion_fixes;
mod lora;
mod pipeline;
mod single_file;
mod sur_adapter;
mod t5;
mod taesd;
mod unet_vae;
