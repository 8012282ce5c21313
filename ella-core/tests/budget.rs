//! The benchmark regression check of CI: counted work, not time. A counting allocator
//! measures, on the CPU backend and the tiny test models, what one generation allocates (the
//! flex backend's conv and matmul cost follows its allocations, see docs/performance.md) and
//! the live memory the models hold, and compares both with budgets set from measurements
//! (+25% slack). A change that copies weights per step, reruns T5 per step or keeps freed
//! models alive fails here. Timing stays in `benches/`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::module::Module;
use burn::tensor::{DType, Tensor};
use ella_core::{Cancel, DefaultBackend as B, GenerateRequest, Hooks, Pipeline, VaeDecode};

/// Counts allocations, allocated bytes, live bytes and the peak of live bytes.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// What a piece of work allocated.
#[derive(Debug)]
struct Counted {
    allocations: usize,
    bytes: usize,
    /// Peak live bytes above the live bytes at the start.
    peak_extra: usize,
}

fn count<T>(work: impl FnOnce() -> T) -> (T, Counted) {
    let (allocations, bytes) = (
        ALLOCATIONS.load(Ordering::SeqCst),
        ALLOCATED.load(Ordering::SeqCst),
    );
    let live = LIVE.load(Ordering::SeqCst);
    PEAK.store(live, Ordering::SeqCst);
    let out = work();
    let counted = Counted {
        allocations: ALLOCATIONS.load(Ordering::SeqCst) - allocations,
        bytes: ALLOCATED.load(Ordering::SeqCst) - bytes,
        peak_extra: PEAK.load(Ordering::SeqCst) - live,
    };
    (out, counted)
}

fn within(what: &str, measured: usize, budget: usize) {
    println!("{what}: {measured} (budget {budget} + 25%)");
    assert!(
        measured <= budget + budget / 4,
        "{what}: {measured} is over the budget {budget} + 25%; if the increase is intended, \
         measure again and update the budget"
    );
}

/// One test only: the counters are process-wide, and a parallel test would disturb them.
#[test]
fn generation_and_memory_budgets() {
    let paths = common::tiny_paths();
    let device = Default::default();
    let (pipeline, _) = count(|| Pipeline::<B>::load(&paths, &device, DType::F32).unwrap());
    let mut pipeline = pipeline;
    let request = GenerateRequest {
        width: 64,
        height: 64,
        steps: 4,
        ..GenerateRequest::new("a red book on a wooden table")
    };
    pipeline.generate(&request).unwrap(); // warm-up: lazy one-time set-up is not counted
    let (_, one) = count(|| pipeline.generate(&request).unwrap());
    let (_, two) = count(|| {
        pipeline
            .generate(&GenerateRequest {
                steps: 8,
                ..request.clone()
            })
            .unwrap()
    });
    println!("4 steps: {one:?}\n8 steps: {two:?}");
    // Budgets measured on the flex backend (2026-11-26), rounded up.
    within("allocations, 4 steps", one.allocations, 50_000);
    within("allocated MB, 4 steps", one.bytes >> 20, 600);
    within("peak extra KB, 4 steps", one.peak_extra >> 10, 3_400);
    // Work per step: 4 more steps cost 4 steps' worth, not a T5 run each.
    let per_step = (two.bytes - one.bytes) / 4;
    within("allocated KB per step", per_step >> 10, 140_000);

    // Freeing T5 releases its weights (the tiny T5 is ~0.6 MB of f32).
    let live = LIVE.load(Ordering::SeqCst);
    let states = pipeline
        .encode_prompts(
            &request.prompt,
            "",
            request.token_mode,
            request.conditioning,
        )
        .unwrap();
    let t5_bytes = pipeline.text_encoder().unwrap().encoder.num_params() * 4; // f32
    pipeline.free_text_encoder();
    let freed = live.saturating_sub(LIVE.load(Ordering::SeqCst));
    println!("freed {freed} bytes, T5 weights {t5_bytes} bytes");
    assert!(
        freed >= t5_bytes * 9 / 10,
        "free_text_encoder released {freed} bytes; T5's weights are {t5_bytes}"
    );
    pipeline
        .generate_with(&request, Some(&states), &mut Hooks::default())
        .unwrap();

    // Tiled VAE decoding bounds the working memory: a 256×256 decode with the tiny VAE
    // (32-pixel tiles) against the whole decode.
    let latents = Tensor::<B, 4>::zeros([1, 4, 128, 128], &device);
    let (_, whole) = count(|| {
        pipeline
            .vae
            .decode_with(latents.clone(), VaeDecode::Whole, Cancel::NEVER)
            .unwrap()
            .into_data()
    });
    let (_, tiled) = count(|| {
        pipeline
            .vae
            .decode_with(latents.clone(), VaeDecode::Tiled, Cancel::NEVER)
            .unwrap()
            .into_data()
    });
    println!(
        "VAE decode 256×256: peak extra {} KB whole, {} KB tiled",
        whole.peak_extra >> 10,
        tiled.peak_extra >> 10
    );
    assert!(
        tiled.peak_extra * 3 < whole.peak_extra,
        "tiled decoding should need far less memory: {tiled:?} vs {whole:?}"
    );
}
