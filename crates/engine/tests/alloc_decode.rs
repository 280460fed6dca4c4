//! Generating a token allocates nothing: the allocation count of a generation does not grow
//! with the number of tokens generated. Counted with a global counting allocator.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use backstop_engine::generate::{Engine, EngineOptions, GenerateParams};
use backstop_engine::sampling::SamplingParams;

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_steps_allocate_nothing() {
    let opts = EngineOptions {
        threads: 2,
        ..EngineOptions::default()
    };
    let engine = Engine::load(&common::model_path(common::SMOLLM2), &opts).unwrap();
    let prompt = engine.tokenizer.encode("1, 2, 3, 4, 5,", true).unwrap();
    let count = |n: usize| {
        let mut session = engine.new_session(512).unwrap();
        let params = GenerateParams {
            max_tokens: n,
            sampling: SamplingParams::greedy(),
            stop: vec![],
            ignore_eos: false,
        };
        let mut text_len = 0;
        let before = ALLOCS.load(Ordering::SeqCst);
        let out = engine
            .generate(&mut session, &prompt, &params, &mut |t| {
                text_len += t.len();
                true
            })
            .unwrap();
        let allocs = ALLOCS.load(Ordering::SeqCst) - before;
        assert_eq!(out.tokens.len(), n, "generation stopped early");
        assert!(text_len > 0);
        allocs
    };
    // Warm the thread pool's own bookkeeping once.
    count(4);
    let short = count(8);
    let long = count(72);
    assert_eq!(
        long,
        short,
        "64 more decode steps made {} more allocations",
        long as isize - short as isize
    );
}
