//! Live previews: every few steps, the image the run is heading to (the scheduler's
//! prediction of the clean latents, x₀), cheaply, for a host to show while it works.
//!
//! Two ways to turn latents into pixels: [`PreviewMethod::Linear`], a fixed 4→3 projection
//! of each latent pixel (the factors ComfyUI and A1111's "approx cheap" use for SD1.5
//! latents; latent-sized, blurry, nearly free), and [`PreviewMethod::Tiny`], TAESD (a tiny
//! autoencoder; full-sized and close to the VAE, at a few percent of a step).

use burn::tensor::TensorData;

use super::Image;

/// How a preview turns latents into pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreviewMethod {
    /// The linear latent→RGB projection: an image the latents' size (1/8 of the request's).
    #[default]
    Linear,
    /// TAESD, the tiny autoencoder (needs one loaded): an image the request's size.
    Tiny,
}

/// One preview: after step `step` of `total` (the steps the run takes), an image per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub step: usize,
    pub total: usize,
    pub images: Vec<Image>,
}

/// Receives previews.
pub type PreviewFn<'a> = Box<dyn FnMut(Preview) + 'a>;

/// Which previews a generation makes, and where they go.
pub struct Previews<'a> {
    /// A preview after every `every`-th step (not after the last: the final image follows).
    pub every: usize,
    pub method: PreviewMethod,
    pub sink: PreviewFn<'a>,
}

impl Previews<'_> {
    /// Whether a preview follows step `step` (from 0) of `total`.
    pub fn due(&self, step: usize, total: usize) -> bool {
        self.every > 0 && (step + 1).is_multiple_of(self.every) && step + 1 < total
    }
}

/// SD1.5's latent→RGB factors (rows: latent channels; columns: R, G, B), fitted to the VAE
/// by ComfyUI (`latent_formats.SD15`) for latents as the U-Net sees them (scaled by 0.18215).
const SD15_LATENT_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

/// Latents `[batch, 4, h, w]` (the U-Net's scale) as `h × w` RGB8 images through
/// [`SD15_LATENT_RGB`]: `rgb = latent · factors`, mapped from [-1, 1] to [0, 255]. Latents
/// with other than 4 channels give gray images of their first channel.
pub fn linear_preview(latents: &TensorData) -> Vec<Image> {
    let [batch, channels, height, width] = [
        latents.shape[0],
        latents.shape[1],
        latents.shape[2],
        latents.shape[3],
    ];
    let values: Vec<f32> = latents.iter::<f32>().collect();
    let plane = height * width;
    let to_byte = |v: f32| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8;
    (0..batch)
        .map(|b| {
            let at = |c: usize, p: usize| values[(b * channels + c) * plane + p];
            let pixels = (0..plane)
                .flat_map(|p| {
                    let rgb: [f32; 3] = match channels {
                        4 => std::array::from_fn(|k| {
                            (0..4).map(|c| at(c, p) * SD15_LATENT_RGB[c][k]).sum()
                        }),
                        _ => [at(0, p); 3],
                    };
                    rgb.map(to_byte)
                })
                .collect();
            Image {
                width,
                height,
                pixels,
            }
        })
        .collect()
}
