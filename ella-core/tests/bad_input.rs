//! Bad files and bad inputs give the right typed `Error`, never a panic or a wrong model.

mod common;

use std::path::{Path, PathBuf};

use burn::backend::Flex as B;
use burn::tensor::DType;
use common::files::{Tensors, edited, read_tensors, write_tensors};
use common::fixture;
use ella_core::{
    AutoencoderTiny, Checkpoint, ClipText, Conditioning, Connector, ConnectorConfig,
    ControlNetConfig, ControlNetModel, Error, GenerateRequest, Lora, ModelPaths, Pipeline,
    SurAdapter, SurOptions, T5Config, T5TextEncoder, TextualInversion, TimestepSchedule,
    TinyConfig, TokenMode, UNetConfig, load_controlnet,
};
use safetensors::Dtype;

/// The tiny connector file with one edit applied, in a temp folder.
fn edited_connector(edit: impl FnOnce(&mut Tensors)) -> (tempfile::TempDir, PathBuf) {
    edited("ella/ella.safetensors", edit)
}

fn tiny_config() -> ConnectorConfig {
    ConnectorConfig::from_file(&fixture("ella/config.json")).unwrap()
}

fn load_connector(path: &Path) -> ella_core::Result<Connector<B>> {
    Connector::load(path, &tiny_config(), &Default::default(), DType::F32)
}

#[test]
fn missing_tensor_is_named() {
    let (_dir, path) = edited_connector(|t| {
        t.remove("connector.perceiver_blocks.1.ln_ff.linear.bias");
    });
    let err = load_connector(&path).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "connector.perceiver_blocks.1.ln_ff.linear.bias"),
        "{err}"
    );
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let (_dir, path) = edited_connector(|t| {
        let latents = t.get_mut("connector.latents").unwrap();
        latents.1 = vec![7, 32];
        latents.2.truncate(7 * 32 * 4);
    });
    let err = load_connector(&path).unwrap_err();
    match err {
        Error::ShapeMismatch {
            name,
            expected,
            actual,
            ..
        } => {
            assert_eq!(name, "connector.latents");
            assert_eq!(expected, vec![8, 32]);
            assert_eq!(actual, vec![7, 32]);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn wrong_dtype_is_named() {
    let (_dir, path) = edited_connector(|t| {
        t.get_mut("connector.proj_in.bias").unwrap().0 = Dtype::I32;
    });
    let err = load_connector(&path).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedDtype { name, dtype, .. } if name == "connector.proj_in.bias" && dtype == "I32"),
        "{err}"
    );
}

#[test]
fn extra_block_means_a_config_mismatch() {
    // The file has 2 blocks; a config of 1 block must not silently drop the second.
    let config = ConnectorConfig {
        layers: 1,
        ..tiny_config()
    };
    let err = Connector::<B>::load(
        fixture("ella/ella.safetensors"),
        &config,
        &Default::default(),
        DType::F32,
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedTensor { name, .. } if name.starts_with("connector.perceiver_blocks.1.")),
        "{err}"
    );
    // The official defaults on the tiny file: the first mismatch is named.
    let err = Connector::<B>::load(
        fixture("ella/ella.safetensors"),
        &ConnectorConfig::default(),
        &Default::default(),
        DType::F32,
    )
    .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

#[test]
fn truncated_file_is_invalid() {
    let bytes = std::fs::read(fixture("ella/ella.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [0, 4, 100, bytes.len() / 2, bytes.len() - 1] {
        let path = dir.path().join(format!("cut{cut}.safetensors"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = Checkpoint::open(&path).unwrap_err();
        assert!(
            matches!(err, Error::InvalidSafetensors { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn corrupt_or_absurd_header_is_invalid() {
    let bytes = std::fs::read(fixture("ella/ella.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Garbage in the JSON header.
    let mut corrupt = bytes.clone();
    corrupt[8..40].copy_from_slice(&[b'#'; 32]);
    // A header length of about 2^62 bytes.
    let mut absurd = bytes.clone();
    absurd[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    // Tensor offsets that point past the data.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    let mut header = header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[9999999,", 1);
    while header.len() < header_len {
        header.push(' ');
    }
    let mut offsets = bytes.clone();
    offsets[8..8 + header_len].copy_from_slice(&header.as_bytes()[..header_len]);
    for (name, data) in [
        ("corrupt", corrupt),
        ("absurd", absurd),
        ("offsets", offsets),
    ] {
        let path = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&path, data).unwrap();
        let err = Checkpoint::open(&path).unwrap_err();
        assert!(
            matches!(err, Error::InvalidSafetensors { .. }),
            "{name}: {err}"
        );
    }
}

/// A copy of a fixture T5 folder with some files left out or replaced.
fn t5_folder_without(skip: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        if !skip.contains(&file) {
            std::fs::copy(fixture(&format!("t5/{file}")), dir.path().join(file)).unwrap();
        }
    }
    dir
}

#[test]
fn missing_config_or_tokenizer_or_weights_names_the_file() {
    for missing in ["config.json", "tokenizer.json", "model.safetensors"] {
        let dir = t5_folder_without(&[missing]);
        let err = T5TextEncoder::<B>::load(dir.path(), &Default::default()).unwrap_err();
        match &err {
            Error::Io { path, .. } => assert!(path.ends_with(missing), "{missing}: {err}"),
            other => panic!("{missing}: {other}"),
        }
    }
}

#[test]
fn bad_config_is_an_invalid_config() {
    let dir = t5_folder_without(&["config.json"]);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("t5/config.json")).unwrap()).unwrap();
    config["feed_forward_proj"] = "gated-tanh".into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = T5TextEncoder::<B>::load(dir.path(), &Default::default()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { reason, .. } if reason.contains("gated-tanh")),
        "{err}"
    );
    // Not JSON at all.
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let err = T5TextEncoder::<B>::load(dir.path(), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidJson { .. }), "{err}");
    // A config with fewer layers than the file: the extra block is reported.
    config["feed_forward_proj"] = "gated-gelu".into();
    config["num_layers"] = 2.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = T5TextEncoder::<B>::load(dir.path(), &Default::default()).unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedTensor { name, .. } if name.starts_with("encoder.block.2.")),
        "{err}"
    );
}

#[test]
fn corrupt_tokenizer_is_a_tokenizer_error() {
    let dir = t5_folder_without(&["tokenizer.json"]);
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let err = T5TextEncoder::<B>::load(dir.path(), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err}");
}

#[test]
fn sharded_index_errors() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    // A shard file that does not exist.
    std::fs::write(
        &index,
        r#"{"weight_map": {"shared.weight": "nowhere.safetensors"}}"#,
    )
    .unwrap();
    let err = Checkpoint::open(&index).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if path.ends_with("nowhere.safetensors")),
        "{err}"
    );
    // A tensor the index assigns to a shard that lacks it.
    std::fs::copy(
        fixture("t5/model.safetensors"),
        dir.path().join("a.safetensors"),
    )
    .unwrap();
    std::fs::write(
        &index,
        r#"{"weight_map": {"shared.weight": "a.safetensors", "ghost": "a.safetensors"}}"#,
    )
    .unwrap();
    let err = Checkpoint::open(&index).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "ghost"),
        "{err}"
    );
    // Not an index at all.
    std::fs::write(&index, "[]").unwrap();
    assert!(matches!(
        Checkpoint::open(&index).unwrap_err(),
        Error::InvalidJson { .. }
    ));
}

#[test]
fn token_ids_outside_the_vocabulary_are_rejected() {
    let t5 = T5TextEncoder::<B>::load(fixture("t5"), &Default::default()).unwrap();
    let tokens = ella_core::TokenBatch {
        ids: vec![vec![5, 100_000, 1]],
        mask: vec![vec![1, 1, 1]],
    };
    assert!(matches!(
        t5.encode_tokens(&tokens),
        Err(Error::InvalidInput(_))
    ));
    let ragged = ella_core::TokenBatch {
        ids: vec![vec![5, 1], vec![1]],
        mask: vec![vec![1, 1], vec![1]],
    };
    assert!(matches!(
        t5.encode_tokens(&ragged),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        t5.tokenizer.encode(&["x"], TokenMode::Fixed(0)),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn flan_t5_xl_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    // The fields of flan-t5-xl's config.json that the encoder reads.
    std::fs::write(
        &path,
        r#"{"d_ff": 5120, "d_kv": 64, "d_model": 2048, "feed_forward_proj": "gated-gelu",
            "layer_norm_epsilon": 1e-06, "num_heads": 32, "num_layers": 24,
            "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
            "vocab_size": 32128, "model_type": "t5", "dropout_rate": 0.1}"#,
    )
    .unwrap();
    assert_eq!(T5Config::from_file(&path).unwrap(), T5Config::flan_t5_xl());
}

/// The tiny U-Net's weights with an edited `config.json`.
fn unet_with_config(
    edit: impl FnOnce(&mut serde_json::Value),
) -> ella_core::Result<ella_core::UNet2DConditionModel<B>> {
    let dir = tempfile::tempdir().unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("sd/unet/config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        fixture("sd/unet/diffusion_pytorch_model.safetensors"),
        dir.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    ella_core::UNet2DConditionModel::load(dir.path(), &Default::default(), DType::F32)
}

#[test]
fn unet_config_and_weights_that_disagree_are_errors() {
    // One resnet per level instead of two: the up path's skip widths change first.
    let err = unet_with_config(|c| c["layers_per_block"] = 1.into()).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { name, .. } if name.starts_with("up_blocks.0.resnets.1")),
        "{err}"
    );
    // Three: a tensor the file lacks.
    let err = unet_with_config(|c| c["layers_per_block"] = 3.into()).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name.contains("resnets.2")),
        "{err}"
    );
    let err = unet_with_config(|c| c["cross_attention_dim"] = 768.into()).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { name, expected, .. } if name.contains("attn2.to_k") && expected == &vec![16, 768]),
        "{err}"
    );
    let err = unet_with_config(|c| c["down_block_types"][0] = "SimpleCrossAttnDownBlock2D".into())
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { reason, .. } if reason.contains("SimpleCrossAttnDownBlock2D")),
        "{err}"
    );
    let err = unet_with_config(|c| c["addition_embed_type"] = "text_time".into()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { reason, .. } if reason.contains("addition_embed_type")),
        "{err}"
    );
    // Sanity: the unedited config loads.
    assert!(unet_with_config(|_| {}).is_ok());
}

/// The tiny single-file checkpoint with one edit applied, in a temp folder.
fn edited_single_file(edit: impl FnOnce(&mut Tensors)) -> (tempfile::TempDir, PathBuf) {
    edited("sd-single-file.safetensors", edit)
}

/// SD only (CLIP, no ELLA) from `sd`, with the tiny configs.
fn load_sd(sd: PathBuf, sd_config: Option<PathBuf>) -> ella_core::Result<Pipeline<B>> {
    let paths = ModelPaths {
        sd,
        sd_config,
        vae: None,
        ella: None,
        clip: true,
        loras: Vec::new(),
        embeddings: Vec::new(),
        controlnets: Vec::new(),
        sur_adapter: None,
        taesd: None,
    };
    Pipeline::load(&paths, &Default::default(), DType::F32)
}

fn f32_tensor(shape: &[usize]) -> (Dtype, Vec<usize>, Vec<u8>) {
    let bytes = shape.iter().product::<usize>() * 4;
    (Dtype::F32, shape.to_vec(), vec![0; bytes])
}

#[test]
fn sd2_sdxl_and_other_files_are_refused_as_checkpoints() {
    let sd_config = Some(fixture("sd"));
    let refused = |edit: fn(&mut Tensors), expected: &str| {
        let (_dir, path) = edited_single_file(edit);
        let err = load_sd(path, sd_config.clone()).unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedModel { reason, .. } if reason.contains(expected)),
            "{expected}: {err}"
        );
    };
    refused(
        |t| {
            t.insert(
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
                    .into(),
                f32_tensor(&[16, 1024]),
            );
        },
        "SD2",
    );
    refused(
        |t| {
            t.insert(
                "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight".into(),
                f32_tensor(&[6, 2]),
            );
        },
        "SD2",
    );
    refused(
        |t| {
            t.insert(
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight".into(),
                f32_tensor(&[4]),
            );
        },
        "SDXL",
    );
    refused(
        |t| {
            t.insert(
                "model.diffusion_model.label_emb.0.0.weight".into(),
                f32_tensor(&[4, 4]),
            );
        },
        "SDXL",
    );
    // A connector file is no checkpoint.
    let err = load_sd(fixture("ella/ella.safetensors"), sd_config.clone()).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedModel { reason, .. } if reason.contains("model.diffusion_model")),
        "{err}"
    );
    // Sanity: the unedited file loads.
    let (_dir, path) = edited_single_file(|_| {});
    assert!(load_sd(path, sd_config).is_ok());
}

#[test]
fn single_file_with_missing_or_unknown_tensors_is_named() {
    let sd_config = Some(fixture("sd"));
    let (_dir, path) = edited_single_file(|t| {
        t.remove("model.diffusion_model.out.2.weight");
    });
    let err = load_sd(path, sd_config.clone()).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "conv_out.weight"),
        "{err}"
    );
    let (_dir, path) = edited_single_file(|t| {
        t.insert(
            "model.diffusion_model.input_blocks.1.7.weight".into(),
            f32_tensor(&[2]),
        );
    });
    let err = load_sd(path, sd_config.clone()).unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedTensor { name, .. } if name == "model.diffusion_model.input_blocks.1.7.weight"),
        "{err}"
    );
    // A VAE missing a tensor: named with its diffusers name.
    let (_dir, path) = edited_single_file(|t| {
        t.remove("first_stage_model.decoder.mid.attn_1.q.weight");
    });
    let err = load_sd(path, sd_config).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "decoder.mid_block.attentions.0.to_q.weight"),
        "{err}"
    );
}

#[test]
fn conditioning_without_its_models_is_an_error() {
    // CLIP from a single file needs a tokenizer, which only a config folder has.
    let err = load_sd(fixture("sd-single-file.safetensors"), None).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("tokenizer")),
        "{err}"
    );
    // Nothing to condition on.
    let paths = ModelPaths {
        clip: false,
        ella: None,
        ..ModelPaths::ella("", "", fixture("sd"))
    };
    let err = Pipeline::<B>::load(&paths, &Default::default(), DType::F32).unwrap_err();
    assert!(matches!(&err, Error::IncompatibleModels(_)), "{err}");

    let clip_only = load_sd(fixture("sd"), None).unwrap();
    let request = GenerateRequest {
        width: 32,
        height: 32,
        schedule: TimestepSchedule::Steps(1),
        ..GenerateRequest::new("a red book")
    };
    for conditioning in [Conditioning::Ella, Conditioning::EllaClip] {
        let err = clip_only
            .generate(&GenerateRequest {
                conditioning,
                ..request.clone()
            })
            .unwrap_err();
        assert!(matches!(&err, Error::InvalidInput(_)), "{err}");
    }
    let image = clip_only
        .generate(&GenerateRequest {
            conditioning: Conditioning::Clip,
            ..request.clone()
        })
        .unwrap();
    assert_eq!([image[0].width, image[0].height], [32, 32]);

    let ella_only =
        Pipeline::<B>::load(&common::tiny_paths(), &Default::default(), DType::F32).unwrap();
    let err = ella_only
        .generate(&GenerateRequest {
            conditioning: Conditioning::Clip,
            ..request
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("CLIP")),
        "{err}"
    );
}

/// CLIP's own prompts and CLIP skip are refused where CLIP takes no part, and a skip of more
/// layers than CLIP has is refused with the number of layers.
#[test]
fn clip_options_need_clip_and_a_layer_left() {
    let clip_only = load_sd(fixture("sd"), None).unwrap();
    let request = GenerateRequest {
        width: 32,
        height: 32,
        schedule: TimestepSchedule::Steps(1),
        conditioning: Conditioning::Clip,
        ..GenerateRequest::new("a red book")
    };
    let with_clip = |clip: ClipText, conditioning| GenerateRequest {
        clip,
        conditioning,
        ..request.clone()
    };
    let own_prompt = ClipText {
        prompt: Some("red book, table".into()),
        ..ClipText::default()
    };
    let err = clip_only
        .generate(&with_clip(own_prompt.clone(), Conditioning::Ella))
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("uses CLIP")),
        "{err}"
    );
    let deep = ClipText {
        skip: 3,
        ..ClipText::default()
    };
    let err = clip_only
        .generate(&with_clip(deep, Conditioning::Clip))
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("2 layers")),
        "{err}"
    );
    let long = ClipText {
        negative: Some("x".repeat(ella_core::limits::MAX_PROMPT_BYTES + 1)),
        ..ClipText::default()
    };
    let err = clip_only
        .generate(&with_clip(long, Conditioning::Clip))
        .unwrap_err();
    assert!(matches!(&err, Error::InvalidInput(_)), "{err}");
    assert!(
        clip_only
            .generate(&with_clip(own_prompt, Conditioning::Clip))
            .is_ok()
    );
    // A1111 fails on a weight that is no number; so do we, naming it.
    let err = clip_only
        .generate(&GenerateRequest {
            prompt: "a (red:1.2.3) book".into(),
            ..request.clone()
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("`1.2.3` is not a weight")),
        "{err}"
    );
    // More 75-token chunks than the limit are refused before anything is encoded.
    let chunks = ella_core::limits::MAX_CLIP_CHUNKS + 1;
    let err = clip_only
        .generate(&GenerateRequest {
            prompt: "BREAK a ".repeat(chunks),
            ..request.clone()
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("chunks of 75 tokens")),
        "{err}"
    );
}

/// Textual-inversion files that are not one (two tensors, a 3-D tensor), vectors of another
/// width, a name CLIP has already, and a pipeline without CLIP are refused, nothing added.
#[test]
fn bad_embeddings_are_refused() {
    let (_dir, two) = edited("embeddings/easyneg.safetensors", |t| {
        t.insert("clip_g".into(), f32_tensor(&[3, 32]));
    });
    let err = TextualInversion::load(&two).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedModel { reason, .. } if reason.contains("2 tensors")),
        "{err}"
    );
    let (_dir, cube) = edited("embeddings/easyneg.safetensors", |t| {
        t.insert("emb_params".into(), f32_tensor(&[1, 3, 32]));
    });
    let err = TextualInversion::load(&cube).unwrap_err();
    assert!(matches!(&err, Error::UnsupportedModel { .. }), "{err}");
    let mut clip_only = load_sd(fixture("sd"), None).unwrap();
    let wide = TextualInversion {
        name: "wide".into(),
        vectors: burn::tensor::TensorData::new(vec![0f32; 2 * 48], [2, 48]),
    };
    let err = clip_only.add_embeddings(&[wide]).unwrap_err();
    assert!(matches!(&err, Error::IncompatibleModels(_)), "{err}");
    let taken = TextualInversion {
        name: "a".into(),
        vectors: burn::tensor::TensorData::new(vec![0f32; 32], [1, 32]),
    };
    let good = TextualInversion::load(fixture("embeddings/easyneg.safetensors")).unwrap();
    let err = clip_only
        .add_embeddings(&[good.clone(), taken])
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("`a`")),
        "{err}"
    );
    // Nothing of the failed call was added: the good one still can be, once.
    let vocab = clip_only.clip().unwrap().tokenizer.vocab_size();
    clip_only
        .add_embeddings(std::slice::from_ref(&good))
        .unwrap();
    assert_eq!(clip_only.clip().unwrap().tokenizer.vocab_size(), vocab + 3);
    assert!(
        clip_only
            .add_embeddings(std::slice::from_ref(&good))
            .is_err()
    );
    let mut ella_only =
        Pipeline::<B>::load(&common::tiny_paths(), &Default::default(), DType::F32).unwrap();
    let err = ella_only.add_embeddings(&[good]).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("CLIP")),
        "{err}"
    );
}

#[test]
fn lora_errors_and_report() {
    let clip_paths = ModelPaths {
        clip: true,
        ..common::tiny_paths()
    };
    let mut pipeline = Pipeline::<B>::load(&clip_paths, &Default::default(), DType::F32).unwrap();
    let kohya = "lora/kohya.safetensors";
    let to_q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let incompatible = |pipeline: &mut Pipeline<B>, path: PathBuf, expected: &str| {
        let err = pipeline.set_loras(&[Lora::new(path, 1.0)]).unwrap_err();
        assert!(
            matches!(&err, Error::IncompatibleModels(m) if m.contains(expected)),
            "{expected}: {err}"
        );
    };
    // Shapes of another model (an SDXL-wide cross-attention).
    let (_dir, path) = edited(kohya, |t| {
        t.insert(format!("{to_q}.lora_down.weight"), f32_tensor(&[2, 2048]));
    });
    incompatible(&mut pipeline, path, "another architecture");
    // Only names this model does not have (SDXL's class-label embedding).
    let unknown = "lora_unet_label_emb_0_0";
    let (_dir, path) = edited(kohya, |t| {
        t.retain(|k, _| k.contains(to_q));
        let renamed: Tensors = std::mem::take(t)
            .into_iter()
            .map(|(k, v)| (k.replace(to_q, unknown), v))
            .collect();
        *t = renamed;
    });
    incompatible(&mut pipeline, path, "matches no weight");
    // A module without its up matrix.
    let (_dir, path) = edited(kohya, |t| {
        t.remove(&format!("{to_q}.lora_up.weight"));
    });
    incompatible(&mut pipeline, path, "lacks");
    // A failed call changes nothing: the next one starts from the original weights.
    assert_eq!(pipeline.set_loras(&[]).unwrap().updated, 0);
    // Unknown modules (of kinds ella reads) and keys of no format next to known ones are
    // reported, not fatal.
    let (_dir, path) = edited(kohya, |t| {
        t.insert(format!("{unknown}.lora_down.weight"), f32_tensor(&[2, 2]));
        t.insert("lora_unet_x.hada_w1_a".into(), f32_tensor(&[2]));
        t.insert("version".into(), f32_tensor(&[1]));
    });
    let report = pipeline.set_loras(&[Lora::new(path, 1.0)]).unwrap();
    assert_eq!(report.updated, 8);
    assert_eq!(report.unmatched.len(), 3, "{report:?}");
    assert!(report.unmatched.iter().any(|m| m.ends_with(unknown)));
    // Not a number.
    let err = pipeline
        .set_loras(&[Lora::new(fixture(kohya), f32::NAN)])
        .unwrap_err();
    assert!(matches!(&err, Error::InvalidInput(_)), "{err}");
    let err = pipeline
        .set_loras(&[Lora::new(fixture("nonexistent.safetensors"), 1.0)])
        .unwrap_err();
    assert!(matches!(&err, Error::Io { .. }), "{err}");

    // Without CLIP, text-encoder parts are skipped and counted.
    let mut ella_only =
        Pipeline::<B>::load(&common::tiny_paths(), &Default::default(), DType::F32).unwrap();
    let report = ella_only
        .set_loras(&[Lora::new(fixture(kohya), 1.0)])
        .unwrap();
    assert_eq!((report.updated, report.skipped_clip), (6, 2));
}

/// LoRA kinds ella does not merge are refused by name, whatever else the file holds; so are
/// modules that lack a part their kind needs or have one it does not, and PEFT files whose
/// adapter config says DoRA. Nothing changes.
#[test]
fn lora_kinds_refused_by_name() {
    let clip_paths = ModelPaths {
        clip: true,
        ..common::tiny_paths()
    };
    let mut pipeline = Pipeline::<B>::load(&clip_paths, &Default::default(), DType::F32).unwrap();
    let refused = |pipeline: &mut Pipeline<B>, path: PathBuf, expected: &[&str]| {
        let err = pipeline.set_loras(&[Lora::new(path, 1.0)]).unwrap_err();
        assert!(
            matches!(&err, Error::IncompatibleModels(m) if expected.iter().all(|e| m.contains(e))),
            "{expected:?}: {err}"
        );
    };
    let attn = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0";
    // LyCORIS (IA)³, alone or next to a kohya LoRA.
    let ia3 = fixture("lora/unsupported-ia3.safetensors");
    let to_k = format!("`{attn}_attn1_to_k`");
    refused(&mut pipeline, ia3.clone(), &[to_k.as_str(), "(IA)³"]);
    let (_dir, both) = edited("lora/kohya.safetensors", |t| t.extend(read_tensors(&ia3)));
    refused(&mut pipeline, both, &["(IA)³"]);
    // A DoRA module: a kohya LoRA with its magnitudes.
    let to_q = format!("{attn}_attn1_to_q");
    let (_dir, path) = edited("lora/kohya.safetensors", |t| {
        t.insert(format!("{to_q}.dora_scale"), f32_tensor(&[16, 1]));
    });
    refused(&mut pipeline, path, &[format!("`{to_q}`").as_str(), "DoRA"]);
    // A LoHa module without its `hada_w2_b`, a LoKr one without its `lokr_w1_b`.
    let ff = "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2";
    let loha_ff = format!("`{ff}` (LoHa)");
    let (_dir, path) = edited("lora/loha.safetensors", |t| {
        t.remove(&format!("{ff}.hada_w2_b")).unwrap();
    });
    refused(&mut pipeline, path, &[loha_ff.as_str(), "`hada_w2_b`"]);
    let shortcut = "lora_unet_up_blocks_0_resnets_0_conv_shortcut";
    let (_dir, path) = edited("lora/lokr.safetensors", |t| {
        t.remove(&format!("{shortcut}.lokr_w1_b")).unwrap();
    });
    refused(
        &mut pipeline,
        path,
        &[format!("`{shortcut}` (LoKr)").as_str(), "`lokr_w1_b`"],
    );
    // A module with a part of another kind: a LoHa module with a `lora_down.weight`.
    let (_dir, path) = edited("lora/loha.safetensors", |t| {
        t.insert(format!("{ff}.lora_down.weight"), f32_tensor(&[4, 128]));
    });
    refused(
        &mut pipeline,
        path,
        &[loha_ff.as_str(), "`lora_down.weight`"],
    );
    // PEFT: an adapter config that says DoRA.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dora.safetensors");
    let tensors = read_tensors(&fixture("lora/peft.safetensors"));
    let views = tensors.iter().map(|(name, (dtype, shape, data))| {
        let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data);
        (name.clone(), view.unwrap())
    });
    let metadata = [(
        "lora_adapter_metadata".to_string(),
        r#"{"unet.use_dora": true, "text_encoder.use_dora": true}"#.to_string(),
    )];
    safetensors::serialize_to_file(views, Some(metadata.into_iter().collect()), &path).unwrap();
    refused(&mut pipeline, path, &["DoRA", "`use_dora`"]);
    // Nothing changed: the next call starts from the original weights.
    assert_eq!(pipeline.set_loras(&[]).unwrap().updated, 0);
}

#[test]
fn controlnet_of_another_model_is_refused() {
    let mut pipeline =
        Pipeline::<B>::load(&common::tiny_paths(), &Default::default(), DType::F32).unwrap();
    let folder = fixture("controlnet");
    let config = ControlNetConfig::from_file(&folder.join("config.json")).unwrap();
    let refused = |pipeline: &mut Pipeline<B>, config: ControlNetConfig, expected: &str| {
        let controlnet = ControlNetModel::<B>::from_checkpoint(
            config,
            &Checkpoint::random(1),
            &Default::default(),
            DType::F32,
        )
        .unwrap();
        let err = pipeline.set_controlnets(vec![controlnet]).unwrap_err();
        assert!(
            matches!(&err, Error::IncompatibleModels(m) if m.contains(expected)),
            "{expected}: {err}"
        );
    };
    let mut wide = config.clone();
    wide.unet.cross_attention_dim = ella_core::unet::PerBlock::One(768);
    refused(&mut pipeline, wide, "another model");
    let mut deeper = config.clone();
    deeper.conditioning_embedding_out_channels = vec![8, 16, 32];
    refused(&mut pipeline, deeper, "VAE");
    // The file's own config, but weights of another size: named at load.
    let dir = tempfile::tempdir().unwrap();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap())
            .unwrap();
    json["block_out_channels"] = serde_json::json!([32, 64]);
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    std::fs::copy(
        folder.join("diffusion_pytorch_model.safetensors"),
        dir.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let err = ControlNetModel::<B>::load(dir.path(), &Default::default(), DType::F32).unwrap_err();
    assert!(matches!(&err, Error::ShapeMismatch { .. }), "{err}");
    // A config the model does not support.
    json["block_out_channels"] = serde_json::json!([16, 32]);
    json["global_pool_conditions"] = true.into();
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    let err = ControlNetModel::<B>::load(dir.path(), &Default::default(), DType::F32).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { reason, .. } if reason.contains("global_pool")),
        "{err}"
    );
    // Sanity: the fixture fits, named by its folder or by its weight file.
    let file = folder.join("diffusion_pytorch_model.safetensors");
    assert!(ControlNetModel::<B>::load(&file, &Default::default(), DType::F32).is_ok());
    let controlnet = ControlNetModel::<B>::load(&folder, &Default::default(), DType::F32).unwrap();
    pipeline.set_controlnets(vec![controlnet]).unwrap();
}

/// PyTorch pickles (a `torch.save` zip, an older bare pickle) are refused unread, with the
/// converter named; a safetensors file whose header length happens to start like a pickle
/// opens.
#[test]
fn pickles_are_refused_with_the_converter_named() {
    let dir = tempfile::tempdir().unwrap();
    let zip = [b"PK\x03\x04\x14\x00\x00\x00".as_slice(), &[0; 56]].concat();
    let legacy = [b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46".as_slice(), &[0; 56]].concat();
    for (name, bytes) in [("control.pth", zip), ("model.ckpt", legacy)] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = Checkpoint::open(&path).unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedModel { reason, .. }
                if reason.contains("scripts/pth_to_safetensors.py")),
            "{err}"
        );
        let unet = UNetConfig::from_file(&fixture("sd/unet/config.json")).unwrap();
        let err = load_controlnet::<B>(&path, &unet, &Default::default(), DType::F32).unwrap_err();
        assert!(matches!(&err, Error::UnsupportedModel { .. }), "{err}");
    }
    // A valid file with a 0x0280-byte header: its first bytes are 0x80 0x02.
    let header = format!(
        "{{\"__metadata__\":{{\"pad\":\"{}\"}}}}",
        " ".repeat(0x0280 - 27)
    );
    assert_eq!(header.len(), 0x0280);
    let path = dir.path().join("empty.safetensors");
    let bytes = [&(header.len() as u64).to_le_bytes()[..], header.as_bytes()].concat();
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(Checkpoint::open(&path).unwrap().names().count(), 0);
}

/// An original-layout ControlNet whose hint encoder is missing or misshaped, or whose down
/// path is not the U-Net's, is refused with the reason; a tensor too many is named.
#[test]
fn broken_original_layout_controlnets_are_named() {
    let unet = UNetConfig::from_file(&fixture("sd/unet/config.json")).unwrap();
    let load = |path: &Path| load_controlnet::<B>(path, &unet, &Default::default(), DType::F32);
    let file = "controlnet-ldm.safetensors";
    let (_dir, no_hint) = edited(file, |t| {
        t.retain(|name, _| !name.contains("input_hint_block.0."));
    });
    let err = load(&no_hint).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedModel { reason, .. } if reason.contains("input_hint_block")),
        "{err}"
    );
    let (_dir, wider) = edited(file, |t| {
        t.insert(
            "control_model.zero_convs.0.0.weight".into(),
            f32_tensor(&[64, 64, 1, 1]),
        );
    });
    let err = load(&wider).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { name, .. } if name == "controlnet_down_blocks.0.weight"),
        "{err}"
    );
    let (_dir, extra) = edited(file, |t| {
        t.insert(
            "control_model.output_blocks.0.0.in_layers.0.weight".into(),
            f32_tensor(&[4]),
        );
    });
    let err = load(&extra).unwrap_err();
    assert!(matches!(&err, Error::UnexpectedTensor { .. }), "{err}");
    // A shuffle ControlNet pools globally, which its weights do not show; its name does.
    let dir = tempfile::tempdir().unwrap();
    let shuffle = dir.path().join("control_v11e_sd15_shuffle.safetensors");
    std::fs::copy(fixture(file), &shuffle).unwrap();
    let err = load(&shuffle).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { reason, .. } if reason.contains("global_pool")),
        "{err}"
    );
    assert!(load(&fixture(file)).is_ok());
}

#[test]
fn sur_adapter_errors() {
    let sur = "sur/adapter.safetensors";
    // Another width than the tiny CLIP's (a 768-wide official adapter on a 32-wide CLIP).
    let (_dir, wide) = edited(sur, |t| {
        t.insert("fc.weight".into(), f32_tensor(&[48, 48]));
    });
    let err = SurAdapter::<B>::load(&wide, 8, &Default::default(), DType::F32).unwrap_err();
    assert!(matches!(&err, Error::ShapeMismatch { .. }), "{err}");
    let paths = |adapter: PathBuf, clip: bool| ModelPaths {
        clip,
        sur_adapter: Some(adapter),
        ..common::tiny_paths()
    };
    let err = Pipeline::<B>::load(&paths(fixture(sur), false), &Default::default(), DType::F32)
        .unwrap_err();
    assert!(
        matches!(&err, Error::IncompatibleModels(m) if m.contains("CLIP")),
        "{err}"
    );
    let (_dir, renamed) = edited(sur, |t| {
        let fc = t.remove("fc.weight").unwrap();
        t.insert("fc.weight.orig".into(), fc);
    });
    let err = SurAdapter::<B>::load(&renamed, 8, &Default::default(), DType::F32).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == "fc.weight"),
        "{err}"
    );
    let err = SurAdapter::<B>::load(fixture(sur), 5, &Default::default(), DType::F32).unwrap_err();
    assert!(matches!(&err, Error::InvalidConfig { .. }), "{err}");

    let mut pipeline =
        Pipeline::<B>::load(&paths(fixture(sur), true), &Default::default(), DType::F32).unwrap();
    // A whole adapter of another width (16) than the tiny CLIP's (32).
    let (d, ff) = (16, 8);
    let mut narrow = Tensors::new();
    let layer = "transformer_encoder.layers.0";
    for (name, shape) in [
        (format!("{layer}.self_attn.in_proj_weight"), vec![3 * d, d]),
        (format!("{layer}.self_attn.in_proj_bias"), vec![3 * d]),
        (format!("{layer}.linear1.weight"), vec![ff, d]),
        (format!("{layer}.linear1.bias"), vec![ff]),
        (format!("{layer}.linear2.weight"), vec![d, ff]),
    ] {
        narrow.insert(name, f32_tensor(&shape));
    }
    for linear in [
        format!("{layer}.self_attn.out_proj"),
        "attention.query_layer".into(),
        "attention.key_layer".into(),
        "attention.output_layer.0".into(),
        "attention.output_layer.2".into(),
        "fc".into(),
    ] {
        narrow.insert(format!("{linear}.weight"), f32_tensor(&[d, d]));
        narrow.insert(format!("{linear}.bias"), f32_tensor(&[d]));
    }
    for vector in [
        "linear2.bias",
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
    ] {
        narrow.insert(format!("{layer}.{vector}"), f32_tensor(&[d]));
    }
    let dir = tempfile::tempdir().unwrap();
    let narrow_path = dir.path().join("narrow.safetensors");
    write_tensors(&narrow_path, &narrow);
    let adapter = SurAdapter::<B>::load(&narrow_path, 8, &Default::default(), DType::F32).unwrap();
    assert_eq!(adapter.config.width, 16);
    let err = pipeline.set_sur_adapter(Some(adapter)).unwrap_err();
    assert!(
        matches!(&err, Error::IncompatibleModels(m) if m.contains("16 wide")),
        "{err}"
    );
    let request = GenerateRequest {
        width: 32,
        height: 32,
        schedule: TimestepSchedule::Steps(1),
        conditioning: Conditioning::ClipSur(SurOptions::default()),
        ..GenerateRequest::new("a red book")
    };
    assert!(pipeline.generate(&request).is_ok());
    for weight in [1.01, -0.5, f32::NAN] {
        let err = pipeline
            .generate(&GenerateRequest {
                conditioning: Conditioning::ClipSur(SurOptions {
                    weight,
                    ..SurOptions::default()
                }),
                ..request.clone()
            })
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("SUR")),
            "{err}"
        );
    }
    // The faithful mode mixes prompt and negative at each position: prompts of different
    // chunk counts are refused there, and run in the per-token mode.
    let long = GenerateRequest {
        prompt: "a red book BREAK on the table".into(),
        ..request.clone()
    };
    let err = pipeline.generate(&long).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("154 and 77 CLIP tokens")),
        "{err}"
    );
    let per_token = GenerateRequest {
        conditioning: Conditioning::ClipSur(SurOptions {
            mode: ella_core::SurMode::PerToken,
            ..SurOptions::default()
        }),
        ..long
    };
    assert!(pipeline.generate(&per_token).is_ok());
    // Without an adapter, ClipSur is refused.
    let clip_only = load_sd(fixture("sd"), None).unwrap();
    let err = clip_only.generate(&request).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("SUR-adapter")),
        "{err}"
    );
}

/// The tiny TAESD folder with its weights and config edited, in a temp folder, loaded.
fn edited_taesd(
    edit_weights: impl FnOnce(&mut Tensors),
    edit_config: impl FnOnce(&mut serde_json::Value),
) -> ella_core::Result<AutoencoderTiny<B>> {
    let dir = common::files::copied("taesd");
    let weights = dir.path().join("diffusion_pytorch_model.safetensors");
    let mut tensors = common::files::read_tensors(&weights);
    edit_weights(&mut tensors);
    write_tensors(&weights, &tensors);
    common::files::edit_json(&dir.path().join("config.json"), edit_config);
    AutoencoderTiny::load(dir.path(), &Default::default(), DType::F32)
}

#[test]
fn taesd_missing_misshaped_and_extra_tensors_are_named() {
    let block_bias = "decoder.layers.8.conv.2.bias";
    let err = edited_taesd(|t| drop(t.remove(block_bias)), |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name == block_bias),
        "{err}"
    );
    // The encoder's first stride-2 convolution, read as a 1×1 kernel.
    let downsampler = "encoder.layers.2.weight";
    let err = edited_taesd(
        |t| drop(t.insert(downsampler.into(), f32_tensor(&[4, 4, 1, 1]))),
        |_| {},
    )
    .unwrap_err();
    match err {
        Error::ShapeMismatch {
            name,
            expected,
            actual,
            ..
        } => {
            assert_eq!(name, downsampler);
            assert_eq!(expected, vec![4, 4, 3, 3]);
            assert_eq!(actual, vec![4, 4, 1, 1]);
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
    // A bias where diffusers' resampling convolutions have none.
    let bias = "encoder.layers.2.bias";
    let err = edited_taesd(|t| drop(t.insert(bias.into(), f32_tensor(&[4]))), |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedTensor { name, .. } if name == bias),
        "{err}"
    );
    // A config of other block counts than the file: the first tensor it reads that the file
    // lacks is named.
    let err = edited_taesd(|_| {}, |c| c["num_decoder_blocks"][1] = 1.into()).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::ShapeMismatch { .. } | Error::MissingTensor { .. }
        ),
        "{err}"
    );
    // Sanity: the unedited folder loads.
    assert!(edited_taesd(|_| {}, |_| {}).is_ok());
}

#[test]
fn taesd_bad_configs_are_invalid_configs() {
    let invalid = |edit: &dyn Fn(&mut serde_json::Value), expected: &str| {
        let err = edited_taesd(|_| {}, |c| edit(c)).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidConfig { reason, .. } if reason.contains(expected)),
            "{expected}: {err}"
        );
    };
    invalid(
        &|c| c["encoder_block_out_channels"] = serde_json::json!([4, 8, 8, 8]),
        "one width",
    );
    invalid(
        &|c| c["decoder_block_out_channels"] = serde_json::json!([6, 6, 6]),
        "same length",
    );
    invalid(
        &|c| c["num_encoder_blocks"] = serde_json::json!([]),
        "same length",
    );
    invalid(&|c| c["latent_channels"] = 0.into(), "latent_channels");
    invalid(&|c| c["upsampling_scaling_factor"] = 0.into(), "upsampling");
    invalid(&|c| c["upsample_fn"] = "bilinear".into(), "bilinear");
    invalid(&|c| c["act_fn"] = "mish".into(), "mish");
    invalid(&|c| c["act_fn"] = "quick_gelu".into(), "act_fn");
    invalid(&|c| c["scaling_factor"] = 0.into(), "scaling_factor");
    invalid(
        &|c| c["num_decoder_blocks"][0] = 100_000.into(),
        "num_decoder_blocks",
    );
}

#[test]
fn taesd_config_of_madebyollin_taesd() {
    // `madebyollin/taesd`'s config as diffusers 0.30 reports it: diffusers' defaults.
    let json = serde_json::json!({
      "_class_name": "AutoencoderTiny",
      "_diffusers_version": "0.30.0",
      "act_fn": "relu",
      "decoder_block_out_channels": [64, 64, 64, 64],
      "encoder_block_out_channels": [64, 64, 64, 64],
      "force_upcast": false,
      "in_channels": 3,
      "latent_channels": 4,
      "latent_magnitude": 3,
      "latent_shift": 0.5,
      "num_decoder_blocks": [3, 3, 3, 1],
      "num_encoder_blocks": [1, 3, 3, 3],
      "out_channels": 3,
      "scaling_factor": 1.0,
      "shift_factor": 0.0,
      "upsample_fn": "nearest",
      "upsampling_scaling_factor": 2
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let read = |json: &serde_json::Value| {
        std::fs::write(&path, json.to_string()).unwrap();
        TinyConfig::from_file(&path).unwrap()
    };
    let config = read(&json);
    assert_eq!(config, TinyConfig::default());
    // Configs written before diffusers had `upsample_fn` and `shift_factor` read the same.
    let mut older = json.clone();
    for field in ["upsample_fn", "shift_factor"] {
        older.as_object_mut().unwrap().remove(field);
    }
    assert_eq!(read(&older), config);
    assert_eq!((config.downscale_factor(), config.upscale_factor()), (8, 8));
    // The tensors its loader reads: as many, and as large, as diffusers'
    // `AutoencoderTiny()` state dict (134 tensors, 2,445,063 values).
    let specs = ella_core::weights::plan::<B, _>(&Default::default(), |vb| {
        AutoencoderTiny::from_loader(vb, &config)
    })
    .unwrap();
    let values: usize = specs
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    assert_eq!((specs.len(), values), (134, 2_445_063));
}
