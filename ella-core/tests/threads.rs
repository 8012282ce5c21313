//! A pipeline given `Threads::new(n)` computes on n threads, whatever the machine has: a
//! host (a game) keeps its other cores. Measured per OS thread from `/proc/self/task`, so
//! that other load on the machine cannot make the test pass or fail: with one thread, one
//! thread does the work and the process's CPU time stays about its wall time; with two,
//! two threads share it (the control that shows the work does spread when allowed).
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashMap;
use std::time::Instant;

use burn::tensor::DType;
use ella_core::{DefaultBackend as B, GenerateRequest, Pipeline, Threads, TimestepSchedule};

/// CPU time (user + system) of each thread of this process, in clock ticks.
fn thread_ticks() -> HashMap<u32, u64> {
    let mut ticks = HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap();
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the command name, which is in parentheses and may hold spaces:
        // state is the 3rd field of stat, utime the 14th and stime the 15th.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let (utime, stime): (u64, u64) = (fields[11].parse().unwrap(), fields[12].parse().unwrap());
        let tid = task.file_name().to_str().unwrap().parse().unwrap();
        ticks.insert(tid, utime + stime);
    }
    ticks
}

/// Runs `work` and returns (wall seconds, CPU seconds, each thread's share of the CPU time).
fn measure(work: impl FnOnce()) -> (f64, f64, Vec<f64>) {
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = thread_ticks();
    let start = Instant::now();
    work();
    let wall = start.elapsed().as_secs_f64();
    let after = thread_ticks();
    let used: Vec<u64> = after
        .iter()
        .map(|(tid, t)| t - before.get(tid).copied().unwrap_or(0))
        .filter(|&t| t > 0)
        .collect();
    let total: u64 = used.iter().sum();
    let mut shares: Vec<f64> = used.iter().map(|&t| t as f64 / total as f64).collect();
    shares.sort_by(|a, b| b.total_cmp(a));
    (wall, total as f64 / hz, shares)
}

/// One test: the measurements are per process, and a parallel test would add threads.
#[test]
fn pipeline_runs_on_the_threads_it_is_given() {
    let paths = common::tiny_paths();
    let device = Default::default();
    // 64×64 (the tiny VAE's 32×32 latents): large enough that convolutions and matrix
    // products split across threads.
    let request = GenerateRequest {
        width: 64,
        height: 64,
        schedule: TimestepSchedule::Steps(4),
        ..GenerateRequest::new("a red book on a wooden table")
    };
    let run = |threads: Threads| {
        let mut pipeline = threads
            .install(|| Pipeline::<B>::load(&paths, &device, DType::F32))
            .unwrap();
        pipeline.set_threads(threads);
        pipeline.generate(&request).unwrap(); // warm-up
        measure(|| {
            pipeline.generate(&request).unwrap();
        })
    };

    let (wall, cpu, shares) = run(Threads::new(1).unwrap());
    println!("1 thread: {wall:.2} s wall, {cpu:.2} s CPU, shares {shares:.2?}");
    assert!(
        shares[0] >= 0.9,
        "with 1 thread, one thread should do the work: shares {shares:.2?}"
    );
    assert!(
        cpu <= 1.1 * wall + 0.05,
        "with 1 thread, CPU time {cpu:.2} s should not exceed wall time {wall:.2} s"
    );

    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        let (wall, cpu, shares) = run(Threads::new(2).unwrap());
        println!("2 threads: {wall:.2} s wall, {cpu:.2} s CPU, shares {shares:.2?}");
        assert!(
            shares.len() >= 2 && shares[1] >= 0.01,
            "with 2 threads, two threads should share the work: shares {shares:.2?}"
        );
    }
}
