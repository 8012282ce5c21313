//! The CLIP text encoder and tokenizer against transformers' `CLIPTextModel` and
//! `CLIPTokenizer` (`scripts/clip_fixtures.py`). Tolerance: max abs error ≤ 1e-4 in f32.

use burn::tensor::{DType, Int, Tensor, TensorData};
use ella_core::Backend;
use ella_core::{
    ClipTextEncoder, ClipTextModel, ClipTokenizer, Error, TextualInversion, prompt_syntax,
};
use serde_json::Value;

use crate::common::{F32_TOLERANCE, Reference, assert_close, fixture};

/// Token ids of every reference prompt (empty, repeated spaces, case, punctuation,
/// non-ASCII, longer than 77 tokens), padded to 77.
#[test]
fn tokenizer_matches_transformers() {
    check_token_ids(&ClipTokenizer::from_file(fixture("sd/tokenizer")).unwrap());
}

/// SD1.5's `tokenizer/` folder: `vocab.json` and `merges.txt`, no `tokenizer.json`.
#[test]
fn tokenizer_from_vocab_and_merges_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["vocab.json", "merges.txt"] {
        std::fs::copy(
            fixture(&format!("sd/tokenizer/{name}")),
            dir.path().join(name),
        )
        .unwrap();
    }
    check_token_ids(&ClipTokenizer::from_file(dir.path()).unwrap());
    // A damaged merges file is a tokenizer error naming it.
    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\nnospace\n").unwrap();
    let err = ClipTokenizer::from_file(dir.path()).unwrap_err();
    assert!(
        matches!(&err, Error::Tokenizer { path, reason } if path.ends_with("merges.txt") && reason.contains("nospace")),
        "{err}"
    );
}

fn check_token_ids(tokenizer: &ClipTokenizer) {
    let text = std::fs::read_to_string(fixture("reference/clip_tokens.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tokenizer.encode(&[prompt]).unwrap()[0],
            expected,
            "{prompt:?}"
        );
    }
}

fn hidden_states_match_transformers<B: Backend>() {
    let reference = Reference::open("clip.safetensors");
    let device = Default::default();
    let model = ClipTextModel::<B>::load(fixture("sd/text_encoder"), &device, DType::F32).unwrap();
    let ids = reference.int_tensor::<B>("input_ids", &device);
    assert_close(
        model.forward(ids).unwrap(),
        &reference.data("last_hidden_state"),
        F32_TOLERANCE,
        "clip",
    );
    // The same weights as transformers 5 saves them (no `text_model.` prefix) load too.
    let bytes = std::fs::read(fixture("sd/text_encoder/model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, safetensors::tensor::TensorView)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name.trim_start_matches("text_model.").to_string(), view))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("sd/text_encoder/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    safetensors::serialize_to_file(renamed, None, &dir.path().join("model.safetensors")).unwrap();
    let unprefixed = ClipTextModel::<B>::load(dir.path(), &device, DType::F32).unwrap();
    let ids = reference.int_tensor::<B>("input_ids", &device);
    assert_close(
        unprefixed.forward(ids).unwrap(),
        &reference.data("last_hidden_state"),
        F32_TOLERANCE,
        "clip without prefix",
    );

    let too_long =
        Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64; 78], [1, 78]), &device);
    assert!(matches!(
        model.forward(too_long),
        Err(Error::InvalidInput(_))
    ));
}

/// CLIP skip as diffusers' `encode_prompt(…, clip_skip=k)` computes it
/// (`scripts/prompt_weighting_fixtures.py`): no skip, one layer (A1111's "Clip skip: 2"), and
/// every layer of the tiny 2-layer CLIP (the embeddings through the final layer norm).
fn clip_skip_matches_diffusers<B: Backend>() {
    let reference = Reference::open("clip_skip.safetensors");
    let encoder =
        ClipTextEncoder::<B>::load(fixture("sd"), &Default::default(), DType::F32).unwrap();
    let prompts = [
        ("short", "a red book on the table"),
        ("other", "the other hat, and the red book"),
    ];
    for (name, prompt) in prompts {
        let ids: Vec<u32> = reference
            .data_int(&format!("{name}.input_ids"))
            .iter::<i32>()
            .map(|id| id as u32)
            .collect();
        assert_eq!(
            encoder.tokenizer.encode(&[prompt]).unwrap()[0],
            ids,
            "{name}"
        );
        for (skip, key) in [(0, "none"), (1, "1"), (2, "2")] {
            let key = format!("{name}.skip_{key}");
            assert_close(
                encoder.encode_skip(prompt, skip).unwrap(),
                &reference.data(&key),
                F32_TOLERANCE,
                &key,
            );
        }
    }
}

/// Five textual-inversion files of every kind (A1111 `emb_params` and converted
/// `string_to_param`, named by their stems; diffusers `learned_embeds`, 1-D and F16, named by
/// their keys; one, three and two vectors), loaded as diffusers' `load_textual_inversion`
/// (`scripts/embedding_fixtures.py`): their names, ids and vectors; every case's token ids and
/// states, positive and negative; where diffusers and A1111 differ (a capitalised name, which
/// diffusers expands to its first vector only), the states A1111 gives, which are all vectors.
fn embeddings_match_the_reference<B: Backend>() {
    let text = std::fs::read_to_string(fixture("reference/embeddings.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let mut encoder =
        ClipTextEncoder::<B>::load(fixture("sd"), &Default::default(), DType::F32).unwrap();
    let embeddings: Vec<TextualInversion> = json["load_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| {
            let path = fixture(&format!("embeddings/{}", file.as_str().unwrap()));
            TextualInversion::load(path).unwrap()
        })
        .collect();
    for (embedding, spec) in embeddings
        .iter()
        .zip(json["embeddings"].as_array().unwrap())
    {
        assert_eq!(embedding.name, spec["token"].as_str().unwrap());
        let shape = spec["shape"].as_array().unwrap();
        let vectors = match shape.len() {
            1 => 1,
            _ => shape[0].as_u64().unwrap() as usize,
        };
        assert_eq!(embedding.vector_count(), vectors, "{}", embedding.name);
    }
    encoder.add_embeddings(&embeddings).unwrap();
    assert_eq!(
        encoder.tokenizer.vocab_size() as u64,
        json["vocab_size_after"].as_u64().unwrap()
    );
    let ids_of = |value: &Value| -> Vec<u32> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_u64().unwrap() as u32)
            .collect()
    };
    let reference = Reference::open("embeddings.safetensors");
    for case in json["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let recommended = &case["recommended"];
        let a1111 = if recommended["tensors"] == "a1111" {
            "a1111."
        } else {
            ""
        };
        for (text, ids, role) in [
            ("prompt", "prompt_ids", "prompt_embeds"),
            ("negative", "negative_ids", "negative_prompt_embeds"),
        ] {
            let text = case[text].as_str().unwrap();
            let ours = encoder.tokenizer.encode(&[text]).unwrap().remove(0);
            assert_eq!(ours, ids_of(&recommended[ids]), "{name}: {text:?}");
            let key = case["tensors"][format!("{a1111}{role}")].as_str().unwrap();
            assert_close(
                encoder.encode(text).unwrap(),
                &reference.data(key),
                F32_TOLERANCE,
                key,
            );
        }
    }
    for check in json["tokenizer_checks"].as_array().unwrap() {
        let text = check["text"].as_str().unwrap();
        let expected = ids_of(&check["recommended_ids"]);
        let ours = encoder.tokenizer.encode(&[text]).unwrap().remove(0);
        assert_eq!(&ours[..expected.len()], expected, "{text:?}");
        let eos = *expected.last().unwrap();
        assert!(
            ours[expected.len()..].iter().all(|&id| id == eos),
            "{text:?}"
        );
    }
}

/// A1111's prompt weighting on the tiny CLIP (`scripts/prompt_weighting_fixtures.py`, rules
/// in docs/prompt-weighting-reference.md), 25 cases: the parse (texts, and weights as the f32
/// the states are multiplied by), the 77-token chunks (ids exact, weights), the text
/// ComfyUI-ELLA gives T5, and the weighted states. The emphasis divides by a chunk mean as
/// small as 0.003, which amplifies the encoder's rounding: 1e-5 on top of its tolerance.
fn prompt_weighting_matches_a1111<B: Backend>() {
    let text = std::fs::read_to_string(fixture("reference/prompt_weighting.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let reference = Reference::open("prompt_weighting.safetensors");
    let encoder =
        ClipTextEncoder::<B>::load(fixture("sd"), &Default::default(), DType::F32).unwrap();
    let weights_of = |value: &Value| -> Vec<f32> {
        let values = value.as_array().unwrap();
        values.iter().map(|w| w.as_f64().unwrap() as f32).collect()
    };
    let cases = json["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 25);
    for (name, case) in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let parsed = prompt_syntax::parse(prompt).unwrap();
        let expected = case["parsed"].as_array().unwrap();
        assert_eq!(parsed.len(), expected.len(), "{name}: {parsed:?}");
        for ((text, weight), pair) in parsed.iter().zip(expected) {
            assert_eq!(text, pair[0].as_str().unwrap(), "{name}");
            assert_eq!(*weight as f32, pair[1].as_f64().unwrap() as f32, "{name}");
        }
        assert_eq!(
            prompt_syntax::strip_for_t5(prompt),
            case["t5_text"].as_str().unwrap(),
            "{name}"
        );
        let chunks = encoder.tokenizer.chunks(&parsed).unwrap();
        let expected = case["chunks"].as_array().unwrap();
        assert_eq!(chunks.len(), expected.len(), "{name}");
        for (chunk, want) in chunks.iter().zip(expected) {
            let ids: Vec<u32> = want["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(chunk.ids, ids, "{name}");
            let weights: Vec<f32> = chunk.weights.iter().map(|&w| w as f32).collect();
            assert_eq!(weights, weights_of(&want["weights"]), "{name}");
        }
        let skip = case["clip_skip"].as_u64().unwrap() as usize - 1;
        let key = case["key"].as_str().unwrap();
        assert_close(
            encoder.encode_weighted(prompt, skip).unwrap(),
            &reference.data(key),
            F32_TOLERANCE + 1e-5,
            key,
        );
    }
}

backend_tests! {
    hidden_states_match_transformers => hidden_states_match_transformers,
    clip_skip_matches_diffusers => clip_skip_matches_diffusers,
    embeddings_match_the_reference => embeddings_match_the_reference,
    // Text processing, and CLIP's kernels, which the tests above run on every backend.
    #[cpu]
    prompt_weighting_matches_a1111 => prompt_weighting_matches_a1111,
}

/// A config that does not fit the file names the tensor; a tokenizer without CLIP's special
/// tokens is refused.
#[test]
fn mismatches_are_typed_errors() {
    let folder = fixture("sd/text_encoder");
    let checkpoint = ella_core::Checkpoint::open(&folder).unwrap();
    let config = ella_core::ClipTextConfig::from_file(&folder.join("config.json")).unwrap();
    let deeper = ella_core::ClipTextConfig {
        num_hidden_layers: config.num_hidden_layers + 1,
        ..config.clone()
    };
    let device = Default::default();
    let result = ClipTextModel::<ella_core::DefaultBackend>::from_checkpoint(
        deeper,
        &checkpoint,
        &device,
        DType::F32,
    );
    assert!(
        matches!(&result, Err(Error::MissingTensor { name, .. }) if name.contains("layers.2")),
        "{result:?}"
    );
    let wider = ella_core::ClipTextConfig {
        hidden_size: config.hidden_size * 2,
        ..config
    };
    let result = ClipTextModel::<ella_core::DefaultBackend>::from_checkpoint(
        wider,
        &checkpoint,
        &device,
        DType::F32,
    );
    assert!(
        matches!(result, Err(Error::ShapeMismatch { .. })),
        "{result:?}"
    );
    assert!(matches!(
        ClipTokenizer::from_file(fixture("t5/tokenizer.json")),
        Err(Error::Tokenizer { .. })
    ));
}
