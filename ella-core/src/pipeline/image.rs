//! `Image`: 8-bit RGB pixels, PNG input and output.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use crate::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::limits::MAX_IMAGE_SIDE;
use crate::weights::open_regular;

/// An RGB8 image, rows top to bottom, `width · height · 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl Image {
    /// Reads a PNG file of any color type and bit depth as RGB8 (alpha dropped, gray
    /// repeated, 16-bit reduced to 8). Images over [`MAX_IMAGE_SIDE`] a side are refused
    /// before their pixels are decoded.
    pub fn load_png(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let failed = |e: png::DecodingError| {
            Error::InvalidInput(format!(
                "{} is not a PNG image this library reads: {e}",
                path.display()
            ))
        };
        let file = open_regular(path)?;
        let mut decoder = png::Decoder::new(BufReader::new(file));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().map_err(failed)?;
        let (width, height) = (reader.info().width, reader.info().height);
        if width.max(height) as usize > MAX_IMAGE_SIDE {
            return Err(Error::InvalidInput(format!(
                "{} is {width}×{height}; images up to {MAX_IMAGE_SIDE} a side are read",
                path.display()
            )));
        }
        let size = reader.output_buffer_size().ok_or_else(|| {
            Error::InvalidInput(format!("{} is too large an image", path.display()))
        })?;
        let mut buffer = vec![0; size];
        let info = reader.next_frame(&mut buffer).map_err(failed)?;
        let (width, height) = (info.width as usize, info.height as usize);
        let channels = info.color_type.samples();
        let pixels = buffer[..width * height * channels]
            .chunks_exact(channels)
            .flat_map(|p| match channels {
                1 | 2 => [p[0]; 3],
                _ => [p[0], p[1], p[2]],
            })
            .collect();
        Ok(Self {
            width,
            height,
            pixels,
        })
    }

    /// The image as a `[1, 3, height, width]` tensor in [0, 1] (a ControlNet's input).
    pub fn to_unit_tensor<B: Backend>(&self, device: &B::Device, dtype: DType) -> Tensor<B, 4> {
        let plane = self.width * self.height;
        let mut values = vec![0f32; plane * 3];
        for (p, rgb) in self.pixels.chunks_exact(3).enumerate() {
            for (c, &v) in rgb.iter().enumerate() {
                values[c * plane + p] = f32::from(v) / 255.0;
            }
        }
        let data = TensorData::new(values, [1, 3, self.height, self.width]);
        Tensor::from_data(data.convert_dtype(dtype), (device, dtype))
    }

    /// The image as a `[1, 3, height, width]` tensor in [-1, 1], as diffusers' image
    /// processor prepares an init image (`2·p/255 − 1`).
    pub fn to_tensor<B: Backend>(&self, device: &B::Device, dtype: DType) -> Tensor<B, 4> {
        self.to_unit_tensor(device, dtype) * 2.0 - 1.0
    }

    /// Writes the image as a PNG file.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })?;
        self.write_png(file, path)
    }

    /// Writes the image as PNG to `out` (a file opened before a long generation, so that
    /// a path that cannot be written fails first); `path` names it in errors.
    pub fn write_png(&self, out: impl Write, path: &Path) -> Result<()> {
        let png_error = |e: png::EncodingError| Error::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        };
        let mut encoder =
            png::Encoder::new(BufWriter::new(out), self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(png_error)?;
        writer.write_image_data(&self.pixels).map_err(png_error)?;
        writer.finish().map_err(png_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RGB round trip, and gray / gray+alpha / RGBA / 16-bit files read as RGB8.
    #[test]
    fn png_round_trip_and_color_types() {
        let dir = tempfile::tempdir().unwrap();
        let image = Image {
            width: 3,
            height: 2,
            pixels: (0..18).map(|v| v * 13).collect(),
        };
        let path = dir.path().join("rgb.png");
        image.save_png(&path).unwrap();
        assert_eq!(Image::load_png(&path).unwrap(), image);

        let write = |name: &str, color: png::ColorType, depth: png::BitDepth, data: &[u8]| {
            let path = dir.path().join(name);
            let file = File::create(&path).unwrap();
            let mut encoder = png::Encoder::new(BufWriter::new(file), 2, 1);
            encoder.set_color(color);
            encoder.set_depth(depth);
            encoder
                .write_header()
                .unwrap()
                .write_image_data(data)
                .unwrap();
            Image::load_png(&path).unwrap().pixels
        };
        use png::{BitDepth::*, ColorType::*};
        assert_eq!(
            write("g.png", Grayscale, Eight, &[7, 9]),
            [7, 7, 7, 9, 9, 9]
        );
        assert_eq!(
            write("ga.png", GrayscaleAlpha, Eight, &[7, 0, 9, 255]),
            [7, 7, 7, 9, 9, 9]
        );
        assert_eq!(
            write("rgba.png", Rgba, Eight, &[1, 2, 3, 0, 4, 5, 6, 255]),
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(
            write(
                "rgb16.png",
                Rgb,
                Sixteen,
                &[1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0]
            ),
            [1, 2, 3, 4, 5, 6]
        );
        let not_png = dir.path().join("x.png");
        std::fs::write(&not_png, b"not a png").unwrap();
        assert!(matches!(
            Image::load_png(&not_png),
            Err(Error::InvalidInput(_))
        ));
    }
}
