//! Conversions between the C enums (passed as `u32` fields, so that any value a host
//! passes is safe to read) and ella-core's types.

use ella_core::burn::tensor::DType;
use ella_core::{
    Conditioning, PreviewMethod, PromptSyntax, SchedulerKind, Seamless, SurMode, SurOptions,
    T5Precision, TokenMode, VaeDecode,
};

use crate::abi::*;
use crate::boundary::{Failure, invalid};

/// Gives a C enum `decode(raw, field)`: the variant a `u32` field holds, or an
/// `ELLA_STATUS_INVALID_ARGUMENT` naming the field and the enum. With an ella-core enum of
/// the same variants, also `From` both ways (exhaustive: a variant added on one side only
/// does not compile).
macro_rules! c_enum {
    ($c:ident as $c_name:literal { $($variant:ident),+ $(,)? }) => {
        impl $c {
            pub(crate) fn decode(raw: u32, field: &str) -> Result<Self, Failure> {
                $(
                    if raw == $c::$variant as u32 {
                        return Ok($c::$variant);
                    }
                )+
                Err(invalid(format!("{field} {raw} is not an {}", $c_name)))
            }
        }
    };
    ($c:ident as $c_name:literal <=> $core:ident { $($variant:ident),+ $(,)? }) => {
        c_enum!($c as $c_name { $($variant),+ });
        impl From<$c> for $core {
            fn from(value: $c) -> Self {
                match value {
                    $($c::$variant => $core::$variant),+
                }
            }
        }
        impl From<$core> for $c {
            fn from(value: $core) -> Self {
                match value {
                    $($core::$variant => $c::$variant),+
                }
            }
        }
    };
}

c_enum!(EllaStatus as "ella_status" {
    Ok, InvalidArgument, Io, InvalidModel, Unsupported, Cancelled, BufferTooSmall, Internal,
    OutOfMemory, Numerical, Busy, NotReady,
});
c_enum!(EllaBackend as "ella_backend" { Cpu, Wgpu, Cuda });
c_enum!(EllaPrecision as "ella_precision" { F32, F16, Bf16 });
c_enum!(EllaT5Precision as "ella_t5_precision" { Auto, F32, F16, F16WoF32, Bf16 });
c_enum!(EllaPixelFormat as "ella_pixel_format" { Rgb8, Rgba8 });
c_enum!(EllaScheduler as "ella_scheduler" <=> SchedulerKind {
    DpmSolverMultistep, DpmSolverMultistepKarras, Euler, Ddim, Lcm, Tcd,
});
c_enum!(EllaVaeDecode as "ella_vae_decode" <=> VaeDecode { Whole, Sliced, Tiled, Tiny });
c_enum!(EllaSeamless as "ella_seamless" <=> Seamless { Off, X, Y, XY });
c_enum!(EllaPreviewMethod as "ella_preview_method" <=> PreviewMethod { Linear, Tiny });
c_enum!(EllaConditioning as "ella_conditioning" { Ella, EllaClip, Clip, ClipSur });
c_enum!(EllaSurMode as "ella_sur_mode" <=> SurMode { Faithful, PerToken });
c_enum!(EllaPromptSyntax as "ella_prompt_syntax" <=> PromptSyntax { A1111, Literal });

impl EllaConditioning {
    /// ella-core's conditioning; `sur` is read for `ClipSur` only.
    pub(crate) fn with_sur(self, sur: SurOptions) -> Conditioning {
        match self {
            EllaConditioning::Ella => Conditioning::Ella,
            EllaConditioning::EllaClip => Conditioning::EllaClip,
            EllaConditioning::Clip => Conditioning::Clip,
            EllaConditioning::ClipSur => Conditioning::ClipSur(sur),
        }
    }
}

impl From<Conditioning> for EllaConditioning {
    fn from(conditioning: Conditioning) -> Self {
        match conditioning {
            Conditioning::Ella => EllaConditioning::Ella,
            Conditioning::EllaClip => EllaConditioning::EllaClip,
            Conditioning::Clip => EllaConditioning::Clip,
            Conditioning::ClipSur(_) => EllaConditioning::ClipSur,
        }
    }
}

impl From<EllaPrecision> for DType {
    fn from(precision: EllaPrecision) -> Self {
        match precision {
            EllaPrecision::F32 => DType::F32,
            EllaPrecision::F16 => DType::F16,
            EllaPrecision::Bf16 => DType::BF16,
        }
    }
}

impl EllaT5Precision {
    /// T5's precision; `Auto` follows the model's `precision`.
    pub(crate) fn resolve(self, precision: DType) -> ella_core::Result<T5Precision> {
        Ok(match self {
            EllaT5Precision::Auto => T5Precision::uniform(precision)?,
            EllaT5Precision::F32 => T5Precision::F32,
            EllaT5Precision::F16 => T5Precision::F16,
            EllaT5Precision::F16WoF32 => T5Precision::F16WoF32,
            EllaT5Precision::Bf16 => T5Precision::BF16,
        })
    }
}

impl EllaPixelFormat {
    /// Bytes per pixel.
    pub(crate) fn channels(self) -> u32 {
        match self {
            EllaPixelFormat::Rgb8 => 3,
            EllaPixelFormat::Rgba8 => 4,
        }
    }
}

/// A `max_tokens` field (0: flexible) as a token mode.
pub(crate) fn token_mode(max_tokens: u32) -> TokenMode {
    match max_tokens {
        0 => TokenMode::Flexible,
        n => TokenMode::Fixed(n as usize),
    }
}

/// A token mode as a `max_tokens` field.
pub(crate) fn max_tokens(mode: TokenMode) -> u32 {
    match mode {
        TokenMode::Flexible => 0,
        TokenMode::Fixed(n) => n as u32,
    }
}
