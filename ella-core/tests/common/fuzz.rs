//! A mutation fuzzer on stable Rust: seeds (the real fixture files) are mutated, with the
//! mutations chosen by [`arbitrary::Unstructured`] over a ChaCha8 stream of a fixed seed,
//! and fed to a parser. A panic, an allocation peak over the limit, or an input that runs
//! longer than the time limit (the process is aborted: a hang) fails the run; the input is
//! written under `target/fuzz/` to replay. It is not coverage-guided: the seeds and the
//! structure-aware mutations (JSON values, safetensors headers) do the aiming.
//!
//! `ELLA_FUZZ_ITERATIONS` (inputs per harness, default 1500) and `ELLA_FUZZ_SEED`
//! (default 12) set a run; `scripts/fuzz.sh` runs a long one.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arbitrary::Unstructured;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::counting::count;

/// The largest peak of live memory one input may cause.
pub const MEMORY_LIMIT: usize = 512 << 20;
/// The longest one input may run before the run counts as hung.
pub const TIME_LIMIT: Duration = Duration::from_secs(60);

/// What a harness run tried, for `docs/reliability.md`.
#[derive(Debug, Default)]
pub struct Summary {
    pub inputs: usize,
    pub accepted: usize,
    pub rejected: usize,
    /// Panics inside dependencies that the library caught and turned into errors.
    pub contained_panics: usize,
    pub peak_bytes: usize,
    pub slowest: Duration,
}

/// One harness's mutation loop.
pub struct Fuzzer {
    name: String,
    rng: ChaCha8Rng,
    iterations: usize,
}

/// The harnesses of a test binary run one at a time (the allocation counters are shared).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
/// When the current input started (ms since the epoch), 0 between inputs.
static STARTED: AtomicU64 = AtomicU64::new(0);
static CURRENT: Mutex<String> = Mutex::new(String::new());
/// While a harness runs, panic messages are counted instead of printed: the inputs that
/// panic past the library are reported with their files, the others were contained.
static RUNNING: AtomicBool = AtomicBool::new(false);
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn quiet_panics() {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| match RUNNING.load(Ordering::SeqCst) {
            true => {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            false => default(info),
        }));
    });
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Aborts the process when an input runs past [`TIME_LIMIT`], naming the file that holds it.
fn start_watchdog() {
    static WATCHDOG: OnceLock<()> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let started = STARTED.load(Ordering::SeqCst);
                if started != 0 && now_ms() - started > TIME_LIMIT.as_millis() as u64 {
                    let current = CURRENT.lock().map(|c| c.clone()).unwrap_or_default();
                    eprintln!("fuzz: an input ran over {TIME_LIMIT:?} (hung); it is in {current}");
                    std::process::abort();
                }
            }
        });
    });
}

fn fuzz_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Fuzzer {
    pub fn new(name: &str) -> Self {
        let seed = env_number("ELLA_FUZZ_SEED", 12);
        // One stream per harness, so that harnesses do not shift each other's inputs.
        let salt = name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
        Self {
            name: name.to_string(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ salt),
            iterations: env_number("ELLA_FUZZ_ITERATIONS", 1500) as usize,
        }
    }

    /// Feeds `iterations` mutations of `seeds` to `target`, which returns whether the
    /// input was accepted (parsed) or refused with an error. Fails on a panic or an
    /// allocation peak over [`MEMORY_LIMIT`]; aborts on a hang.
    pub fn run(
        &mut self,
        seeds: &[Vec<u8>],
        mutate: impl Fn(&mut Unstructured, &[u8]) -> Vec<u8>,
        target: impl Fn(&[u8]) -> bool,
    ) -> Summary {
        let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        start_watchdog();
        quiet_panics();
        PANICS.store(0, Ordering::SeqCst);
        RUNNING.store(true, Ordering::SeqCst);
        let current = fuzz_dir().join(format!("{}.current", self.name));
        *CURRENT.lock().unwrap() = current.display().to_string();
        let mut summary = Summary::default();
        let mut failures = Vec::new();
        let mut escaped = 0;
        let mut choices = vec![0u8; 4096];
        for i in 0..self.iterations {
            self.rng.fill_bytes(&mut choices);
            let mut u = Unstructured::new(&choices);
            let seed = &seeds[u.choose_index(seeds.len()).unwrap_or(0)];
            let input = mutate(&mut u, seed);
            std::fs::write(&current, &input).unwrap();
            STARTED.store(now_ms(), Ordering::SeqCst);
            let start = Instant::now();
            let (outcome, counted) = count(|| catch_unwind(AssertUnwindSafe(|| target(&input))));
            STARTED.store(0, Ordering::SeqCst);
            summary.inputs += 1;
            summary.slowest = summary.slowest.max(start.elapsed());
            summary.peak_bytes = summary.peak_bytes.max(counted.peak_extra);
            let failure = match outcome {
                Ok(true) => {
                    summary.accepted += 1;
                    None
                }
                Ok(false) => {
                    summary.rejected += 1;
                    None
                }
                Err(_) => {
                    escaped += 1;
                    Some("panicked")
                }
            };
            let failure =
                failure.or((counted.peak_extra > MEMORY_LIMIT).then_some("over the memory limit"));
            if let Some(what) = failure {
                let path = fuzz_dir().join(format!("{}-{i}.failure", self.name));
                std::fs::write(&path, &input).unwrap();
                failures.push(format!("input {i} {what}: {}", path.display()));
            }
        }
        RUNNING.store(false, Ordering::SeqCst);
        summary.contained_panics = PANICS.load(Ordering::SeqCst).saturating_sub(escaped);
        println!(
            "fuzz {}: {} inputs, {} accepted, {} refused ({} panics in dependencies contained), \
             peak {} KB, slowest {:?}",
            self.name,
            summary.inputs,
            summary.accepted,
            summary.rejected,
            summary.contained_panics,
            summary.peak_bytes >> 10,
            summary.slowest
        );
        assert!(
            failures.is_empty(),
            "fuzz {}:\n{}",
            self.name,
            failures.join("\n")
        );
        summary
    }
}

/// Numbers that break size arithmetic: zero, one, negatives, powers of two around 32 and 64
/// bits, floats at the ends of their range.
const INTERESTING: [f64; 16] = [
    0.0,
    1.0,
    -1.0,
    2.0,
    0.5,
    255.0,
    65536.0,
    2147483647.0,
    4294967295.0,
    4294967296.0,
    1e9,
    1e12,
    9007199254740993.0,
    1.8446744073709552e19,
    1e308,
    -1e308,
];

/// Byte-level mutations, one to four stacked: bit flips, interesting bytes and words,
/// insertions, deletions, duplicated ranges, truncation.
pub fn mutate_bytes(u: &mut Unstructured, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = u.int_in_range(1..=4).unwrap_or(1);
    for _ in 0..rounds {
        let len = out.len();
        let at = if len == 0 {
            0
        } else {
            u.choose_index(len).unwrap_or(0)
        };
        match u.int_in_range(0..=6).unwrap_or(0) {
            0 if len > 0 => out[at] ^= 1 << u.int_in_range(0..=7).unwrap_or(0),
            1 if len > 0 => out[at] = *u.choose(&[0u8, 0xff, 0x7f, 0x80, b'{', b'"']).unwrap_or(&0),
            2 if len >= 8 => {
                let at = at.min(len - 8);
                let value = INTERESTING[u.choose_index(INTERESTING.len()).unwrap_or(0)] as u64;
                out[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            3 => {
                let count = u.int_in_range(1..=16).unwrap_or(1);
                let bytes: Vec<u8> = (0..count).map(|_| u.arbitrary().unwrap_or(0)).collect();
                out.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let end = (at + u.int_in_range(1..=64).unwrap_or(1)).min(len);
                out.drain(at..end);
            }
            5 if len > 0 => {
                let end = (at + u.int_in_range(1..=64).unwrap_or(1)).min(len);
                let copy = out[at..end].to_vec();
                let to = u.choose_index(len).unwrap_or(0);
                out.splice(to..to, copy);
            }
            _ => out.truncate(at),
        }
    }
    out
}

/// A random value of one of JSON's kinds, biased to sizes that break arithmetic.
fn interesting_value(u: &mut Unstructured) -> Value {
    match u.int_in_range(0..=7).unwrap_or(0) {
        0 | 1 => {
            let n = INTERESTING[u.choose_index(INTERESTING.len()).unwrap_or(0)];
            match n.fract() == 0.0 && n.abs() < 9.2e18 {
                true => Value::from(n as i64),
                false => Value::from(n),
            }
        }
        2 => Value::from(u.arbitrary::<u32>().unwrap_or(0) % 4096),
        3 => Value::String(
            (*u.choose(&["", "x", "../../etc/passwd", "gated-silu", "NaN", "\u{0}"])
                .unwrap_or(&""))
            .to_string(),
        ),
        4 => Value::Null,
        5 => Value::Bool(u.arbitrary().unwrap_or(false)),
        6 => Value::Array(vec![Value::from(8); u.int_in_range(0..=40).unwrap_or(0)]),
        _ => serde_json::json!({"a": [1, 2, {"b": -1}]}),
    }
}

/// Replaces, removes or adds one value somewhere in `value`.
pub fn mutate_json_value(u: &mut Unstructured, value: &mut Value) {
    let descend = u.ratio(2, 3).unwrap_or(false);
    match value {
        Value::Object(map) if !map.is_empty() && descend => {
            let key = map
                .keys()
                .nth(u.choose_index(map.len()).unwrap_or(0))
                .cloned();
            if let Some(child) = key.and_then(|k| map.get_mut(&k)) {
                mutate_json_value(u, child);
            }
        }
        Value::Array(items) if !items.is_empty() && descend => {
            let at = u.choose_index(items.len()).unwrap_or(0);
            mutate_json_value(u, &mut items[at]);
        }
        Value::Object(map) if !map.is_empty() && u.ratio(1, 4).unwrap_or(false) => {
            let key = map
                .keys()
                .nth(u.choose_index(map.len()).unwrap_or(0))
                .cloned();
            if let Some(key) = key {
                map.remove(&key);
            }
        }
        Value::Object(map) if u.ratio(1, 4).unwrap_or(false) => {
            map.insert("extra".into(), interesting_value(u));
        }
        other => *other = interesting_value(u),
    }
}

/// A JSON file with one to three values mutated (sometimes then byte-mutated); input that
/// is not JSON is byte-mutated.
pub fn mutate_json(u: &mut Unstructured, input: &[u8]) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<Value>(input) else {
        return mutate_bytes(u, input);
    };
    for _ in 0..u.int_in_range(1..=3).unwrap_or(1) {
        mutate_json_value(u, &mut value);
    }
    let out = serde_json::to_vec(&value).unwrap();
    match u.ratio(1, 5).unwrap_or(false) {
        true => mutate_bytes(u, &out),
        false => out,
    }
}

/// A safetensors file with its header's JSON mutated (offsets, shapes, dtypes, names) and
/// the length prefix kept or broken, or its bytes mutated anywhere.
pub fn mutate_safetensors(u: &mut Unstructured, input: &[u8]) -> Vec<u8> {
    let header_len = input
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
        .filter(|&n| 8 + n <= input.len());
    let (Some(n), true) = (header_len, u.ratio(3, 4).unwrap_or(false)) else {
        return mutate_bytes(u, input);
    };
    let header = mutate_json(u, &input[8..8 + n]);
    let length = match u.ratio(1, 8).unwrap_or(false) {
        true => INTERESTING[u.choose_index(INTERESTING.len()).unwrap_or(0)] as u64,
        false => header.len() as u64,
    };
    let mut out = length.to_le_bytes().to_vec();
    out.extend(header);
    out.extend(&input[8 + n..]);
    out
}
