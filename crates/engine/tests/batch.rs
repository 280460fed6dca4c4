//! Several sequences in one forward pass (`Engine::eval_batch`): every sequence's logits are
//! the same bits as when it runs alone, whatever runs beside it (other sequences decoding, a
//! chunk of another's prompt), in any order, at 1 and 2 threads.

mod common;

use backstop_engine::generate::{Engine, EngineOptions, Session};
use backstop_engine::models::Rows;

fn load(file: &str, threads: usize) -> Engine {
    let opts = EngineOptions {
        threads,
        ..EngineOptions::default()
    };
    Engine::load(&common::model_path(file), &opts).expect("model loads")
}

fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "Write a short poem about the sea and the wind that blows over it at night.",
    "1, 2, 3,",
    "Once upon a time, in a small village at the edge of a great forest, there lived",
];

/// Greedy decode of `prompt` alone: the logits after the prompt and after each token.
fn alone(engine: &Engine, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let mut s = engine.new_session(256).unwrap();
    engine.eval_prompt(&mut s, prompt, prompt.len()).unwrap();
    let mut out = vec![s.logits().to_vec()];
    for _ in 0..steps {
        let id = argmax(s.logits());
        engine.eval(&mut s, &[id]).unwrap();
        out.push(s.logits().to_vec());
    }
    out
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn batched_sequences_get_the_logits_they_get_alone() {
    for model in [common::SMOLLM2, common::GEMMA3] {
        for threads in [1, 2] {
            let engine = load(model, threads);
            // The last prompt is long enough (100+ tokens) that a cold read takes the f32
            // attention path; read in chunks of 37 it must still get those bits.
            let mut prompts: Vec<Vec<u32>> = PROMPTS
                .iter()
                .map(|p| engine.tokenizer.encode(p, true).unwrap())
                .collect();
            prompts[3] = engine
                .tokenizer
                .encode(&PROMPTS[3].repeat(6), true)
                .unwrap();
            assert!(prompts[3].len() > 100);
            let steps = 12;
            let want: Vec<Vec<Vec<f32>>> =
                prompts.iter().map(|p| alone(&engine, p, steps)).collect();

            // Sequences 0-2 start together; sequence 3 arrives later, its prompt read in
            // chunks of 37 beside the others' decode steps; the order in the batch rotates.
            let mut batch = engine.new_batch(4);
            let mut sessions: Vec<Session> =
                (0..4).map(|_| engine.new_session(256).unwrap()).collect();
            let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 4];
            let mut fed = [0usize; 4];
            for round in 0..steps + 12 {
                let mut order: Vec<usize> = (0..4).collect();
                order.rotate_left(round % 4);
                let mut feed: Vec<(usize, Vec<u32>)> = Vec::new();
                for i in order {
                    if i == 3 && round < 3 {
                        continue;
                    }
                    let p = &prompts[i];
                    let toks = if fed[i] < p.len() {
                        let chunk = if i == 3 { 37 } else { p.len() };
                        p[fed[i]..(fed[i] + chunk).min(p.len())].to_vec()
                    } else if got[i].len() <= steps {
                        vec![argmax(got[i].last().unwrap())]
                    } else {
                        continue;
                    };
                    feed.push((i, toks));
                }
                if feed.is_empty() {
                    break;
                }
                // Borrow the chosen sessions in the feed's order.
                let mut slots: Vec<Option<&mut Session>> = sessions.iter_mut().map(Some).collect();
                let mut seqs: Vec<&mut Session> = feed
                    .iter()
                    .map(|(i, _)| slots[*i].take().unwrap())
                    .collect();
                let rows: Vec<Rows> = feed
                    .iter()
                    .map(|(i, t)| {
                        if fed[*i] < prompts[*i].len() {
                            Rows::prompt(t, prompts[*i].len())
                        } else {
                            Rows::decode(t)
                        }
                    })
                    .collect();
                engine.eval_batch(&mut batch, &mut seqs, &rows).unwrap();
                for ((i, t), s) in feed.iter().zip(seqs.iter()) {
                    fed[*i] += t.len();
                    if fed[*i] >= prompts[*i].len() {
                        got[*i].push(s.logits().to_vec());
                    }
                }
            }
            for i in 0..4 {
                assert_eq!(got[i].len(), want[i].len(), "{model} t{threads} seq {i}");
                for (step, (g, w)) in got[i].iter().zip(&want[i]).enumerate() {
                    assert!(
                        same_bits(g, w),
                        "{model} t{threads} seq {i} step {step}: logits differ from alone"
                    );
                }
            }
        }
    }
}

#[test]
fn a_batch_that_does_not_fit_is_an_error() {
    let engine = load(common::SMOLLM2, 2);
    let mut batch = engine.new_batch(2);
    let mut a = engine.new_session(64).unwrap();
    let mut b = engine.new_session(64).unwrap();
    let mut c = engine.new_session(64).unwrap();
    let e = engine
        .eval_batch(
            &mut batch,
            &mut [&mut a, &mut b, &mut c],
            &[Rows::decode(&[1]), Rows::decode(&[1]), Rows::decode(&[1])],
        )
        .unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
    let e = engine
        .eval_batch(
            &mut batch,
            &mut [&mut a, &mut b],
            &[Rows::decode(&[1]), Rows::decode(&[])],
        )
        .unwrap_err();
    assert!(e.to_string().contains("at least one token"), "{e}");
}

#[test]
fn a_copied_prefix_continues_as_if_computed() {
    for model in [common::SMOLLM2, common::GEMMA3] {
        let engine = load(model, 2);
        let prompt = engine.tokenizer.encode(PROMPTS[3], true).unwrap();
        let want = alone(&engine, &prompt, 6);
        // The source holds the prompt and then some; the copy takes only the shared part.
        let mut src = engine.new_session(256).unwrap();
        engine.eval_prompt(&mut src, &prompt, prompt.len()).unwrap();
        let next = argmax(src.logits());
        engine.eval(&mut src, &[next, 42]).unwrap();
        let mut dst = engine.new_session(128).unwrap();
        engine.eval(&mut dst, &[7, 8, 9]).unwrap();
        let keep = prompt.len() - 3;
        assert!(dst.copy_prefix(&src, keep));
        assert_eq!(dst.history(), &prompt[..keep]);
        engine
            .eval_prompt(&mut dst, &prompt[keep..], prompt.len())
            .unwrap();
        let mut got = vec![dst.logits().to_vec()];
        for _ in 0..6 {
            let id = argmax(dst.logits());
            engine.eval(&mut dst, &[id]).unwrap();
            got.push(dst.logits().to_vec());
        }
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!(
                same_bits(w, g),
                "{model}: step {i} differs after a copied prefix"
            );
        }
    }
}

/// The logits after reading `prompt` cold, in one call.
fn cold(engine: &Engine, prompt: &[u32]) -> Vec<f32> {
    let mut s = engine.new_session(1024).unwrap();
    engine.eval_prompt(&mut s, prompt, prompt.len()).unwrap();
    s.logits().to_vec()
}

#[test]
fn a_prompt_read_in_any_chunks_or_after_a_cached_prefix_gets_the_cold_bits() {
    for model in [common::SMOLLM2, common::GEMMA3] {
        let engine = load(model, 2);
        let text = "Always answer briefly, politely and with facts about lighthouses. ";
        let all = engine.tokenizer.encode(&text.repeat(60), true).unwrap();
        // Below 64 tokens, around it, and past one 512-row pass with a short (f16) tail.
        for n in [20, 63, 64, 100, 530, 600] {
            let prompt = &all[..n];
            let want = cold(&engine, prompt);
            for chunk in [3, 64, 200] {
                let mut s = engine.new_session(1024).unwrap();
                for c in prompt.chunks(chunk) {
                    engine.eval_prompt(&mut s, c, n).unwrap();
                }
                assert!(
                    same_bits(s.logits(), &want),
                    "{model}: {n} tokens in chunks of {chunk}"
                );
            }
        }
        // A cache holding a 530-token prompt: its last 18 rows were read in f16 (a short
        // last pass), which a cold read of 600 tokens would not do, so only 512 are reused.
        let mut s = engine.new_session(1024).unwrap();
        engine.eval_prompt(&mut s, &all[..530], 530).unwrap();
        assert_eq!(s.reusable_prefix(&all[..600]), 512);
        assert_eq!(s.reusable_prefix(&all[..520]), 520);
        let mut longer = all[..520].to_vec();
        longer.extend_from_slice(&all[..80]);
        let keep = s.reusable_prefix(&longer);
        assert_eq!(keep, 512);
        s.truncate(keep);
        engine
            .eval_prompt(&mut s, &longer[keep..], longer.len())
            .unwrap();
        assert!(same_bits(s.logits(), &cold(&engine, &longer)), "{model}");
        // Generated tokens are read one at a time (f16): a prompt that repeats them in a
        // pass of 64+ rows recomputes them.
        let mut s = engine.new_session(1024).unwrap();
        engine.eval_prompt(&mut s, &all[..100], 100).unwrap();
        engine.eval(&mut s, &all[100..103]).unwrap();
        assert_eq!(s.reusable_prefix(&all[..200]), 100);
    }
}
