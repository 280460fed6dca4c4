//! Writer -> reader round trips, the typed getters, and `GgufFile` over a real file on disk.

use std::path::PathBuf;

use backstop_engine::gguf::writer::GgufWriter;
use backstop_engine::gguf::{Array, GgufError, GgufFile, GgufHeader, Value};
use backstop_engine::quant::GgmlType;

/// Deterministic filler bytes, so failures reproduce.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn tmp_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}.gguf", std::process::id()))
}

/// One metadata value of every type, including empty and nested arrays.
fn all_values() -> Vec<(String, Value)> {
    let v: Vec<(&str, Value)> = vec![
        ("general.architecture", "llama".into()),
        ("t.u8", 200u8.into()),
        ("t.i8", (-5i8).into()),
        ("t.u16", 60000u16.into()),
        ("t.i16", (-30000i16).into()),
        ("t.u32", 4_000_000_000u32.into()),
        ("t.i32", (-7i32).into()),
        ("t.u64", u64::MAX.into()),
        ("t.i64", i64::MIN.into()),
        ("t.f32", 1.5f32.into()),
        ("t.f64", (-2.25f64).into()),
        ("t.bool", true.into()),
        ("t.empty_string", "".into()),
        ("t.unicode", "héllo ▁wörld 🦀".into()),
        ("t.arr_u8", vec![1u8, 2, 255].into()),
        ("t.arr_i8", vec![-1i8, 0, 1].into()),
        ("t.arr_u16", vec![1u16, 65535].into()),
        ("t.arr_i16", vec![-32768i16, 32767].into()),
        ("t.arr_u32", vec![0u32, u32::MAX].into()),
        ("t.arr_i32", vec![i32::MIN, 0, i32::MAX].into()),
        ("t.arr_u64", vec![u64::MAX].into()),
        ("t.arr_i64", vec![i64::MIN, -1].into()),
        ("t.arr_f32", vec![0.0f32, -1.0, 3.4e38].into()),
        ("t.arr_f64", vec![1e300f64, -0.5].into()),
        ("t.arr_bool", vec![true, false, true].into()),
        ("t.arr_str", vec!["a", "", "<0x0A>", "Ġthe"].into()),
        ("t.arr_empty", Vec::<u32>::new().into()),
        (
            "t.nested",
            vec![
                Array::U32(vec![1, 2]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![Array::Bool(vec![]), Array::F32(vec![0.5])]),
                Array::I64(vec![]),
            ]
            .into(),
        ),
    ];
    v.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

struct TestTensor {
    name: &'static str,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

fn test_tensors() -> Vec<TestTensor> {
    let t = |name, dims: &[u64], ty: GgmlType, seed| {
        let n: u64 = dims.iter().product();
        let n_bytes = n as usize / ty.block_size() * ty.type_size();
        TestTensor {
            name,
            dims: dims.to_vec(),
            ty,
            data: bytes(n_bytes, seed),
        }
    };
    vec![
        t("token_embd.weight", &[64, 3], GgmlType::Q8_0, 1),
        t("blk.0.attn_norm.weight", &[5], GgmlType::F32, 2),
        t("blk.0.ffn_down.weight", &[256, 2], GgmlType::Q4_K, 3),
        t("blk.0.attn_q.weight", &[32, 1, 2, 2], GgmlType::Q4_1, 4),
        t("output.weight", &[7, 3], GgmlType::F16, 5),
        t("blk.0.ffn_up.weight", &[256], GgmlType::Q6_K, 6),
        t("blk.0.bf16", &[3], GgmlType::BF16, 7),
    ]
}

fn build(version: u32, alignment: Option<u32>) -> (GgufWriter, Vec<(String, Value)>) {
    let mut w = GgufWriter::new();
    w.version(version);
    let mut expected = all_values();
    if let Some(a) = alignment {
        expected.push(("general.alignment".to_owned(), Value::U32(a)));
    }
    for (k, v) in &expected {
        w.add(k.clone(), v.clone());
    }
    for t in test_tensors() {
        w.add_tensor(t.name, &t.dims, t.ty, t.data).unwrap();
    }
    (w, expected)
}

fn check_image(image: &[u8], header: &GgufHeader, version: u32, alignment: u64) {
    assert_eq!(header.version, version);
    assert_eq!(header.alignment, alignment);
    assert_eq!(header.data_offset % alignment, 0);
    assert_eq!(
        image.len() as u64 % alignment,
        0,
        "file padded to the alignment at the end"
    );
    let tensors = test_tensors();
    assert_eq!(header.tensors.len(), tensors.len());
    for (info, t) in header.tensors.iter().zip(&tensors) {
        assert_eq!(info.name, t.name);
        assert_eq!(info.dims, t.dims);
        assert_eq!(info.ty, t.ty);
        assert_eq!(info.offset % alignment, 0);
        assert_eq!(info.n_bytes, t.data.len() as u64);
        assert_eq!(info.n_elements(), t.dims.iter().product::<u64>());
        assert_eq!(
            header.tensor_data(image, info),
            Some(&t.data[..]),
            "{}",
            t.name
        );
    }
}

#[test]
fn round_trip_every_value_type_and_tensor_type() {
    for (version, alignment) in [
        (3, None),
        (2, None),
        (3, Some(64)),
        (3, Some(1)),
        (2, Some(256)),
    ] {
        let (w, expected) = build(version, alignment);
        let image = w.to_bytes().unwrap();
        let header = GgufHeader::parse(&image).unwrap();
        assert_eq!(
            header.metadata, expected,
            "metadata in file order, values intact"
        );
        check_image(&image, &header, version, alignment.map_or(32, u64::from));
    }
}

#[test]
fn writer_replaces_a_key_added_twice() {
    let mut w = GgufWriter::new();
    w.add("a", 1u32).add("b", 2u32).add("a", "x");
    let header = GgufHeader::parse(&w.to_bytes().unwrap()).unwrap();
    assert_eq!(
        header.metadata,
        vec![
            ("a".to_owned(), Value::String("x".into())),
            ("b".to_owned(), Value::U32(2))
        ]
    );
}

#[test]
fn writer_rejects_bad_tensors_and_alignment() {
    let mut w = GgufWriter::new();
    assert!(matches!(
        w.add_tensor("t", &[32], GgmlType::Q8_0, vec![0u8; 33]),
        Err(GgufError::TensorSizeMismatch {
            expected: 34,
            got: 33,
            ..
        })
    ));
    assert!(matches!(
        w.add_tensor("t", &[31], GgmlType::Q8_0, vec![]),
        Err(GgufError::BadDims { .. })
    ));
    w.add_f32_tensor("t", &[2], &[1.0, 2.0]).unwrap();
    assert!(
        matches!(w.add_f32_tensor("t", &[1], &[1.0]), Err(GgufError::DuplicateTensor(n)) if n == "t")
    );
    w.alignment(48);
    assert!(matches!(w.to_bytes(), Err(GgufError::BadAlignment(48))));
}

#[test]
fn empty_file_and_file_without_tensors() {
    let image = GgufWriter::new().to_bytes().unwrap();
    let header = GgufHeader::parse(&image).unwrap();
    assert!(header.metadata.is_empty() && header.tensors.is_empty());
    // A file with no tensors may end right after the index, without padding.
    let mut w = GgufWriter::new();
    w.add("k", "v");
    let image = w.to_bytes().unwrap();
    let unpadded = 4 + 4 + 8 + 8 + (8 + 1 + 4 + 8 + 1);
    assert!(GgufHeader::parse(&image[..unpadded]).is_ok());
}

#[test]
fn getters_convert_and_name_what_is_wrong() {
    let mut w = GgufWriter::new();
    w.add("u8", 7u8)
        .add("u64_big", u64::MAX)
        .add("i32_neg", -1i32)
        .add("i64_small", 12i64)
        .add("f64", 0.25f64)
        .add("f32", 1.5f32)
        .add("s", "text")
        .add("b", false)
        .add("arr", vec!["x", "y"]);
    let h = GgufHeader::parse(&w.to_bytes().unwrap()).unwrap();

    assert_eq!(h.get_u32("u8").unwrap(), 7);
    assert_eq!(h.get_u32("i64_small").unwrap(), 12);
    assert_eq!(h.get_u64("u64_big").unwrap(), u64::MAX);
    assert!(matches!(
        h.get_u32("u64_big"),
        Err(GgufError::ValueOutOfRange { expected: "u32", value, .. }) if value == u64::MAX as i128
    ));
    assert!(matches!(
        h.get_u32("i32_neg"),
        Err(GgufError::ValueOutOfRange { value: -1, .. })
    ));
    assert!(matches!(
        h.get_u32("s"),
        Err(GgufError::WrongType {
            expected: "integer",
            found: "string",
            ..
        })
    ));
    assert_eq!(h.get_f32("f64").unwrap(), 0.25);
    assert_eq!(h.get_f32("f32").unwrap(), 1.5);
    assert_eq!(h.get_f32("u8").unwrap(), 7.0);
    assert!(matches!(
        h.get_f32("b"),
        Err(GgufError::WrongType { found: "bool", .. })
    ));
    assert_eq!(h.get_str("s").unwrap(), "text");
    assert!(matches!(
        h.get_str("u8"),
        Err(GgufError::WrongType {
            expected: "string",
            found: "u8",
            ..
        })
    ));
    assert!(!h.get_bool("b").unwrap());
    assert_eq!(
        h.get_array("arr").unwrap(),
        &Array::String(vec!["x".into(), "y".into()])
    );
    assert_eq!(h.get_array("arr").unwrap().len(), 2);
    assert!(matches!(
        h.get_array("s"),
        Err(GgufError::WrongType {
            expected: "array",
            ..
        })
    ));
    assert!(matches!(h.get_str("nope"), Err(GgufError::MissingKey(k)) if k == "nope"));
    assert!(h.get("nope").is_none());
    assert!(h.tensor("nope").is_none());
}

#[test]
fn open_maps_the_file_and_serves_tensors_zero_copy() {
    let (w, expected) = build(3, Some(64));
    let path = tmp_path("roundtrip");
    w.write_path(&path).unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(
        on_disk,
        w.to_bytes().unwrap(),
        "streamed and in-memory writes agree"
    );

    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.metadata, expected);
    check_image(file.as_bytes(), &file, 3, 64);
    for t in test_tensors() {
        let (info, data) = file.tensor_by_name(t.name).unwrap();
        assert_eq!(info.name, t.name);
        assert_eq!(data, &t.data[..]);
        // Zero-copy: the slice points into the mapping.
        let map = file.as_bytes().as_ptr_range();
        assert!(map.contains(&data.as_ptr()));
    }
    assert!(matches!(file.tensor_by_name("nope"), Err(GgufError::MissingTensor(n)) if n == "nope"));
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn open_reports_missing_and_empty_files() {
    let missing = tmp_path("does-not-exist");
    match GgufFile::open(&missing) {
        Err(GgufError::Io { path, source }) => {
            assert!(path.contains("does-not-exist"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {:?}", other.err()),
    }
    let empty = tmp_path("empty");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        GgufFile::open(&empty),
        Err(GgufError::Truncated {
            what: "magic",
            offset: 0
        })
    ));
    std::fs::remove_file(&empty).unwrap();
}
