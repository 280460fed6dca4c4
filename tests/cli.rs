//! The `backstop` binary as a user runs it: real model file, real process, stdout/stderr/exit.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_backstop"))
}

fn model() -> PathBuf {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "test model {} is missing: run scripts/fetch-models",
        p.display()
    );
    p
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = bin();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn backstop");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A failure is exactly one line on stderr (no panic, no backtrace) and a non-zero exit.
fn assert_clean_error(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        err.contains(needle),
        "stderr {err:?} does not mention {needle:?}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(
        err.trim_end().lines().count() <= 2,
        "error is not short: {err}"
    );
}

#[test]
fn raw_greedy_prompt_from_argument_file_and_stdin_agree() {
    let m = model();
    let m = m.to_str().unwrap();
    let prompt = "The capital of France is";
    let args = [
        "run", "-m", m, "--raw", "-n", "12", "--temp", "0", "-t", "2",
    ];
    let a = run(&[&args[..], &[prompt]].concat(), None);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let dir = std::env::temp_dir().join(format!("backstop-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("prompt.txt");
    std::fs::write(&f, prompt).unwrap();
    let b = run(&[&args[..], &["-f", f.to_str().unwrap()]].concat(), None);
    let c = run(&args, Some(prompt.as_bytes()));
    assert!(b.status.success() && c.status.success());
    let out = text(&a.stdout);
    assert_eq!(out, text(&b.stdout));
    assert_eq!(out, text(&c.stdout));
    // Raw mode prints only the continuation, never the prompt.
    assert!(!out.contains(prompt));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.contains("Paris"), "unexpected continuation {out:?}");
    let err = text(&a.stderr);
    assert!(
        err.contains("tok/s") && err.contains("prompt: 5 tokens"),
        "stats line missing: {err}"
    );
}

const CHATML_PROMPT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

#[test]
fn chat_mode_formats_with_the_file_template() {
    // The file's template (with its default system prompt) rendered by hand, as llama-server's
    // /apply-template renders it, must give the same greedy answer as chat mode.
    let m = model();
    let m = m.to_str().unwrap();
    let chat = run(
        &[
            "run",
            "-m",
            m,
            "-n",
            "24",
            "--temp",
            "0",
            "What is the capital of France?",
        ],
        None,
    );
    assert!(chat.status.success(), "{}", text(&chat.stderr));
    let raw = run(
        &[
            "run",
            "-m",
            m,
            "--raw",
            "-n",
            "24",
            "--temp",
            "0",
            CHATML_PROMPT,
        ],
        None,
    );
    assert!(raw.status.success(), "{}", text(&raw.stderr));
    let answer = text(&chat.stdout);
    assert!(!answer.trim().is_empty());
    assert_eq!(answer.trim_end(), text(&raw.stdout).trim_end());
    assert!(!answer.contains("<|im_start|>") && !answer.contains("<|im_end|>"));
    assert!(
        text(&chat.stderr).contains("prompt: 37 tokens"),
        "{}",
        text(&chat.stderr)
    );
}

#[test]
fn ignore_eos_runs_to_max_tokens() {
    let m = model();
    let m = m.to_str().unwrap();
    let args = ["run", "-m", m, "-n", "40", "--temp", "0", "-t", "2"];
    let prompt = "Say only the word yes.";
    let short = run(&[&args[..], &[prompt]].concat(), None);
    let long = run(&[&args[..], &["--ignore-eos", prompt]].concat(), None);
    assert!(short.status.success() && long.status.success());
    let (s_err, l_err) = (text(&short.stderr), text(&long.stderr));
    assert!(s_err.contains("stop: EndOfGeneration"), "{s_err}");
    assert!(l_err.contains("generation: 40 tokens"), "{l_err}");
    // Greedy: the same text up to where the end of generation was the best choice.
    assert!(text(&long.stdout).starts_with(text(&short.stdout).trim_end()));
}

#[test]
fn interactive_chat_reuses_the_conversation_and_quits_on_bye() {
    let m = model();
    let out = run(
        &[
            "chat",
            "-m",
            m.to_str().unwrap(),
            "-n",
            "16",
            "--temp",
            "0",
            "--verbose",
            // A first prompt of 64+ tokens: its rows are then read in the precision the
            // second, longer prompt's cold read gives them, so they are reused (a shorter
            // one is recomputed, for the same bits as cold).
            "--system",
            "You are a helpful geography assistant. You answer questions about countries, \
             capitals, rivers and mountains briefly and accurately, in one short sentence. When \
             a question is unclear, you ask which country is meant. You never make up facts.",
        ],
        Some(b"What is the capital of France?\nAnd of Italy?\n/bye\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let stats: Vec<&str> = err.lines().filter(|l| l.contains("tok/s")).collect();
    assert_eq!(stats.len(), 2, "two answers expected: {err}");
    // The second turn extends the first: its prompt starts with the whole first exchange,
    // whose prompt part is still in the KV cache.
    assert!(stats[0].contains("(0 cached)"), "{}", stats[0]);
    assert!(!stats[1].contains("(0 cached)"), "{}", stats[1]);
    assert!(!text(&out.stdout).trim().is_empty());
    // Load feedback: what was loaded and how long it took, before the first prompt.
    let loaded = err.lines().next().unwrap_or("");
    assert!(
        loaded.starts_with(&format!("loaded {} (93.8 MiB) in ", m.display()))
            && loaded.ends_with(" s"),
        "{loaded:?}"
    );
}

#[test]
fn tokenize_prints_ids_like_llama_tokenize() {
    let m = model();
    let out = run(
        &[
            "tokenize",
            "-m",
            m.to_str().unwrap(),
            "--ids",
            "The capital of France is",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // llama-tokenize --ids on the same file prints exactly this.
    assert_eq!(text(&out.stdout).trim(), "[504, 3575, 282, 4649, 314]");
    let out = run(
        &["tokenize", "-m", m.to_str().unwrap(), "Hello world"],
        None,
    );
    let lines = text(&out.stdout);
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(lines.contains("-> 'Hello'"), "{lines}");
}

#[test]
fn info_reports_architecture_types_and_template() {
    let m = model();
    let out = run(&["info", m.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    for needle in [
        "architecture:  llama",
        "Q4_1",
        "Q8_0",
        "layers:        30",
        "chat template: from the file",
    ] {
        assert!(o.contains(needle), "info lacks {needle:?}:\n{o}");
    }
}

#[test]
fn missing_model_is_a_one_line_error() {
    let out = run(&["run", "-m", "/nonexistent/model.gguf", "hi"], None);
    assert_clean_error(&out, "does not exist");
}

#[test]
fn broken_model_file_is_a_one_line_error() {
    let dir = std::env::temp_dir().join(format!("backstop-cli-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"this is not a gguf file at all").unwrap();
    let out = run(&["run", "-m", junk.to_str().unwrap(), "hi"], None);
    assert_clean_error(&out, "GGUF");
    // A real model cut short: header intact, tensor data missing.
    let bytes = std::fs::read(model()).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = run(&["run", "-m", cut.to_str().unwrap(), "--raw", "hi"], None);
    assert_clean_error(&out, "cannot load");
    let out = run(&["info", cut.to_str().unwrap()], None);
    assert!(!text(&out.stderr).contains("panicked"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flag_and_bad_values_are_one_line_errors() {
    let m = model();
    let out = run(&["run", "--no-such-flag"], None);
    assert_clean_error(&out, "--no-such-flag");
    let out = run(
        &["run", "-m", m.to_str().unwrap(), "--temp", "-1", "hi"],
        None,
    );
    assert_clean_error(&out, "--temp");
}

#[test]
fn over_long_prompt_is_a_one_line_error() {
    let m = model();
    let long = "word ".repeat(100);
    let out = run(
        &["run", "-m", m.to_str().unwrap(), "--raw", "-c", "32", &long],
        None,
    );
    assert_clean_error(&out, "context holds 32");
}

#[test]
fn gemma3_runs_with_its_built_in_chat_template() {
    let g = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/gemma-3-270m-q4_k_m.gguf");
    assert!(
        g.exists(),
        "test model {} is missing: run scripts/fetch-models",
        g.display()
    );
    let g = g.to_str().unwrap();
    // llama.cpp's greedy continuation of this prompt on the same file begins with these words
    // (crates/engine/tests/data/gemma-3-270m-q4_k_m.greedy.json).
    let out = run(
        &[
            "run",
            "-m",
            g,
            "--raw",
            "-n",
            "6",
            "--temp",
            "0",
            "The capital of France is",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(" the capital of the"),
        "{:?}",
        text(&out.stdout)
    );
    let info = run(&["info", g], None);
    assert!(text(&info.stdout).contains("built-in gemma template"));
    // Chat mode renders the built-in template: <bos><start_of_turn>user\n...<end_of_turn>\n
    // <start_of_turn>model\n is 16 tokens for this question, as llama.cpp tokenizes it.
    let chat = run(
        &[
            "run",
            "-m",
            g,
            "-n",
            "4",
            "--temp",
            "0",
            "What is the capital of France?",
        ],
        None,
    );
    assert!(chat.status.success(), "{}", text(&chat.stderr));
    assert!(
        text(&chat.stderr).contains("prompt: 16 tokens"),
        "{}",
        text(&chat.stderr)
    );
}

#[test]
fn bench_json_and_jsonl_carry_llama_bench_fields() {
    let m = model();
    let m = m.to_str().unwrap();
    let out = run(
        &[
            "bench", "-m", m, "-p", "8", "-n", "4", "-pg", "8,4", "-d", "0,8", "-t", "1", "-r",
            "2", "-o", "json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let recs = v.as_array().unwrap();
    // (pp8, tg4, pp8+tg4) at depths 0 and 8.
    assert_eq!(recs.len(), 6);
    let tests: Vec<(u64, u64, u64)> = recs
        .iter()
        .map(|r| {
            (
                r["n_prompt"].as_u64().unwrap(),
                r["n_gen"].as_u64().unwrap(),
                r["n_depth"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tests,
        [
            (8, 0, 0),
            (0, 4, 0),
            (8, 4, 0),
            (8, 0, 8),
            (0, 4, 8),
            (8, 4, 8)
        ]
    );
    for r in recs {
        for key in [
            "model_filename",
            "model_type",
            "model_size",
            "model_n_params",
            "n_threads",
            "avg_ns",
            "stddev_ns",
            "avg_ts",
            "stddev_ts",
            "test_time",
            "backends",
        ] {
            assert!(!r[key].is_null(), "missing {key}: {r}");
        }
        let samples = r["samples_ts"].as_array().unwrap();
        assert_eq!(samples.len(), 2, "warm-up excluded, -r 2 kept");
        let avg = r["avg_ts"].as_f64().unwrap();
        let mean = samples.iter().map(|s| s.as_f64().unwrap()).sum::<f64>() / 2.0;
        assert!((avg - mean).abs() < 1e-6 * mean.max(1.0));
        assert_eq!(r["n_threads"], 1);
    }
    let out = run(
        &[
            "bench", "-m", m, "-p", "8", "-n", "0", "-r", "1", "-o", "jsonl",
        ],
        None,
    );
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["n_prompt"], 8);
    let out = run(&["bench", "-m", m, "-pg", "8", "-r", "1"], None);
    assert_clean_error(&out, "-pg");
}

#[test]
fn ls_lists_the_test_models_with_their_facts_and_names_resolve() {
    let models_dir = model().parent().unwrap().to_path_buf();
    let home = tempfile::tempdir().unwrap();
    let ls = |args: &[&str]| {
        bin()
            .args(args)
            .current_dir(home.path())
            .env("HF_HOME", home.path().join("hf"))
            .env_remove("HF_HUB_CACHE")
            .env("BACKSTOP_MODELS", &models_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = ls(&["ls", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {list}"))
            .clone()
    };
    let smol = find("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(smol["architecture"], "llama");
    assert_eq!(smol["parameters"], 134_515_008);
    assert_eq!(smol["quant"], "Q4_1");
    assert_eq!(smol["size"], 98_362_432);
    assert_eq!(smol["context_length"], 8192);
    assert_eq!(smol["chat_template"], true);
    let gemma = find("gemma-3-270m-q4_k_m.gguf");
    assert_eq!(gemma["architecture"], "gemma3");
    assert_eq!(gemma["parameters"], 268_098_176);
    assert_eq!(gemma["quant"], "Q4_K_M");
    assert_eq!(gemma["size"], 253_113_024);
    assert_eq!(gemma["context_length"], 32768);
    assert_eq!(gemma["chat_template"], false);

    let table = text(&ls(&["ls"]).stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("gemma-3-270m-q4_k_m.gguf"))
        .unwrap_or_else(|| panic!("no gemma row:\n{table}"));
    for needle in ["gemma3", "268.1M", "Q4_K_M", "241.4 MiB", "32768", "no"] {
        assert!(row.contains(needle), "{needle:?} not in {row:?}");
    }
    // A name from the models folder resolves for info (header only).
    let info = ls(&["info", "SmolLM2-135M-Instruct.Q4_1"]);
    assert!(text(&info.stdout).contains("architecture:  llama"));
}

#[test]
fn candle_backend_runs_the_same_greedy_text_and_benches_beside_native() {
    let m = model();
    let m = m.to_str().unwrap();
    let prompt = "The capital of France is";
    let args = ["run", "-m", m, "--raw", "-n", "8", "--temp", "0", "-t", "2"];
    let native = run(&[&args[..], &[prompt]].concat(), None);
    let candle = run(
        &[&args[..], &["--backend", "candle", prompt]].concat(),
        None,
    );
    assert!(candle.status.success(), "{}", text(&candle.stderr));
    // Greedy text on this prompt is clear of near-ties (backends_agree.rs checks logits).
    assert_eq!(text(&candle.stdout), text(&native.stdout));
    assert!(text(&candle.stdout).contains("Paris"));

    // One bench table, both backends, named in the backend column.
    let out = run(
        &[
            "bench",
            "-m",
            m,
            "-p",
            "8",
            "-n",
            "4",
            "-t",
            "2",
            "-r",
            "1",
            "--backend",
            "native,candle",
            "-o",
            "jsonl",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let recs: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let backends: Vec<&str> = recs
        .iter()
        .map(|r| r["backends"].as_str().unwrap())
        .collect();
    assert_eq!(recs.len(), 4, "{backends:?}");
    assert!(
        backends[..2].iter().all(|b| b.starts_with("CPU/")),
        "{backends:?}"
    );
    assert!(
        backends[2..].iter().all(|b| *b == "candle/cpu"),
        "{backends:?}"
    );
}

#[test]
fn gpu_devices_without_a_gpu_build_are_one_line_errors() {
    let m = model();
    let m = m.to_str().unwrap();
    let base = ["run", "-m", m, "--raw", "-n", "1", "hi"];
    // This build has no cuda/metal feature: say how to get one, do not fall back silently.
    for (device, feature) in [("cuda", "cuda"), ("cuda:1", "cuda"), ("metal", "metal")] {
        let out = run(&[&base[..], &["--device", device]].concat(), None);
        if cfg!(feature = "cuda") || cfg!(feature = "metal") {
            // A GPU build: the message depends on the machine; it must still be one line.
            assert_clean_error(&out, device.split(':').next().unwrap());
        } else {
            assert_clean_error(&out, &format!("--features {feature}"));
        }
    }
    let out = run(
        &[&base[..], &["--backend", "native", "--device", "cuda"]].concat(),
        None,
    );
    assert_clean_error(&out, "native backend runs on the CPU only");
    let out = run(&[&base[..], &["--device", "gpu"]].concat(), None);
    assert_clean_error(&out, "expected cpu, cuda");
    let out = run(&[&base[..], &["--backend", "onnx"]].concat(), None);
    assert_clean_error(&out, "expected native or candle");
}
