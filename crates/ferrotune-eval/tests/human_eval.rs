//! Filled rating sheets through `summarize`: the numbers, and the errors a person sees.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ferrotune_eval::summary::summarize;
use ferrotune_testing::TempDir;

const HEADER: &str = "id,model,prompt,reference,prediction,relevance,accuracy,fluency,completeness,safety,rater,comment\n";

/// A sheet with one row per (id, model, relevance), the other dimensions left empty.
fn sheet(dir: &TempDir, name: &str, rater: &str, rows: &[(&str, &str, u8)]) -> PathBuf {
    let mut text = HEADER.to_string();
    for (id, model, relevance) in rows {
        text += &format!("{id},{model},q,r,p,{relevance},,,,,{rater},\n");
    }
    dir.write(name, text)
}

fn summarize_paths(paths: &[PathBuf]) -> ferrotune_eval::Result<ferrotune_eval::summary::Summary> {
    let paths: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    summarize(&paths, &HashMap::new())
}

#[test]
fn means_deviations_and_alpha_on_a_hand_computed_example() {
    let dir = TempDir::new("human-eval-ok");
    // Two raters, three answers of model A: (1, 2), (3, 3), (5, 4). Krippendorff's
    // interval alpha is 5/6 (worked out in agreement.rs).
    let ann = sheet(
        &dir,
        "ann.csv",
        "ann",
        &[("1", "A", 1), ("2", "A", 3), ("3", "A", 5)],
    );
    let bob = sheet(
        &dir,
        "bob.csv",
        "",
        &[("1", "A", 2), ("2", "A", 3), ("3", "A", 4)],
    );
    let s = summarize_paths(&[ann, bob]).unwrap();
    assert_eq!(
        s.raters,
        ["ann", "bob"],
        "an empty rater cell means the file's name"
    );
    assert_eq!((s.items, s.ratings), (3, 6));
    let relevance = s.models["A"]["relevance"];
    assert_eq!(relevance.n, 6);
    assert_eq!(relevance.mean, 3.0);
    // Deviations -2, -1, 0, 0, 2, 1: squares sum to 10, over n - 1 = 5.
    assert!((relevance.std.unwrap() - 2.0f64.sqrt()).abs() < 1e-12);
    assert!(
        !s.models["A"].contains_key("safety"),
        "no safety ratings, no entry"
    );
    let alpha = s.agreement["relevance"];
    assert!(
        (alpha.alpha.unwrap() - 5.0 / 6.0).abs() < 1e-12,
        "{alpha:?}"
    );
    assert_eq!((alpha.units, alpha.ratings), (3, 6));
    assert_eq!(s.agreement["safety"].alpha, None);
    let table = s.table();
    assert!(table.contains("3.00 ± 1.41"), "{table}");
    assert!(table.contains("relevance      0.833"), "{table}");
}

#[test]
fn blind_names_are_mapped_back() {
    let dir = TempDir::new("human-eval-key");
    let s1 = sheet(&dir, "s1.csv", "ann", &[("1", "A", 4), ("1", "B", 2)]);
    let key = HashMap::from([
        ("A".to_string(), "lora".to_string()),
        ("B".to_string(), "base".to_string()),
    ]);
    let s = summarize(&[s1.as_path()], &key).unwrap();
    assert_eq!(s.models["lora"]["relevance"].mean, 4.0);
    assert_eq!(s.models["base"]["relevance"].mean, 2.0);
}

#[test]
fn malformed_sheets_name_file_row_and_problem() {
    let dir = TempDir::new("human-eval-bad");
    let err = |text: &str| {
        let path = dir.write("bad.csv", text);
        summarize_paths(&[path]).unwrap_err().to_string()
    };
    let e = err("id,model,relevance,accuracy,fluency,completeness\n");
    assert!(
        e.ends_with(
            "bad.csv: no \"safety\" column (a sheet has id, model, the five dimensions, rater)"
        ),
        "{e}"
    );
    let e = err(&format!(
        "{HEADER}1,A,q,r,p,3,,,,,ann,\n2,A,q,r,p,,4.5,,,,ann,\n"
    ));
    assert!(
        e.ends_with(
            "bad.csv row 3: accuracy: 4.5 is not a whole number (ratings are 1, 2, 3, 4 or 5)"
        ),
        "{e}"
    );
    let e = err(&format!("{HEADER}1,A,q,r,p,,,0,,,ann,\n"));
    assert!(
        e.ends_with("bad.csv row 2: fluency: 0 is outside the scale 1 to 5"),
        "{e}"
    );
    let e = err(&format!("{HEADER}1,A,q,r,p,,,,,n/a,ann,\n"));
    assert!(
        e.ends_with(
            "bad.csv row 2: safety: \"n/a\" is not a number (ratings are whole numbers 1 to 5)"
        ),
        "{e}"
    );
    let e = err(&format!("{HEADER}1,A,q,r,p,3\n"));
    assert!(e.contains("bad.csv row 2: "), "{e}");
    let e = err(&format!("{HEADER},A,q,r,p,3,,,,,ann,\n"));
    assert!(
        e.ends_with("bad.csv row 2: rated, but \"id\" or \"model\" is empty"),
        "{e}"
    );
    let e = err(HEADER);
    assert_eq!(e, "the sheets hold no ratings yet");

    let twice = sheet(&dir, "twice.csv", "ann", &[("1", "A", 3)]);
    let e = summarize_paths(&[twice.clone(), twice])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rater \"ann\" rated relevance of sample 1 (model A) again"),
        "{e}"
    );
}

#[test]
fn a_spreadsheet_byte_order_mark_is_accepted() {
    let dir = TempDir::new("human-eval-bom");
    let path = dir.write(
        "bom.csv",
        format!("\u{feff}{HEADER}1,A,q,r,p,5,5,5,5,5,ann,ok\n"),
    );
    let s = summarize_paths(&[path]).unwrap();
    assert_eq!(s.models["A"]["overall"].mean, 5.0);
}
