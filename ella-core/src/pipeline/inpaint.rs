//! Inpainting and outpainting: the mask that says which pixels a request repaints, and the
//! canvas an outpainting request starts from. How a request uses them
//! ([`super::GenerateRequest::mask`]) follows diffusers' `StableDiffusionInpaintPipeline`
//! (docs/inpainting-reference.md): the mask is binarized at half intensity (8-bit 128 and
//! above repaint) and taken to the latents' size by nearest neighbour.

use std::path::Path;

use burn::tensor::TensorData;

use super::Image;
use crate::error::{Error, Result};
use crate::limits::MAX_IMAGE_SIDE;

/// A single-channel 8-bit mask, rows top to bottom: white (≥ 128) repaints, black keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl Mask {
    /// Reads a PNG mask of any color type: gray as is, color as its luma (ITU-R 601-2 in
    /// Pillow's fixed point, as PIL's `convert("L")`), alpha ignored.
    pub fn load_png(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::from_image(&Image::load_png(path)?))
    }

    /// The luma of an RGB image, as PIL's `convert("L")`:
    /// `(19595·R + 38470·G + 7471·B + 32768) >> 16`.
    pub fn from_image(image: &Image) -> Self {
        let pixels = image
            .pixels
            .chunks_exact(3)
            .map(|p| {
                let [r, g, b] = [p[0], p[1], p[2]].map(u32::from);
                ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16) as u8
            })
            .collect();
        Self {
            width: image.width,
            height: image.height,
            pixels,
        }
    }

    /// Whether pixel `(x, y)` is repainted: `v / 255 ≥ 0.5`, diffusers' binarization.
    pub fn repaints(&self, x: usize, y: usize) -> bool {
        self.pixels[y * self.width + x] >= 128
    }

    /// The binarized mask at the latents' size `[1, 1, height/f, width/f]` (1 repaints):
    /// PyTorch's nearest `interpolate`, latent `(i, j)` taking pixel `(f·i, f·j)`.
    pub fn to_latent(&self, factor: usize) -> TensorData {
        let (h, w) = (self.height / factor, self.width / factor);
        let values: Vec<f32> = (0..h * w)
            .map(|p| f32::from(u8::from(self.repaints(p % w * factor, p / w * factor))))
            .collect();
        TensorData::new(values, [1, 1, h, w])
    }

    /// `[1, 1, height, width]`: 1 where the pixel is kept, 0 where it is repainted
    /// (diffusers' `mask < 0.5`, which zeroes the repainted pixels of the masked image).
    pub(crate) fn keep_mask(&self) -> TensorData {
        let values: Vec<f32> = (0..self.width * self.height)
            .map(|p| f32::from(u8::from(!self.repaints(p % self.width, p / self.width))))
            .collect();
        TensorData::new(values, [1, 1, self.height, self.width])
    }
}

/// How far an outpainting request extends an image, in pixels per side, and how many pixels
/// of the original next to each extended side are repainted too (a seam-free join).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outpaint {
    pub left: usize,
    pub top: usize,
    pub right: usize,
    pub bottom: usize,
    pub overlap: usize,
}

impl Outpaint {
    /// The canvas and mask of an outpainting request: `image` extended by the padding, the
    /// new pixels repeating the nearest edge pixel (NumPy's `pad(mode="edge")`, OpenCV's
    /// `BORDER_REPLICATE`), and a mask white over the new area and `overlap` pixels of the
    /// original next to each extended side, black elsewhere. Inpaint the canvas with it.
    pub fn canvas(&self, image: &Image) -> Result<(Image, Mask)> {
        let (width, height) = (
            image.width + self.left + self.right,
            image.height + self.top + self.bottom,
        );
        if image.width == 0 || image.height == 0 || width.max(height) > MAX_IMAGE_SIDE {
            return Err(Error::InvalidInput(format!(
                "outpainting a {}×{} image to {width}×{height}: the canvas must be 1 to \
                 {MAX_IMAGE_SIDE} a side",
                image.width, image.height
            )));
        }
        let mut pixels = Vec::with_capacity(width * height * 3);
        let mut mask = Vec::with_capacity(width * height);
        // The kept rectangle: the original shrunk by the overlap on each extended side.
        let shrink = |pad: usize| if pad > 0 { self.overlap } else { 0 };
        let keep_x = self.left + shrink(self.left)
            ..(self.left + image.width).saturating_sub(shrink(self.right));
        let keep_y = self.top + shrink(self.top)
            ..(self.top + image.height).saturating_sub(shrink(self.bottom));
        for y in 0..height {
            let sy = y.saturating_sub(self.top).min(image.height - 1);
            for x in 0..width {
                let sx = x.saturating_sub(self.left).min(image.width - 1);
                let at = (sy * image.width + sx) * 3;
                pixels.extend_from_slice(&image.pixels[at..at + 3]);
                let kept = keep_x.contains(&x) && keep_y.contains(&y);
                mask.push(if kept { 0 } else { 255 });
            }
        }
        Ok((
            Image {
                width,
                height,
                pixels,
            },
            Mask {
                width,
                height,
                pixels: mask,
            },
        ))
    }
}
