//! T5 encoder and tokenizer against the PyTorch/transformers reference
//! (`scripts/make_fixtures.py`). Tolerance: max abs error ≤ 1e-4 in f32.

use crate::common::{F32_TOLERANCE, Reference, assert_close, fixture};
use burn::tensor::{DType, Tensor};
use ella_core::Backend;
use ella_core::t5::relative_position_buckets;
use ella_core::{
    Checkpoint, T5Config, T5Encoder, T5Precision, T5TextEncoder, T5Tokenizer, TokenBatch, TokenMode,
};
use serde_json::Value;

fn tokens_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("reference/tokens.json")).unwrap())
        .unwrap()
}

fn as_ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// Token ids from SentencePiece itself (the slow, legacy T5 tokenizer's rules), compared
/// with what our `tokenizer.json` path produces, in both modes.
#[test]
fn token_ids_match_sentencepiece_in_both_modes() {
    let tokenizer = T5Tokenizer::from_file(fixture("t5")).unwrap();
    let expected = tokens_json();
    for (name, case) in expected.as_object().unwrap() {
        let text = case["text"].as_str().unwrap();
        let flexible = tokenizer.encode(&[text], TokenMode::Flexible).unwrap();
        assert_eq!(
            flexible.ids[0],
            as_ids(&case["flexible"]),
            "{name}: flexible ids"
        );
        assert!(
            flexible.mask[0].iter().all(|&m| m == 1),
            "{name}: flexible mask"
        );
        let fixed = tokenizer.encode(&[text], TokenMode::FIXED_128).unwrap();
        assert_eq!(fixed.ids[0], as_ids(&case["fixed"]), "{name}: fixed ids");
        assert_eq!(
            fixed.mask[0],
            as_ids(&case["fixed_mask"]),
            "{name}: fixed mask"
        );
    }
    // The empty negative prompt is the single `</s>`; a truncated prompt ends in `</s>`.
    assert_eq!(expected["empty"]["flexible"], serde_json::json!([1]));
    let long = tokenizer
        .encode(
            &[expected["long"]["text"].as_str().unwrap()],
            TokenMode::FIXED_128,
        )
        .unwrap();
    assert_eq!(long.ids[0].len(), 128);
    assert_eq!(long.ids[0][127], 1);
    assert!(
        as_ids(&expected["long"]["flexible"]).len() > 128,
        "the long prompt must exceed 128 tokens"
    );
}

#[test]
fn flexible_batch_pads_to_the_longest_prompt() {
    let tokenizer = T5Tokenizer::from_file(fixture("t5")).unwrap();
    let reference = Reference::open("t5.safetensors");
    let expected = tokens_json();
    let texts = [
        expected["short"]["text"].as_str().unwrap(),
        expected["spaces"]["text"].as_str().unwrap(),
    ];
    let batch = tokenizer.encode(&texts, TokenMode::Flexible).unwrap();
    assert_eq!(batch.ids, reference.rows("flexible_batch.input_ids"));
    assert_eq!(batch.mask, reference.rows("flexible_batch.attention_mask"));
    assert_eq!(batch.lengths(), vec![17, 13]);
}

#[test]
fn relative_position_buckets_match_transformers() {
    let reference = Reference::open("t5.safetensors");
    for (tag, num_buckets, max_distance, seq) in [("tiny", 16, 24, 64), ("xl", 32, 128, 300)] {
        let expected: Vec<i64> = reference
            .data_int(&format!("buckets.{tag}"))
            .iter::<i64>()
            .collect();
        assert_eq!(
            relative_position_buckets(seq, num_buckets, max_distance),
            expected,
            "{tag}"
        );
    }
}

fn encoder<B: Backend>(folder: &str) -> T5TextEncoder<B> {
    T5TextEncoder::load(fixture(folder), &Default::default()).unwrap()
}

fn token_batch(reference: &Reference, prefix: &str) -> TokenBatch {
    TokenBatch {
        ids: reference.rows(&format!("{prefix}.input_ids")),
        mask: reference.rows(&format!("{prefix}.attention_mask")),
    }
}

/// Fixed mode: a batch of two prompts padded (and one truncated) to 128 tokens; padding
/// positions hold real values, which ELLA consumes.
fn fixed_mode_batch<B: Backend>() {
    let reference = Reference::open("t5.safetensors");
    let t5 = encoder::<B>("t5");
    let states = t5.encode_tokens(&token_batch(&reference, "fixed")).unwrap();
    assert_close(
        states,
        &reference.data("fixed.hidden"),
        F32_TOLERANCE,
        "fixed batch",
    );
    // Through the tokenizer too.
    let expected = tokens_json();
    let texts = [
        expected["short"]["text"].as_str().unwrap(),
        expected["long"]["text"].as_str().unwrap(),
    ];
    let tokens = t5.tokenizer.encode(&texts, TokenMode::FIXED_128).unwrap();
    let states = t5.encode_tokens(&tokens).unwrap();
    assert_close(
        states,
        &reference.data("fixed.hidden"),
        F32_TOLERANCE,
        "fixed batch via tokenizer",
    );
}

/// Flexible mode: a padded batch of two, and single unpadded prompts ("" and a prompt longer
/// than 128 tokens, encoded whole).
fn flexible_mode<B: Backend>() {
    let reference = Reference::open("t5.safetensors");
    let t5 = encoder::<B>("t5");
    let states = t5
        .encode_tokens(&token_batch(&reference, "flexible_batch"))
        .unwrap();
    assert_close(
        states,
        &reference.data("flexible_batch.hidden"),
        F32_TOLERANCE,
        "flexible batch",
    );
    let expected = tokens_json();
    for name in ["short", "empty", "long"] {
        let states = t5
            .encode(
                expected[name]["text"].as_str().unwrap(),
                TokenMode::Flexible,
            )
            .unwrap();
        assert_close(
            states,
            &reference.data(&format!("{name}.hidden")),
            F32_TOLERANCE,
            name,
        );
    }
}

/// Half-precision files (mixed F16 + F32 `wo`, like the hosted flan-t5-xl encoder; all BF16)
/// load into f32 and compute what the rounded weights describe.
fn half_precision_files<B: Backend>() {
    let reference = Reference::open("t5.safetensors");
    let device = Default::default();
    let config = T5Config::from_file(&fixture("t5/config.json")).unwrap();
    let short = TokenBatch {
        ids: vec![as_ids(&tokens_json()["short"]["flexible"])],
        mask: vec![vec![1; 17]],
    };
    for (file, key) in [
        ("model-mixed-f16.safetensors", "mixed_f16"),
        ("model-bf16.safetensors", "bf16"),
    ] {
        let checkpoint = Checkpoint::open(fixture(&format!("t5/{file}"))).unwrap();
        let encoder =
            T5Encoder::<B>::from_checkpoint(config.clone(), &checkpoint, &device, T5Precision::F32)
                .unwrap();
        let t5 = T5TextEncoder {
            tokenizer: T5Tokenizer::from_file(fixture("t5")).unwrap(),
            encoder,
        };
        let states = t5.encode_tokens(&short).unwrap();
        assert_close(
            states,
            &reference.data(&format!("{key}.short.hidden")),
            F32_TOLERANCE,
            file,
        );
    }
}

/// An HF sharded checkpoint (`model.safetensors.index.json`) holds the same weights.
fn sharded_checkpoint<B: Backend>() {
    let reference = Reference::open("t5.safetensors");
    let t5 = encoder::<B>("t5-sharded");
    let states = t5
        .encode("a red book on a wooden table", TokenMode::Flexible)
        .unwrap();
    assert_close(
        states,
        &reference.data("short.hidden"),
        F32_TOLERANCE,
        "sharded",
    );
}

/// T5 v1.0's ReLU feed-forward (`wi`, not `wi_0`/`wi_1`).
fn relu_feed_forward<B: Backend>() {
    let reference = Reference::open("t5.safetensors");
    let t5 = encoder::<B>("t5-relu");
    let states = t5.encode_tokens(&token_batch(&reference, "relu")).unwrap();
    assert_close(
        states,
        &reference.data("relu.hidden"),
        F32_TOLERANCE,
        "relu",
    );
}

/// The whole encoder in F16 (the official ELLA setting) against transformers' F16 run, on
/// backends with F16; the others refuse with a typed error.
fn f16_inference<B: Backend>() {
    let reference = Reference::open("t5.safetensors");
    let device = Default::default();
    let loaded = T5TextEncoder::<B>::load_with_precision(fixture("t5"), &device, T5Precision::F16);
    if !B::supports_dtype(&device, DType::F16) {
        assert!(
            matches!(loaded, Err(ella_core::Error::UnsupportedPrecision { .. })),
            "{loaded:?}"
        );
        return;
    }
    let t5 = loaded.unwrap();
    let states = t5
        .encode("a red book on a wooden table", TokenMode::Flexible)
        .unwrap();
    assert_eq!(states.dtype(), DType::F16);
    // F16 keeps ~3 decimal digits; the reference's outputs are of order 1–5 (wgpu on
    // lavapipe: 2.5e-2).
    let err = assert_close(
        states.cast(DType::F32),
        &reference.data("f16_model.short.hidden"),
        4e-2,
        "f16",
    );
    println!("f16 T5 max abs error vs transformers f16: {err:e}");
}

/// Every T5 precision the backend has, against the f32 reference: prints the measured
/// error (docs/performance.md) and bounds it by the format's precision.
fn precisions_against_f32<B: Backend>() {
    let reference = Reference::open("t5.safetensors");
    let expected = reference.data("short.hidden");
    let device = Default::default();
    for (precision, tolerance) in [
        (T5Precision::F16, 8e-2),
        (T5Precision::F16WoF32, 8e-2),
        (T5Precision::BF16, 6e-1),
    ] {
        let loaded = T5TextEncoder::<B>::load_with_precision(fixture("t5"), &device, precision);
        if !B::supports_dtype(&device, precision.dtype()) {
            // A backend without this dtype refuses it by name instead of computing wrongly.
            assert!(
                matches!(loaded, Err(ella_core::Error::UnsupportedPrecision { .. })),
                "{precision:?} on a backend without it"
            );
            continue;
        }
        let t5 = loaded.unwrap();
        let states = t5
            .encode("a red book on a wooden table", TokenMode::Flexible)
            .unwrap();
        assert_eq!(states.dtype(), precision.dtype());
        let err = assert_close(
            states.cast(DType::F32),
            &expected,
            tolerance,
            &format!("{precision:?}"),
        );
        println!("T5 {precision:?} max abs error vs f32 reference: {err:e}");
    }
}

fn padding_does_not_change_real_tokens<B: Backend>() {
    // The short prompt alone and padded in a batch give the same states on its real tokens.
    let t5 = encoder::<B>("t5");
    let alone = t5
        .encode("a red book on a wooden table", TokenMode::Flexible)
        .unwrap();
    let batch = t5
        .tokenizer
        .encode(
            &["a red book on a wooden table", "two cats"],
            TokenMode::FIXED_128,
        )
        .unwrap();
    let padded: Tensor<B, 3> = t5.encode_tokens(&batch).unwrap();
    let real = padded.narrow(0, 0, 1).narrow(1, 0, 17);
    assert_close(real, &alone.into_data(), F32_TOLERANCE, "padding");
}

backend_tests! {
    fixed_mode_batch => fixed_mode_batch,
    flexible_mode => flexible_mode,
    half_precision_files => half_precision_files,
    sharded_checkpoint => sharded_checkpoint,
    relu_feed_forward => relu_feed_forward,
    f16_inference => f16_inference,
    precisions_against_f32 => precisions_against_f32,
    padding_does_not_change_real_tokens => padding_does_not_change_real_tokens,
}
